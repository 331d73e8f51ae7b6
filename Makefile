# Two entry points, each complete on a fresh machine:
#   make demo   -> venv + install + `torchdiffusion demo` (trains on the embedded digits set, no downloads)
#   make test   -> venv + install (with test extras) + Chromium for the browser test + ruff + pytest
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Install the CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench install install-test install-browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[train]"

install-test: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[test]"

# Headless Chromium + chromedriver for tests/serve/test_browser.py (Debian's packages); apt-get only when missing.
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver: present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "no apt-get: install Chromium + chromedriver yourself for the browser test (it skips without them unless CI is set)"; \
	fi

demo: install
	$(BIN)/torchdiffusion demo

lint: install-test
	$(BIN)/ruff check .

test: install-test install-browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install-test
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
