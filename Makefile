# Two entry points: `make demo` (train a model, report accuracy, show predictions) and
# `make test` (the whole test suite). Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch when the machine's pip can find it (it is a tenth of the CUDA build's size)
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test check lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/mnist-cnn train --model fast --out runs/demo --overwrite --show 3
	@echo
	@echo "Next (the command is $(BIN)/mnist-cnn; 'source $(BIN)/activate' makes it mnist-cnn):"
	@echo "  $(BIN)/mnist-cnn predict photo.jpg                    read the digit in your photo"
	@echo "  make serve                                               draw digits at http://127.0.0.1:8000/"
	@echo "  $(BIN)/mnist-cnn evaluate runs/demo/last.safetensors  per-class accuracy, confusion matrix"
	@echo "  $(BIN)/mnist-cnn plot runs/demo/last.safetensors      curves, mistakes, filters (PNG)"

# the page to draw digits on, answered by the model shipped with mnist-cnn, or by the checkpoint
# named: make serve CHECKPOINT=runs/demo/last.safetensors
CHECKPOINT ?=
serve: $(STAMP)
	$(BIN)/mnist-cnn serve $(CHECKPOINT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# while working: lint and every test that does not train on the full MNIST (a few minutes)
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

# ruff, mypy (the types of src/: [tool.mypy] in pyproject.toml), and the import contract: each
# package imports only its layer and those below (tests/test_layers.py)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/python -m pytest -q tests/test_layers.py

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/time_to_99.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
