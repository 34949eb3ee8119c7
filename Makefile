# One command per habit. `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# torch is pinned to what this project is built and tested against; override to taste.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The venv first on PATH: its ninja (for cmake), python and tools.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv build test test-py test-slow ctest lint format demo bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(BIN)/activate requirements-dev.txt
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# Compiles seer_kernels._C (CPU, and CUDA when a toolkit is found) against the venv's torch.
# The stamp skips the (2-minute) recompile when no C++/CUDA source or build file changed since
# the last build, so `make demo` after `make test` starts at once; `make -B build` forces one
# (after changing SEER_KERNELS_CUDA or TORCH_CUDA_ARCH_LIST, say).
EXT_SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
$(VENV)/.built: $(VENV)/.deps $(EXT_SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

ctest: venv
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) >/dev/null
	cmake --build build/cmake
	ctest --test-dir build/cmake --output-on-failure

# Tests marked slow (the long forms of soak and crash tests, whose reduced forms run
# here) are left to `make test-slow`.
test-py: build
	$(PY) -m seer_kernels.info
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-slow: build
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

test: build ctest test-py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/clang-format --dry-run --Werror $$(find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/clang-format -i $$(find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

# The main job: SwAV pretraining of a small RegNet on the embedded digits (CPU), then
# SEER's evaluation against random-init and raw-pixel baselines; the table prints last.
# RUN_DIR=... puts the run elsewhere; an existing finished run is only re-evaluated.
RUN_DIR ?= runs/default
demo: build
	$(PY) -m seer_kernels.demo
	$(PY) -m seer.train -c configs/default.yaml run_dir=$(RUN_DIR)
	$(PY) -m seer.eval $(RUN_DIR)

bench: build
	$(PY) -m benchmarks.run

clean:
	rm -rf build *.egg-info seer_kernels/_C*.so .pytest_cache $(VENV)/.built
