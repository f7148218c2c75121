# EdgeVeil. `make demo` and `make test` each run the set-up first (idempotent, quick when done).
SHELL := /bin/bash
EDGEVEIL_CACHE ?= $(HOME)/.cache/edgeveil
export EDGEVEIL_CACHE
VENV := $(EDGEVEIL_CACHE)/venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench kafka-up kafka-down clean help

help:
	@echo "make demo   - set up, then run the demo (local Kafka + real faust workers)"
	@echo "make test   - set up, then ruff, the layers contract, mypy, the docstring examples and every test (real Kafka included)"
	@echo "make test-fast - tests not marked kafka/slow"
	@echo "make bench  - run the benchmarks in bench/ (JSON out)"

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/edgeveil demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules schemas pipeline agents
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not kafka and not slow" $(PYTEST_ARGS)

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

kafka-up: setup
	$(VENV)/bin/edgeveil kafka up

kafka-down:
	$(VENV)/bin/edgeveil kafka down

clean:
	rm -rf out .pytest_cache .ruff_cache
