# `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --constraint constraints.txt

.PHONY: demo test lint bench clean peer-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskrcnn demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check maskrcnn tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache

# The benchmark and reference peer: torchvision in its own virtualenv (a CUDA build
# that runs on the CPU; several GB), with what ../shared/reference/tools needs to
# run torchvision's and Detectron2's own code. Never a dependency of the package or the tests.
PEER := .peer-venv

$(PEER)/.installed:
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install torch==2.14.1 torchvision==0.29.1 pillow numpy \
		scikit-image pycocotools fvcore iopath omegaconf hydra-core yacs termcolor tabulate cloudpickle
	touch $(PEER)/.installed

peer-venv: $(PEER)/.installed

bench: $(STAMP) $(PEER)/.installed
	$(BIN)/python benchmarks/bench_predict.py
