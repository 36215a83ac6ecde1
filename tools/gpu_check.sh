#!/usr/bin/env bash
# `make gpu-check`: the GPU tests, the quick benchmarks and a memcheck of the kernels, with the
# machine's own python3 and this source tree on PYTHONPATH (the GPU machines install nothing).
#
#   tools/gpu_check.sh [LOGDIR]      logs + benchmarks JSON go to LOGDIR (default benchmarks/out)
#
# Every stage runs under its own time limit and the later ones run even when an earlier one
# fails, so one broken test never hides the benchmark figures. Exit status: 0 only when the
# tests, the benchmarks and the memcheck all passed (a missing compute-sanitizer is not a failure).
set -u
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}
LOG=${1:-benchmarks/out}
mkdir -p "$LOG"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

echo "## machine"
date -u +%Y-%m-%dT%H:%M:%SZ
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
  2>&1 || true
$PY -m robocache info 2>&1 | tee "$LOG/gpu-info.log"

echo "## GPU tests"
timeout_opt=()
$PY -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout 120)
timeout 200 $PY -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short "${timeout_opt[@]}" \
  tests 2>&1 | tee "$LOG/gpu-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(tests)

echo "## benchmarks (quick)"
timeout 200 $PY benchmarks/run_all.py --quick --skip load --json "$LOG/gpu-check.json" 2>&1 \
  | tee "$LOG/gpu-bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(benchmarks)

# The load targets are about bandwidth: only the full size (~1 GB of features) measures it.
echo "## load benchmark (full size)"
timeout 180 $PY benchmarks/bench_load.py --json "$LOG/load.json" 2>&1 | tee "$LOG/load.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(load)

# memcheck: every kernel through the selftest and the loader/image-dataset GPU tests, with the
# CuPy and torch memory pools off so that an out-of-bounds access leaves its allocation.
echo "## compute-sanitizer memcheck"
if command -v compute-sanitizer >/dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 100 compute-sanitizer --tool memcheck \
    --error-exitcode 3 $PY -c "
import sys, cupy, pytest
cupy.cuda.set_allocator(None)
cupy.cuda.set_pinned_memory_allocator(None)
from robocache import selftest
rc1 = selftest.main()
rc2 = pytest.main(['-q', '-m', 'gpu', '-p', 'no:cacheprovider',
                   'tests/test_windows_cuda.py', 'tests/test_dataset_images.py'])
sys.exit(rc1 or int(rc2))" > "$LOG/memcheck.log" 2>&1
  rc=$?
  tail -n 25 "$LOG/memcheck.log"
  [ "$rc" -eq 0 ] || failed+=("memcheck(rc=$rc)")
else
  echo "compute-sanitizer not found: memcheck skipped"
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu-check FAILED: ${failed[*]}"
  exit 1
fi
echo "gpu-check passed"
