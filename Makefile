# Two entry points for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint docs setup clean

$(BIN)/paint: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU build; an open range would pull CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,hf]"
	touch $(BIN)/paint

setup: $(BIN)/paint

demo: setup
	$(BIN)/paint demo

test: setup lint docs
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# The documentation site (mkdocs.yml, docs/); --strict fails on a broken link, page or API reference.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Style and layer rules: ruff (lint + format) and the import-linter contracts in pyproject.toml.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs .paint-cache site
