# spinegate: two set-up commands (README): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/python -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-quick peers bench

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.testdeps: $(VENV)/.runtime
	$(PIP) install -q -e '.[train,test]'
	touch $@

# Debian peers the tests drive: dcmtk (storescu/storescp/dcmcjpeg/dcmcjpls), dicom3tools (dciodvfy),
# prometheus (+ promtool: scrapes spinegate, checks the alert rules), redis-server (scale-out),
# orthanc + orthanc-dicomweb (the PACS of the auto-forward and viewer tests), docker-compose (validates
# deploy/docker-compose.yml), chromium (headless, for the OHIF overlay test).
peers:
	@command -v storescp >/dev/null && command -v dciodvfy >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  && command -v redis-server >/dev/null && command -v Orthanc >/dev/null && command -v docker-compose >/dev/null \
	  && command -v chromium >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || \
	  ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	     dcmtk dicom3tools prometheus redis-server orthanc orthanc-dicomweb docker-compose chromium)

# The prebuilt OHIF viewer (npm @ohif/app, its dist/) and playwright-core, from the npm registry.
VIEWER := .cache/viewer
$(VIEWER)/.ready:
	mkdir -p $(VIEWER)
	cd $(VIEWER) && npm pack -q @ohif/app@3.13.2 >/dev/null && tar xzf ohif-app-3.13.2.tgz && rm ohif-app-3.13.2.tgz
	npm install -q --prefix $(VIEWER) --no-save --no-audit --no-fund playwright-core@1.65.1 >/dev/null
	touch $@

# Wheels of spinegate's runtime dependencies and build backend, fetched while
# the network is up: tests/test_packaging.py builds and installs the wheel
# into a clean venv from them inside the suite's network namespace.
WHEELHOUSE := .cache/wheelhouse
$(WHEELHOUSE)/.ready: pyproject.toml $(VENV)/.runtime
	$(PIP) download -q -d $(WHEELHOUSE) . "setuptools>=68" wheel
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/spinegate demo

# The whole suite runs in a private network namespace holding only loopback,
# so no peer started by a test is reachable from outside this machine. Two
# pytest-xdist workers, a test file each at a time (most integration tests
# wait on peers, so two share the 2 cores well), the files marked heavy
# first, heaviest first (tests/conftest.py); then the log audit alone,
# over every worker's temporary files (tests/test_no_phi.py).
SUITE_TMP := $(CURDIR)/.cache/pytest-suite
SUITE := $(VENV)/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --basetemp=$(SUITE_TMP) \
	-m "not session_audit" $(PYTEST_ARGS) && SPINEGATE_AUDIT_DIR=$(SUITE_TMP) $(VENV)/bin/python -m pytest \
	-p no:cacheprovider -m session_audit -q tests/test_no_phi.py
test: $(VENV)/.testdeps peers $(VIEWER)/.ready $(WHEELHOUSE)/.ready
	@if unshare -n true 2>/dev/null; then \
	  unshare -n sh -c 'ip link set lo up && $(SUITE)'; \
	else \
	  echo "unshare -n is not permitted here: running the suite in the host network namespace (peers bind 127.0.0.1 or a free port)"; \
	  sh -c '$(SUITE)'; \
	fi

test-quick: $(VENV)/.testdeps
	$(VENV)/bin/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: $(VENV)/.testdeps
	$(VENV)/bin/python bench/turnaround.py
	$(VENV)/bin/python bench/turnaround_scaling.py
	$(VENV)/bin/python bench/biomech_solve.py
