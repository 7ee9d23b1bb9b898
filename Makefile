PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

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

lint: $(STAMP)
	$(BIN)/ruff check api worker shared tests
	$(BIN)/ruff format --check api worker shared tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python tests/benchmark.py

clean:
	rm -rf $(VENV) .spool
