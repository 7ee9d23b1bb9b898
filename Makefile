PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-hosts test-browser lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/spool dev

test: $(STAMP)
	$(BIN)/ruff check api worker shared tests
	$(BIN)/mypy
	$(BIN)/pytest

# Redis, API replicas, workers, the upstream and nginx on hosts of their own (network
# namespaces): needs root, iproute2 and nginx; fails saying so without them.
test-hosts: $(STAMP)
	$(BIN)/pytest tests/hosts

# The playground and spool.js in headless Chromium (Debian's, driven by Playwright; nothing
# downloads a browser): fails saying so without /usr/bin/chromium.
test-browser: $(STAMP)
	$(BIN)/pytest tests/browser

lint: $(STAMP)
	$(BIN)/ruff check api worker shared tests
	$(BIN)/ruff format --check api worker shared tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python tests/benchmark.py

clean:
	rm -rf $(VENV) .spool
