# Two commands a new user needs: `make run` (set up, run the server) and `make test` (set up, run every check).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint typecheck pytest bench clean

# The venv is rebuilt only when pyproject.toml changes (the stamp records the last install).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/python -m geventchat $(ARGS)

test: lint typecheck pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

# The benchmark matrix (server on CPU 0, load generator on CPU 1); writes benchmarks/results/<date>.md and plots.
# The C load generator and C echo server are compiled at start (gcc, or CC=...; without one it says so and uses the
# Python generator), so a clean clone needs nothing more.
# BENCH=--full for 5 s runs repeated three times (about half an hour); the default is --quick.
BENCH ?= --quick
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks run $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
