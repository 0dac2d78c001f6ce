# Two commands for a newcomer: `make run` and `make test`. Both start from a fresh clone.
SHELL := /bin/bash
PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VAR_DIR ?= var
export VAR_DIR

.PHONY: run test lint format bench venv sysdeps sysdeps-lint sysdeps-test migrate clean

## Python environment ----------------------------------------------------------------------
# The CPU build of PyTorch goes in first so that nothing resolves to a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[export,reference,clients,dev]'
	touch $@

venv: $(VENV)/.installed

## System packages (Debian), installed with apt when running as root ---------------------------
APT_RUN := libcurl4-openssl-dev
APT_TEST := chromium
APT_LINT := docker-compose

define apt_ensure
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi
endef

sysdeps:
	$(call apt_ensure,$(APT_RUN))

sysdeps-lint:
	$(call apt_ensure,$(APT_LINT))

sysdeps-test: sysdeps
	$(call apt_ensure,$(APT_TEST))

## Console database ---------------------------------------------------------------------------
migrate: venv
	$(PY) manage.py migrate --noinput

## Checks -------------------------------------------------------------------------------------
lint: venv sysdeps-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	SECRET_KEY=lint POSTGRES_PASSWORD=lint INFERENCE_TOKEN=lint docker-compose -f docker-compose.yml config -q

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: venv sysdeps-test extension lint
	$(PY) -m pytest

# Benchmarks print tables and write JSON under $(VAR_DIR)/bench; they are not tests.
bench: venv server
	$(PY) bench/embeddings.py
	$(PY) bench/cores.py
	$(PY) bench/sql.py
	$(PY) bench/console.py
	$(PY) bench/deployments.py
	$(PY) bench/addmodel.py
	$(PY) bench/jobs.py
	$(PY) bench/scaleout.py
	$(PY) bench/load.py
	$(PY) bench/drills.py

## Managed PostgreSQL server and the azure_local_ai module -----------------------------------
# The module is built against the embedded PostgreSQL (pgserver, inside the venv) and
# installed there; `server` starts that PostgreSQL with the module preloaded (idempotent).
PG_CONFIG = $(shell $(PY) -c 'from serverparams.server import pg_config_path; print(pg_config_path())')

.PHONY: extension server
extension: venv sysdeps
	$(MAKE) -s -C extension install PG_CONFIG="$(PG_CONFIG)"

server: extension
	$(PY) manage.py server start

## Run everything on embedded defaults --------------------------------------------------------
# `manage.py up` starts Redis, the managed server, the sidecar, the worker and the console.
# No model is loaded until someone enables AZURE_LOCAL_AI (Server parameters, Save) or runs
# `manage.py deploy`, as in the cloud product.
run: venv sysdeps extension migrate
	$(PY) manage.py up

clean:
	rm -rf $(VENV) build *.egg-info
