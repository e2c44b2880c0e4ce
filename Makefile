# Two commands: `make run` starts every component, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint fuzz bench clean

$(BIN)/sesame: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

run: $(BIN)/sesame
	$(BIN)/sesame up

test: $(BIN)/sesame
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(BIN)/sesame
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fuzz: $(BIN)/sesame
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q -m fuzz

clean:
	rm -rf $(VENV) var
