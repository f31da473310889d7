# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make demo   - set up .venv if needed, run the open-world demo on the embedded digits
#   make test   - set up .venv if needed, lint (ruff) and run the tests (pytest)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench setup

setup: $(VENV)/.installed

# (Re)install whenever pyproject.toml changes; torch/torchvision are pinned there.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/uniframework demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: setup
	$(BIN)/python benchmarks/supervised.py
