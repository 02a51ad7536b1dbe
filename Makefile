# The two commands a newcomer needs are `make run` and `make test`; everything else is for contributors.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint proto bench vad-eval clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps record what was installed, so a second `make` does not reinstall unless pyproject.toml changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/audiochat serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: $(VENV)/.installed-dev $(CHROMIUM) lint
	$(BIN)/pytest

# Load over every transport against a paced simulator; method and reading: benchmarks/README.md.
bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks

# Server VAD detectors against a generated evaluation set; the table goes to benchmarks/results/vad.md.
vad-eval: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.vad

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py gen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
