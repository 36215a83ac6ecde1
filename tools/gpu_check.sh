#!/usr/bin/env bash
# `make gpu-check`: the GPU tests, the quick benchmarks and a memcheck of the kernels, with the
# machine's own python3 and this source tree on PYTHONPATH (the GPU machines install nothing).
#
#   tools/gpu_check.sh [LOGDIR]      logs + benchmarks JSON go to LOGDIR (default benchmarks/out)
#
# STAGES="tests bench load memcheck" (the default; spaces or commas) picks the stages to run,
# BENCH_ONLY=a,b the quick benchmarks (run_all.py --only): a rerun of one part costs less device
# time. An unknown stage or benchmark name is an error, not a run that does nothing.
#
# Every stage runs under its own time limit, cut to what is left of BUDGET_S (default 450 s,
# under the device tool's per-call limit with room for its start), and the later ones run even
# when an earlier one fails, so one broken test never hides the benchmark figures. A stage
# stopped by its limit still writes the JSON rows it finished. Exit status: 0 only when every
# stage run passed (a missing compute-sanitizer is not a failure).
set -u
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}
LOG=${1:-benchmarks/out}
mkdir -p "$LOG"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()
ALL_STAGES="tests bench load memcheck"
STAGES=${STAGES-$ALL_STAGES}
STAGES=$(echo ${STAGES//,/ })  # commas, tabs, runs of spaces: one space between names
[ -n "$STAGES" ] || { echo "STAGES: no stage named; expected some of: $ALL_STAGES" >&2; exit 2; }
for s in $STAGES; do
  [[ " $ALL_STAGES " == *" $s "* ]] || {
    echo "STAGES: unknown stage '$s'; expected some of: $ALL_STAGES" >&2; exit 2; }
done
want() { [[ " $STAGES " == *" $1 "* ]]; }
BUDGET_S=${BUDGET_S:-450}
START_S=$SECONDS
# limit CAP LATER...: the stage's own cap, cut to the budget left less 30 s for each of the
# wanted LATER stages (so that each of them still runs)
limit() {
  local cap=$1 keep=0 s
  shift
  for s in "$@"; do want "$s" && keep=$((keep + 30)); done
  local left=$((BUDGET_S - (SECONDS - START_S) - keep))
  [ "$left" -lt "$cap" ] && echo "$left" || echo "$cap"
}
# stage_ok NAME LIMIT: whether there is time for it (else it counts as failed)
stage_ok() {
  [ "$2" -ge 20 ] && return 0
  echo "$1: skipped, ${2} s left of BUDGET_S=$BUDGET_S"
  failed+=("$1(no time left)")
  return 1
}
stage_done() { echo "($1: $((SECONDS - $2)) s; $((SECONDS - START_S)) s of $BUDGET_S used)"; }

echo "## machine"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    2>&1 || true
} | tee "$LOG/machine.log"
timeout 60 $PY -m robocache info 2>&1 | tee "$LOG/gpu-info.log"

if want tests; then
  echo "## GPU tests"
  timeout_opt=()
  $PY -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout 120)
  t0=$SECONDS lim=$(limit 150 bench load memcheck)
  if stage_ok tests "$lim"; then
    timeout -k 15 "$lim" $PY -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short \
      "${timeout_opt[@]}" tests 2>&1 | tee "$LOG/gpu-tests.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(tests)
    stage_done tests "$t0"
  fi
fi

if want bench; then
  echo "## benchmarks (quick)"
  only=()
  [ -n "${BENCH_ONLY:-}" ] && only=(--only "$BENCH_ONLY")
  t0=$SECONDS lim=$(limit 130 load memcheck)
  if stage_ok benchmarks "$lim"; then
    timeout -k 15 "$lim" $PY benchmarks/run_all.py --quick --skip load "${only[@]}" \
      --json "$LOG/gpu-check.json" 2>&1 | tee "$LOG/gpu-bench.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(benchmarks)
    stage_done benchmarks "$t0"
  fi
fi

# The load targets are about bandwidth: only the full size (~1 GB of features) measures it.
if want load; then
  echo "## load benchmark (full size)"
  t0=$SECONDS lim=$(limit 150 memcheck)
  if stage_ok load "$lim"; then
    timeout -k 15 "$lim" $PY benchmarks/bench_load.py --json "$LOG/load.json" 2>&1 \
      | tee "$LOG/load.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(load)
    stage_done load "$t0"
  fi
fi

# memcheck: every kernel through the selftest and the loader/image-dataset GPU tests, with the
# CuPy and torch memory pools off so that an out-of-bounds access leaves its allocation.
if want memcheck; then
  echo "## compute-sanitizer memcheck"
  t0=$SECONDS lim=$(limit 90)
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer not found: memcheck skipped"
  elif stage_ok memcheck "$lim"; then
    # --report-api-errors no: cuda-python's driver bindings (the default launcher) probe the
    # driver's entry points with cuGetProcAddress on first use, and the refused probes would
    # count as errors; launch errors still raise in the launcher, memory errors still count.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 15 "$lim" compute-sanitizer --tool memcheck \
      --report-api-errors no --error-exitcode 3 $PY -c "
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
    stage_done memcheck "$t0"
  fi
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu-check FAILED: ${failed[*]}"
  exit 1
fi
echo "gpu-check passed"
