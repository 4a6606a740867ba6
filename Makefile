# personatag: `make demo` sets up and runs the demo, `make test` sets up and runs
# every check. Both create .venv themselves; nothing needs to be installed first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: the demo needs personatag and its runtime packages only; the
# checks add the test and lint tools (the `dev` and `postgresql` extras).
STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
# Apache Flink (PyPI's apache-flink carries a whole Flink distribution) lives in
# its own venv: it pins pyarrow/pandas/beam versions the app does not need.
FLINK_VENV := .venv-flink
FLINK_STAMP := $(FLINK_VENV)/.installed
FLINK_VERSION := 2.3.0
# The cluster the tests use: its own data dir and REST port.
TEST_FLINK_DIR := .flink-test
TEST_FLINK_PORT ?= 18081
TEST_FLINK_ENV := PERSONATAG_DATA_DIR=$(TEST_FLINK_DIR) PERSONATAG_FLINK_REST_PORT=$(TEST_FLINK_PORT) PERSONATAG_FLINK_PYTHON=$(CURDIR)/$(FLINK_VENV)/bin/python

.PHONY: demo test lint fmt unit bench clean flink-venv flink-up flink-down

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then echo "creating $(VENV) (a Python virtual environment)"; \
	  $(PYTHON) -m venv $(VENV); fi
	@echo "installing personatag and its runtime packages into $(VENV) (a minute or two)..."
	@$(PIP) -e .
	@# Bytecode now, as a wheel install does: an editable install leaves it to
	@# the first import, and where PYTHONDONTWRITEBYTECODE is set (containers,
	@# CI) every process would compile the package again (~50-80 ms a start).
	@$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	@echo "installing the test and lint tools into $(VENV) (.[dev,postgresql])..."
	@$(PIP) -e '.[dev,postgresql]'
	@touch $(DEV_STAMP)

$(FLINK_STAMP):
	$(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check apache-flink==$(FLINK_VERSION)
	touch $(FLINK_STAMP)

flink-venv: $(FLINK_STAMP)

# Start (or keep) the local session cluster the Flink tests run against.
flink-up: $(STAMP) $(FLINK_STAMP)
	$(TEST_FLINK_ENV) $(BIN)/personatag flink start

flink-down: $(STAMP)
	$(TEST_FLINK_ENV) $(BIN)/personatag flink stop

demo: $(STAMP)
	$(BIN)/python -m personatag.demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The test cluster is stopped afterwards, pass or fail: nothing keeps running.
unit: $(DEV_STAMP) flink-up
	PERSONATAG_TEST_PG_URL=$(PG_URL) PERSONATAG_TEST_FLINK_URL=http://127.0.0.1:$(TEST_FLINK_PORT) \
	PERSONATAG_FLINK_PYTHON=$(CURDIR)/$(FLINK_VENV)/bin/python $(BIN)/pytest -n 2 $(PYTEST_ARGS); \
	rc=$$?; $(TEST_FLINK_ENV) $(BIN)/personatag flink stop >/dev/null || true; exit $$rc

test: lint unit

bench: $(DEV_STAMP)
	$(BIN)/python bench/adhoc.py

clean:
	rm -rf $(VENV) $(FLINK_VENV) $(TEST_FLINK_DIR) personatag-data .pytest_cache .mypy_cache .ruff_cache
