# Two commands set up everything on a fresh Debian 12 (see README.md):
#   make demo   - venv, private bus, hxd on a sandbox config, hxctl status, clean stop
#   make test   - venv and the whole test suite
# `make deps` installs the Debian packages both need (run as root).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the demo and the tests need.
DEB_PACKAGES := dbus python3-venv make systemd util-linux

.PHONY: deps venv demo test lint lock bench clean

deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)

# The venv is rebuilt whenever the lock file changes; the project itself is installed
# editable with --no-deps so that only the hash-checked lock decides what is installed.
$(BIN)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python tools/demo.py

# The tests need root (they switch users with setpriv and create the hxd account, as the package does).
test: lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check hxd tests tools bench
	$(BIN)/ruff format --check hxd tests tools bench
	$(BIN)/mypy

# Regenerate both lock files from pyproject.toml (needs network access to PyPI).
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet pip-tools
	$(VENV)-lock/bin/pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links \
		--strip-extras --allow-unsafe -o requirements.lock pyproject.toml
	$(VENV)-lock/bin/pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links \
		--strip-extras --allow-unsafe --all-build-deps --extra test -o requirements-dev.lock pyproject.toml
	rm -rf $(VENV)-lock

bench: venv
	$(BIN)/python bench/foundation.py

clean:
	rm -rf $(VENV) dist build *.egg-info
