# Set-up and everyday commands. Everything installs into ./.venv.
#   make quickstart   set up, build the sample data, train the embedded default (2 processes)
#   make test         set up, run the whole test suite (what CI runs)
#
# torch is installed first and on its own: `pip install torch==2.13.0` takes the CPU wheel that lies on
# this workplace's machines. Elsewhere choose the build explicitly, e.g.
#   make TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu" test
# Nothing later reinstalls torch: the package asks only for torch>=2.10.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_ARGS ?=
NPROC ?= 2

.PHONY: install quickstart sample-data test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_ARGS) "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# mup (the muP reference, for the peer check) declares torchvision, which would drag in a CUDA build of
	# torch; it needs only what is already installed, so install it alone
	$(BIN)/pip install -q --no-deps "mup==1.0.0"
	touch $@

install: $(BIN)/.installed

sample-data: install
	$(BIN)/megadepth prep sample --out data/sample

quickstart: sample-data
	$(BIN)/megadepth launch --nproc-per-node $(NPROC) configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf runs data/sample .pytest_cache
