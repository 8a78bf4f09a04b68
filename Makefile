# aixds: `make demo` runs the whole local fleet, `make test` runs every check.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit e2e bench golden redis-server clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server missing: installing it with apt-get"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	  else \
	    echo "redis-server is required. Install it, e.g.: sudo apt-get install -y redis-server (Debian/Ubuntu) or brew install redis (macOS)"; \
	    exit 1; \
	  fi; }

demo: $(STAMP) redis-server
	$(VENV)/bin/aixds demo

lint: $(STAMP)
	$(VENV)/bin/ruff check controlplane tests bench
	$(VENV)/bin/ruff format --check controlplane tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/golden

test: $(STAMP) redis-server lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

golden: $(STAMP)
	$(PY) -m pytest -q tests/golden --update-golden

bench: $(STAMP) redis-server
	$(PY) -m bench.convergence
	$(PY) -m bench.fanout

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
