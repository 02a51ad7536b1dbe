# The two commands a newcomer needs are `make run` and `make test`; everything else is for contributors.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM := /usr/bin/chromium
REDIS_SERVER := /usr/bin/redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: system-packages run test lint lock proto bench bench-peers profile vad-eval soak fuzz clean

# uv installs exactly what uv.lock pins (hashes checked), the same set the container image installs.
# It lives in its own small virtualenv inside .venv, so syncing .venv never removes it. Its version must
# equal the `uv` that uv.lock pins for the dev extras (tests/test_lock.py checks).
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
# --locked: fail, rather than resolve anew, when pyproject.toml changed without `make lock`.
UV_SYNC := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --quiet

$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

$(UV): | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/uv
	$(VENV)/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Stamps record what was installed, so a second `make` does not reinstall unless the lock changed.
# `run` adds what it needs to a development .venv without removing the dev tools (--inexact);
# the dev install is exact: anything the lock does not name is removed.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV_SYNC) --inexact
	touch $@

$(VENV)/.installed-dev: pyproject.toml uv.lock | $(UV)
	$(UV_SYNC) --extra dev
	touch $@ $(VENV)/.installed

# After editing dependencies in pyproject.toml: re-resolve what changed, keep every other pin.
# `make lock UPGRADE=1` moves every pin to the newest release allowed.
lock: | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(UV) lock $(if $(UPGRADE),--upgrade)

run: $(VENV)/.installed
	$(BIN)/audiochat serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

# System packages the tests drive: Debian's Chromium (browser tests) and redis-server (the Redis state
# store's tests start their own on a free loopback port). Installed once, together, only when one is missing.
system-packages:
	@missing=""; \
	[ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	[ -x $(REDIS_SERVER) ] || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Two workers (CI has two cores; most tests wait on sockets, browsers and child processes): about half
# the wall time of one. A module's tests stay on one worker (--dist loadfile), so module fixtures are shared.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev system-packages lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# Load over every transport against a paced simulator, beside a no-logic relay, in one run (about an hour;
# BENCH_ARGS=--quick for a few minutes). Writes build/bench/ (untracked); method: benchmarks/README.md.
BENCH_ARGS ?=
# Hostile input on every edge message kind, far more examples than `make test` runs (about 10 minutes).
fuzz: $(VENV)/.installed-dev
	AUDIOCHAT_FUZZ_EXAMPLES=$${AUDIOCHAT_FUZZ_EXAMPLES:-1000} $(BIN)/pytest tests/test_edge_fuzz.py -q -p no:cacheprovider

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.codecs
	$(BIN)/python -m benchmarks.edge_memory
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Every transport under steady load with upstream and client faults at random, about 10 minutes
# (SOAK_ARGS=--minutes 1 for a short run); prints events relayed, bytes lost, upstream connections left
# open and the gateway's RSS, and fails on any loss or leak. Not part of `make test`.
SOAK_ARGS ?=
soak: $(VENV)/.installed-dev
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

# The same with LiteLLM's proxy (one worker, no database) as a row. LiteLLM is heavy and never part of
# `make test`: it lives in its own venv.
PEERS := .venv-peers
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet 'litellm[proxy]>=1.60'
	touch $@

bench-peers: $(VENV)/.installed-dev $(PEERS)/.installed
	$(BIN)/python -m benchmarks --litellm $(PEERS)/bin/litellm --capacity grpc,litellm \
		--output build/bench-peers $(BENCH_ARGS)

# A py-spy profile of one row's server under load: build/profile/<row>.txt (collapsed stacks) and the
# functions with the most samples. TRANSPORT is a row key: grpc, converse, sse, websocket, compat, relay.
TRANSPORT ?= grpc
PROFILE_ARGS ?=
profile: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.profile --row $(TRANSPORT) $(PROFILE_ARGS)

# Server VAD detectors against a generated evaluation set; the table goes to benchmarks/results/vad.md.
vad-eval: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.vad

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py gen

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache
