# Set-up and the two commands the README promises: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup test lint demo bench docs clean runtime

setup: $(VENV)/.installed

# torch first, pinned: an unpinned resolve would pull several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

test: setup
	$(PY) -m pytest -q tests

# llama.cpp itself runs what `tunesmith export` writes (docs/shipping.md): llama-cpp-python is built
# from its PyPI sdist once (about 4 min on 2 cores; cached in ~/.cache/tunesmith/llama-cpp/, never
# installed into the venv), then the runtime tests (and the demo model's, -m demo_model) run against it.
runtime: setup
	PY=$(PY) bench/runtime/build_llama_cpp.sh
	$(PY) -m pytest -q -m runtime tests/test_runtime_gguf.py

# CI runs it before the tests; the rule set and line length are in pyproject.toml ([tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check src tests bench

demo: setup
	$(PY) -m tunesmith.cli demo

bench: setup
	$(PY) bench/prep_speed.py

# docs/config.md is generated from the schema's field descriptions (tests/test_config_docs.py checks it).
docs: setup
	$(PY) -m tunesmith.config.docs > docs/config.md.tmp && mv docs/config.md.tmp docs/config.md

clean:
	rm -rf $(VENV) outputs
