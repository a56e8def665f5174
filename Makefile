# Statehold: two set-up commands, `make demo` and `make test`, on a fresh Debian 12 host as root.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := xfsprogs btrfs-progs e2fsprogs util-linux fio restic sqlite3 iproute2 attr quota \
                glusterfs-server glusterfs-client postgresql etcd-server golang-1.19-go \
                golang-github-modern-go-reflect2-dev dpkg-dev samba smbnetfs smbclient chromium chromium-driver
PYTEST_ARGS ?=
# The suite runs in parallel workers, whole files to one worker (module fixtures set up
# once), the shared-filesystem tests (GlusterFS and Samba run one per host) all on one
# (tests/fixtures/workers.py). Most of the suite's time is waiting on real servers,
# devices and processes, not CPU; every test names its own devices, paths, ports and
# namespaces, so workers never meet.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --durations=25

.PHONY: demo test deps apt venv proto proto-check lint unit integration bench clean-venv kube-bins

demo: deps
	$(VENV)/bin/statehold demo

test: deps proto-check lint kube-bins
	@bash scripts/pytest-strict.sh $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

deps: apt venv

# Installs only what is missing, so a second run costs a few dpkg queries.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# the Debian packages start these services; our tests start their own instances by pid
	@-systemctl disable --now glusterd >/dev/null 2>&1 || true
	@-systemctl disable --now smbd nmbd samba-ad-dc >/dev/null 2>&1 || true
	@-systemctl disable --now etcd >/dev/null 2>&1 || true

# kube-apiserver, kube-controller-manager, kube-scheduler v1.20.2 for the tests' control
# plane (tests/fixtures/controlplane.py), built once from Debian's source package and cached
# in /var/cache/statehold. Debian's etcd-server starts a service: the tests run their own.
kube-bins: apt
	@-systemctl disable --now etcd >/dev/null 2>&1 || true
	@bash scripts/build-kubernetes.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

proto:
	$(PY) -m statehold.csi.codegen

# The generated CSI code must match csi.proto; a missing csi.proto is a failure, not a pass.
proto-check:
	@test -f src/statehold/csi/csi.proto || { echo "proto-check: src/statehold/csi/csi.proto is missing" >&2; exit 1; }
	@$(PY) -m statehold.csi.codegen --check

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: deps kube-bins
	@bash scripts/pytest-strict.sh $(PY) -m pytest tests/unit $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
