#!/usr/bin/env bash
# The zarr reader under zarr-python 2, the version diffusion_policy's own environment pins
# (zarr 2.x + numcodecs): tests/test_formats_zarr.py in a small virtual environment of its own
# (.venv-zarr2: numpy, zarr 2.16 - the [formats] lower bound -, numcodecs before 0.15 - what
# Python 3.10 gets, without numcodecs.errors -, imagecodecs, pytest; no torch), the source tree
# on PYTHONPATH.
# `make test` runs it after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${ZARR2_VENV:-.venv-zarr2}
STAMP="$VENV/.installed-zarr216-numcodecs014"
if [ ! -f "$STAMP" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "numpy>=1.24" "zarr>=2.16,<2.17" "numcodecs<0.15" imagecodecs \
    pytest
  touch "$STAMP"
fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_formats_zarr.py "$@"
