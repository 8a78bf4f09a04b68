# aixds: `make demo` runs the whole local fleet, `make test` runs every check.
# Both create .venv and install what they need on a fresh machine.
# Installs come from uv.lock exactly (`uv sync --frozen`); `make lock` refreshes it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# uv itself is pinned and installed into .tools/ with the machine's pip.
UV_VERSION := 0.13.9
UV     := .tools/uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
comma := ,

.PHONY: demo test lint typecheck imports unit e2e bench bench-extra golden lock redis-server chromium prometheus clean

$(UV):
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install -q --disable-pip-version-check \
	  --target .tools/uv uv==$(UV_VERSION)

# Keeps the `bench` extra where `make bench-extra` put it (uv sync removes what it is not told).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev $(if $(wildcard $(VENV)/.bench),--extra bench) --python $(PYTHON)
	@touch $(STAMP)

# vllm-router too (the `bench` extra: a baseline of bench.routing and bench.sessions).
bench-extra: $(STAMP)
	$(UV) sync --frozen --extra dev --extra bench --python $(PYTHON)
	@touch $(VENV)/.bench

lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

# $(call apt_install,PACKAGE,WHAT FOR,HOW ELSE): install a Debian package with apt-get
# where root, else say what needs it and how to get it, and fail.
apt_install = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "$(1) missing: installing it with apt-get ($(2))"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1); \
	else \
	  echo "$(1) is required ($(2)). Install it, e.g.: sudo apt-get install -y $(1) (Debian/Ubuntu)$(3)"; \
	  exit 1; \
	fi

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  $(call apt_install,redis-server,for every test and the demo,$(comma) or brew install redis (macOS)); }

# The browser tests (tests/e2e/test_ui.py) drive the system's Chromium with Playwright
# (Playwright's own browser download is not used). AIXDS_CHROMIUM=/path picks another one.
chromium:
	@if [ -n "$$AIXDS_CHROMIUM" ]; then test -x "$$AIXDS_CHROMIUM" || { \
	    echo "AIXDS_CHROMIUM=$$AIXDS_CHROMIUM is not an executable"; exit 1; }; \
	elif ! command -v chromium >/dev/null 2>&1; then \
	  $(call apt_install,chromium,for the dashboard's browser tests,$(comma) or point AIXDS_CHROMIUM at a Chromium/Chrome binary); \
	fi

# tests/e2e/test_prometheus_dashboard.py runs the Grafana dashboard's queries on a real
# Prometheus (Debian's package) scraping a real fleet; it skips, saying why, without one.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
	  $(call apt_install,prometheus,for the dashboard's query test,$(comma) or brew install prometheus (macOS)); }

demo: $(STAMP) redis-server
	$(VENV)/bin/aixds demo

lint: $(STAMP)
	$(VENV)/bin/ruff check controlplane tests bench
	$(VENV)/bin/ruff format --check controlplane tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-logo

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/golden

test: $(STAMP) redis-server chromium prometheus lint typecheck imports
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

golden: $(STAMP)
	$(PY) -m pytest -q tests/golden --update-golden

bench: $(STAMP) redis-server
	$(PY) -m bench.convergence
	$(PY) -m bench.fanout

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .artifacts
