# One command per chore; each creates (or reuses) the virtualenv in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo migrate test lint format bench clean

$(BIN)/etl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/etl

venv: $(BIN)/etl

demo: venv
	$(BIN)/etl demo

migrate: venv
	$(BIN)/etl migrate

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict etl

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
