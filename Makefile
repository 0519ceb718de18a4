# `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --constraint constraints.txt

.PHONY: demo test lint bench clean peer-venv browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskrcnn demo --out demo_output

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The web page's test (tests/serve/test_browser.py) drives headless Chromium through chromedriver.
# A missing browser is installed where apt-get is usable (as root, or by sudo without a password);
# elsewhere, or when the install fails, a note is printed and that test skips.
APT_GET := $(shell if [ "$$(id -u)" = 0 ]; then echo apt-get; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo "sudo -n apt-get"; fi)

browser:
	@if command -v chromedriver >/dev/null 2>&1 && \
	    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then :; \
	elif [ -n "$(APT_GET)" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the web page's test"; \
	    { $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium chromium-driver; } \
	        || echo "note: installing chromium failed; the web page's test will be skipped"; \
	else \
	    echo "note: chromium and chromedriver are missing and apt-get is not usable here;" \
	         "the web page's test will be skipped (install chromium and chromium-driver to run it)"; \
	fi

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
		scikit-image pycocotools fvcore iopath omegaconf hydra-core yacs termcolor tabulate cloudpickle \
		safetensors pyyaml tqdm
	touch $(PEER)/.installed

peer-venv: $(PEER)/.installed

bench: $(STAMP) $(PEER)/.installed
	$(BIN)/python benchmarks/bench_predict.py
