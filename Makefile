# Two commands set everything up: `make demo` (the main job) and `make test`.
# Both create ./.venv on first use and install medvol into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned so installs are reproducible; on PyPI this is the CUDA build on
# Linux. For a small CPU-only install use PyTorch's CPU wheel index instead
# (see README, "Installing").
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint docs clean

$(BIN)/medvol: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"  # every extra (train, infer, export...) and the dev tools
	touch $@

install: $(BIN)/medvol

demo: install
	$(BIN)/medvol demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml): generated pages must be fresh
# (`python docs/generate.py` rewrites them), then a strict build into build/site.
docs: install
	$(BIN)/python docs/generate.py --check
	$(BIN)/mkdocs build --strict --site-dir build/site

test: lint docs
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) medvol-demo build .pytest_cache .mypy_cache .ruff_cache
