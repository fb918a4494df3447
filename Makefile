# Two commands set up everything on a fresh Debian 12 (see README.md):
#   make demo   - venv, private bus, hxd on a sandbox config, hxctl status, clean stop
#   make test   - venv and the whole test suite
# `make deps` installs the Debian packages both need (run as root).
#   make sandbox - the demo's node and hxd left running to try hxctl, busctl and curl on (it prints what to
#                  export); Ctrl-C stops it all and removes it
#   make deb    - dist/hxd_<version>_<arch>.deb with debhelper, checked by lintian (packaging/README.md)
#   make e2e    - the .deb installed and booted in a Debian 12 container (tools/e2e; root, `make deps-e2e`)
#   make fresh  - the README's two commands, verbatim, each in a fresh minimal Debian 12 root (tools/fresh; root,
#                 `make deps-e2e`)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the demo and the tests need (`make fresh` proves the list complete on a minimal Debian 12).
# openssh-server: tests/test_fleet.py runs a real sshd (and ssh, ssh-keygen from openssh-client, its dependency).
# procps: /bin/kill, which hxd.service's ExecReload= names (tests/test_units.py: systemd-analyze verify checks it).
# strace: tests/test_migrate_crash.py places a kill at every file-changing system call with its fault injection.
# prometheus: promtool checks and unit-tests packaging/prometheus/hxd-rules.yml (tests/test_prometheus_rules.py), and
# the dashboard's queries run against a Prometheus of the test's own (tests/test_grafana_dashboard.py).
DEB_PACKAGES := dbus python3-venv make systemd util-linux rsync openssh-server procps strace prometheus
# Debian packages `make deb`, `make e2e` and `make fresh` need (`make deps-e2e` installs them); ca-certificates: the
# CA bundle `make fresh` carries into its roots.
DEB_BUILD_PACKAGES := debhelper dpkg-dev git lintian python3-pip python3.11-venv \
	mmdebstrap debian-archive-keyring mount systemd-container util-linux ca-certificates

.PHONY: deps venv demo sandbox test lint lock bench clean deps-e2e deb e2e fresh

deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)

deps-e2e:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_BUILD_PACKAGES)

# The venv is rebuilt whenever the lock file changes; the project itself is installed
# editable with --no-deps so that only the hash-checked lock decides what is installed. hxd-checkout.pth puts the
# checkout on the venv's path for the harness (hxsandbox/), which the package does not ship.
$(BIN)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/hxd-checkout.pth"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python tools/demo.py

sandbox: venv
	$(BIN)/python tools/demo.py --keep

# The tests need root (they switch users with setpriv and create the hxd account, as the package does).
test: lint
	$(BIN)/pytest

COLLECTION := ansible/ansible_collections/hxinfra/hxd
lint: venv
	$(BIN)/ruff check hxd hxsandbox tests tools bench ansible tools/e2e tools/fresh tools/gpu-sandbox-check
	$(BIN)/ruff format --check hxd hxsandbox tests tools bench ansible tools/e2e tools/fresh tools/gpu-sandbox-check
	$(BIN)/mypy
	cd $(COLLECTION) && PATH="$(CURDIR)/$(BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/ansible" \
		ansible-lint --offline --strict --nocolor
	$(BIN)/mypy --strict tools/e2e  # apart: mypy takes each extensionless script for the module __main__
	$(BIN)/mypy --strict tools/fresh
	$(BIN)/mypy --strict tools/gpu-sandbox-check

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
	$(BIN)/python bench/telemetry.py
	$(BIN)/python bench/flood.py
	$(BIN)/python bench/migrate.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/playbook.py

# The .deb: a source tree under build/deb from `git ls-files` plus packaging/debian as debian/, the wheels pinned
# by requirements.lock (and the setuptools that builds hxd's wheel, pinned by requirements-dev.lock) downloaded
# into it with Debian's pip, then dpkg-buildpackage without network (unshare -n where we may) and lintian.
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB_FILE    = hxd_$(VERSION)_$$(dpkg --print-architecture).deb
DEB_TREE   := build/deb/hxd-$(VERSION)
PIP_FETCH  := /usr/bin/python3 -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps
deb:
	@test "$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)" = "$(VERSION)" || { \
		echo "packaging/debian/changelog does not match version $(VERSION) in pyproject.toml; add an entry (dch -v)" >&2; \
		exit 1; }
	rm -rf build/deb && mkdir -p $(DEB_TREE) dist
	git ls-files -z | tar --null --ignore-failed-read -T - -cf - | tar -C $(DEB_TREE) -xf -
	cp -a packaging/debian $(DEB_TREE)/debian
	awk '/^setuptools==/ {p = 1; print; next} p && /^ / {print; next} {p = 0}' requirements-dev.lock \
		> $(DEB_TREE)/debian/build-requirements.lock
	cd $(DEB_TREE) && $(PIP_FETCH) -r requirements.lock -r debian/build-requirements.lock -d wheels
	cd $(DEB_TREE) && $$(unshare --net true 2>/dev/null && echo unshare --net --) dpkg-buildpackage -us -uc -b
	cp build/deb/$(DEB_FILE) dist/
	lintian --fail-on error,warning --info --display-experimental --tag-display-limit 0 dist/$(DEB_FILE)

# Needs root: mmdebstrap, systemd-nspawn and nsenter (packaging/README.md).
e2e:
	tools/e2e

# Needs root: mmdebstrap and systemd-nspawn (packaging/README.md). Tests the committed HEAD, not the working tree.
fresh:
	tools/fresh

clean:
	rm -rf $(VENV) dist build *.egg-info
