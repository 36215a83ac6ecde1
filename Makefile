# RoboCache developer commands. `make demo` runs the main job, `make test` the tests; both set up
# a virtual environment in .venv on first use (Python >= 3.10, network access to PyPI).

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
# CPU build on machines that keep it on disk; set TORCH_SPEC="torch" for your platform's default.
TORCH_SPEC ?= torch==2.13.0
# The GPU machine has no network and no venv: its own python3 runs the source tree.
GPU_PY ?= python3

.PHONY: install test lint compile-check gpu-check gpu-profile sass bench build demo api-listing release-check clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,cuda12,compile]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite, then the zarr reader under zarr-python 2 (diffusion_policy's pin) in a small
# environment of its own (.venv-zarr2; tools/zarr2_check.sh).
test: $(STAMP)
	ROBOCACHE_REQUIRE_RELEASE=1 $(PYTHON) -m pytest -q
	PY=$(PY) bash tools/zarr2_check.sh

lint: $(STAMP)
	$(BIN)/ruff check robocache tests benchmarks examples tools

compile-check: $(STAMP)
	$(PYTHON) -m robocache compile --check

# Logs and JSON go to GPU_LOG: on the device tool's machine `make gpu-check GPU_LOG=$$OUT`
# writes them where they come back from, also when the call runs past its time limit.
GPU_LOG ?= benchmarks/out
gpu-check:
	GPU_PY=$(GPU_PY) bash tools/gpu_check.sh $(GPU_LOG)

# Nsight Compute on the kernels whose PERF.md targets are still missed (GPU machine; ~30 s).
gpu-profile:
	PATH="$$PATH:/usr/local/cuda/bin" PYTHONPATH=$(CURDIR) ncu --clock-control none \
	  -k "regex:resample_kernel|crop_resize_kernel" --section SpeedOfLight \
	  --section ComputeWorkloadAnalysis --section WarpStateStats $(GPU_PY) tools/profile_kernels.py

# The hot kernels' loops in the compiled code (NVRTC, sm_90 by default; ARCH=sm_80 etc.): what a
# kernel change did to the instructions per iteration, without a GPU. Needs cuobjdump on PATH or
# in $CUOBJDUMP (see tools/sass_loops.py).
ARCH ?= sm_90
sass: $(STAMP)
	$(PYTHON) tools/sass_loops.py --arch $(ARCH)

bench: $(STAMP)
	$(PYTHON) benchmarks/run_all.py --json benchmarks/out/bench.json

# sdist + wheel in dist/, stamped with the commit and date (tools/stamp_build_info.py) in a
# staging copy of the tree: robocache/_build_info.py never lands in the checkout.
build: $(STAMP)
	rm -rf dist
	$(PYTHON) tools/release_check.py --only build --allow-dirty

# Regenerate api/public_api.txt after changing the public API (see RELEASING.md).
api-listing: $(STAMP)
	$(PYTHON) tools/update_api_listing.py

# Everything a release must pass, stopping at the first problem (RELEASING.md). ALLOW_DIRTY=1
# accepts uncommitted changes for a trial run.
release-check: $(STAMP)
	$(PYTHON) tools/release_check.py $(if $(ALLOW_DIRTY),--allow-dirty)

demo: $(STAMP)
	$(PYTHON) -m robocache demo

clean:
	rm -rf $(VENV) .venv-zarr2 dist build .pytest_cache .ruff_cache benchmarks/out
