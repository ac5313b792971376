# One command each for set-up, the main job and the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The folder holding the datasets (camvid/, video/) that the committed configs name as ${EDGESEG_DATA}/...; set it
# to where yours are. The default is where the development and CI machines keep them, beside the clone.
export EDGESEG_DATA ?= $(abspath ../shared/data)

.PHONY: setup quickstart test lint

# A CPU-only environment. torch 2.13.0 is the CPU wheel (no CUDA libraries to download); on a GPU host
# install a CUDA build of torch first, then the same second line (see README.md). The last two lines give a local
# tritonserver: the wheel's binary without its Python API's dependencies (it pins numpy<2), and numpy<2 for its
# Python backend stub only (see runtime/backends/triton_server.py).
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[runtime,train,export,serve,triton,openvino,dev]"
	$(BIN)/pip install --quiet --no-warn-conflicts --no-deps "nvidia-pytriton==0.7.0"
	$(BIN)/pip install --quiet --no-warn-conflicts --upgrade --target $(VENV)/triton-python "numpy<2"
	# NVIDIA's TensorRT type stubs for `make test`'s type check; --no-deps because they require tensorrt itself
	# (GPU hosts only), and in a folder of their own because the bare `tensorrt` folder they hold would import as
	# an empty namespace package from site-packages.
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(VENV)/typings "tensorrt-stubs==10.13.0.35.1"
	# The package layout setup.py installs (edgeseg.runtime = runtime/, ...), as links the checker can follow.
	mkdir -p $(VENV)/typecheck/edgeseg
	ln -sfn $(CURDIR)/edgeseg/__init__.py $(VENV)/typecheck/edgeseg/__init__.py
	for stage in runtime training export; do ln -sfn $(CURDIR)/$$stage $(VENV)/typecheck/edgeseg/$$stage; done

quickstart:
	$(BIN)/edgeseg quickstart --out runs/quickstart

test:
	$(BIN)/ruff check .
	$(BIN)/basedpyright
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/python -m pytest -q tests/test_docker.py
