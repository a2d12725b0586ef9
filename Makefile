# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# CPU torch by default; a GPU host sets TORCH_SPEC (see README) and EXTRAS=dev,gpu.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: venv demo test test-fast clean-demo system-packages

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Debian packages with the real images and servers the demo and tests use (as root, where apt exists).
system-packages:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then bash deploy/apt-packages.sh; \
	else echo "not root or no apt-get: install the packages in deploy/apt-packages.sh yourself"; fi

demo: $(STAMP) system-packages
	$(BIN)/lvd demo

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf lvd-data
