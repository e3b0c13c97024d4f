# The two commands the README names: `make demo` and `make test`. CI runs `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What `make demo` needs: the package and its runtime dependencies, without the test and bench
# extras. A venv that `make test` has installed already has them.
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo test lint types pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

$(RUN_STAMP): $(BIN)/python pyproject.toml
	if [ ! $(STAMP) -nt pyproject.toml ]; then $(BIN)/python -m pip install --quiet -e .; fi
	touch $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/openmail-bridge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy --strict bridge/

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint types pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
