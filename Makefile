# README.md's set-up commands. Each creates .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup demo lint test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test,ray]'
	touch $@

demo: setup
	$(BIN)/easel weights fetch
	$(BIN)/easel demo

lint: setup
	$(BIN)/lint-imports

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/easel bench
