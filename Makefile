# One command each for set-up, the main job and the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint

# A CPU-only environment. torch 2.13.0 is the CPU wheel (no CUDA libraries to download); on a GPU host
# install a CUDA build of torch first, then the same second line (see README.md).
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[runtime,train,export,serve,dev]"

quickstart:
	$(BIN)/edgeseg quickstart --out runs/quickstart

test:
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/python -m pytest -q tests/test_docker.py
