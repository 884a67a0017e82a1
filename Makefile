# Umbra: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./.umbra-dev
ANVIL_PKG := @foundry-rs/anvil-linux-amd64@1.7.1
ANVIL := node_modules/.bin/anvil

.PHONY: run test lint typecheck pytest bench bench-quick install clean chromium anvil

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall whenever the package metadata changes (or the inbox contract the install compiles).
$(STAMP): pyproject.toml setup.py src/umbra/ordering/contracts/Inbox.vy | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,examples]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_demo.py --data-dir $(DATA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(ANVIL)
	$(BIN)/pytest -q

# anvil, the local EVM node of evm ordering (`umbra dev --ordering evm`, tests/evm), from npm.
$(ANVIL):
	npm install --loglevel=error --no-save --no-audit --no-fund $(ANVIL_PKG) >/dev/null
	mkdir -p $(@D) && ln -sf ../@foundry-rs/anvil-linux-amd64/bin/anvil $@

anvil: $(ANVIL)

# The explorer's browser tests drive Debian's chromium (Playwright never downloads a browser here).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: chromium lint typecheck pytest

bench: $(STAMP) $(ANVIL)
	$(BIN)/python -m bench

bench-quick: $(STAMP) $(ANVIL)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
