# personatag: `make demo` sets up and runs the demo, `make test` sets up and runs
# every check. Both create .venv themselves; nothing needs to be installed first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

.PHONY: demo test lint fmt unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m personatag.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

unit: $(STAMP)
	PERSONATAG_TEST_PG_URL=$(PG_URL) $(BIN)/pytest -n 2 $(PYTEST_ARGS)

test: lint unit

bench: $(STAMP)
	$(BIN)/python bench/adhoc.py

clean:
	rm -rf $(VENV) personatag-data .pytest_cache .mypy_cache .ruff_cache
