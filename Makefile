# Ketch developer entry points. `make test` is what CI runs (.ci/run).
#
#   make install      Debian packages (scripts/install-system-deps.sh) + .venv with '.[dev]'
#   make lint         ruff check, ruff format --check, mypy, lint-imports
#   make test         install, lint, then pytest on 2 workers (a 3 s fuzz pass per target)
#   make fuzz         fuzz every parser of hostile input, FUZZ_SECONDS each (docs/testing.md)
#   make demo         scripts/demo.sh (installs, builds the images if missing, runs)
#   make corpus       shared corpus images  -> .cache/corpus/oci  (if missing)
#   make test-images  Ketch's own images    -> .cache/images/oci  (if missing)
#   make bench        python -m bench (once bench/__main__.py exists)
#   make clean        tool caches, build outputs, unpacked bundles (keeps .venv and images)
#   make distclean    clean + .venv + all of .cache

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
SHARED ?= ../shared
PYTEST_WORKERS ?= 2
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=

VENV := .venv
STAMP := $(VENV)/.installed
CACHE := .cache
CORPUS := $(CACHE)/corpus
IMAGES := $(CACHE)/images

# Directories with Python files in them: ruff warns and mypy fails on ones without.
py_dirs = $(foreach d,$(1),$(if $(shell find $(d) -name '*.py' -print -quit 2>/dev/null),$(d)))

# The integration fixtures (tests/integration/conftest.py) find the shared corpus script here.
export KETCH_SHARED := $(abspath $(SHARED))

.PHONY: install system-deps lint test fuzz demo corpus test-images bench clean distclean

# Bytecode for our own sources, refreshed on every install: the editable install compiles
# nothing, and with PYTHONDONTWRITEBYTECODE set (as on these machines) every `ketch` would
# compile its modules from source at start-up. compileall skips what is up to date.
install: $(STAMP)
	@$(VENV)/bin/python -m compileall -q src/ketch

system-deps:
	@scripts/install-system-deps.sh

# Order-only on system-deps: it runs every time (quietly, in a fraction of a second)
# but does not make the venv out of date.
$(STAMP): pyproject.toml | system-deps
	@test -x $(VENV)/bin/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

lint: install
	$(VENV)/bin/ruff check $(call py_dirs,src tests bench scripts)
	$(VENV)/bin/ruff format --check $(call py_dirs,src tests bench scripts)
	$(VENV)/bin/mypy $(call py_dirs,src tests bench)
	$(VENV)/bin/lint-imports

test: install lint
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests

# Each target in its own atheris process; new inputs and crashes land in build/fuzz.
fuzz: install
	$(VENV)/bin/python -m tests.fuzz fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# No prerequisite: the demo checks what no install can fix (root, FUSE) first, then runs
# `make install` itself with its output in the demo's log.
demo:
	scripts/demo.sh

corpus: $(CORPUS)/oci/index.json

# The shared script writes index.json first, so a failed build must not leave it behind.
$(CORPUS)/oci/index.json:
	@test -f $(SHARED)/corpus/build-images.sh || { echo "no $(SHARED)/corpus/build-images.sh (set SHARED=...)" >&2; exit 1; }
	bash $(SHARED)/corpus/build-images.sh $(CORPUS) || { rm -rf $(CORPUS)/oci; exit 1; }

test-images: $(IMAGES)/oci/index.json

# The script publishes $(IMAGES)/oci only once it is complete.
$(IMAGES)/oci/index.json:
	scripts/build-test-images.sh $(IMAGES)

bench: install
	@if [[ -f bench/__main__.py ]]; then \
	  $(VENV)/bin/python -m bench; \
	else \
	  echo "bench: no bench/__main__.py yet, nothing to run"; \
	fi

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache $(CACHE)/umoci
	find . -path ./$(VENV) -prune -o -path ./$(CACHE) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CACHE)
