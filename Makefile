# Two commands: `make run` starts every component, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint fuzz clean

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

# The fuzz targets (SES Query parser, SMTP handler) with thousands of examples,
# then the parser property tests again under the long profile.
fuzz: $(BIN)/sesame
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q -p no:cacheprovider -m fuzz
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/mta/test_feedback.py tests/mta/test_verp.py tests/mta/test_message.py \
		tests/templates/test_render.py

clean:
	rm -rf $(VENV) var
