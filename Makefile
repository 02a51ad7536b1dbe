# The two commands a newcomer needs are `make run` and `make test`; everything else is for contributors.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTO_FILES := $(wildcard proto/audiochat/v1/*.proto)

.PHONY: run test lint proto bench clean

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

test: $(VENV)/.installed-dev lint
	$(BIN)/pytest

# Load over every transport against a paced simulator; method and reading: benchmarks/README.md.
bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py gen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
