# Tally's developer entry points. `make run` and `make test` work on a fresh machine:
# the first call creates $(VENV), installs Tally editable with its test extras and builds
# the Cython kernels; later calls reuse it and rebuild only what changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := build

VENV ?= .venv
PY = $(VENV)/bin/python
DATA ?= .tally-data
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=
# make loadtest: Locust against a fresh `tally serve`, then the audit (see README, Load tests).
LOADTEST_SECONDS ?= 30
LOADTEST_USERS ?= 200
LOADTEST_OUT ?= loadtest-out
LOADTEST_ARGS ?=
# The interpreter that creates the venv: python3.11 if on PATH, else python3 (must be >= 3.11).
VENV_PYTHON ?= $(shell command -v python3.11 || command -v python3)

CEXT_SOURCES := $(wildcard cext/*.pyx cext/*.pxd)
LINT_PACKAGES := core ledger limits channels sim loadtests

# $? holds the prerequisites newer than the marker (all of them when it is missing):
# pip runs only when the venv is new or pyproject.toml/setup.py changed; a changed
# .pyx/.pxd alone costs just the incremental build_ext.
$(VENV)/.installed: pyproject.toml setup.py $(CEXT_SOURCES)
	@if [ ! -x $(PY) ]; then \
	  echo "creating $(VENV) with $(VENV_PYTHON)"; \
	  $(VENV_PYTHON) -m venv $(VENV); \
	fi
	@if [ -n "$(filter pyproject.toml setup.py,$?)" ]; then \
	  echo "installing tally (editable, with test extras) into $(VENV)"; \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	    > $(VENV)/build-requires.txt; \
	  $(PY) -m pip install -q -r $(VENV)/build-requires.txt; \
	  $(PY) -m pip install -q -e '.[test]'; \
	fi
	$(PY) setup.py -q build_ext --inplace
	@touch $@

run: $(VENV)/.installed
	$(VENV)/bin/tally run-default --host $(HOST) --port $(PORT) --data $(DATA) --dev

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The long tests `make test` leaves out: the many-kill crash loops, the failover drill and
# the short HTTP benchmark run (CI runs them after `make test`).
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Starts a server on a free port with a fresh data dir in $(LOADTEST_OUT)/data, creates the
# dataset, runs Locust headless (CSV + HTML reports into $(LOADTEST_OUT)), stops the server,
# audits the journal; non-zero on any request failure or audit error.
loadtest: $(VENV)/.installed
	$(VENV)/bin/tally loadtest --seconds $(LOADTEST_SECONDS) --users $(LOADTEST_USERS) \
	  --out $(LOADTEST_OUT) $(LOADTEST_ARGS)

# cython-lint runs pycodestyle by name, so the venv's bin must be on PATH.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(LINT_PACKAGES)
	$(VENV)/bin/lint-imports
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/cython-lint cext

build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

# Removes build products and forgets the install (the next target reinstalls into the
# same venv); `rm -rf $(VENV)` for a clean slate.
clean:
	rm -rf build/ *.egg-info/ .pytest_cache/ .mypy_cache/ .ruff_cache/
	rm -f cext/*.c cext/*.so cext/*.html $(VENV)/.installed
	find . -path './.*' -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: run test test-slow lint build clean loadtest
