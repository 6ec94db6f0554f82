#!/usr/bin/env bash
# One-command GPU check of the Triton backend: the CUDA test suite, then the SPEC section 7
# benchmark table. For a machine with an NVIDIA GPU and this repository; nothing needs to
# be installed (the repository goes on PYTHONPATH; the C++ extension is not needed).
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Writes into OUTDIR, in this order: env.txt (GPU, driver, versions), pytest.log,
# compile_check.json, finetune_cuda.json + finetune_cuda.log (benchmarks/bench_finetune_step.py),
# bench.md + bench.json + profile.txt (benchmarks/gpu_bench.py), bench.log, launch_cost.json
# + launch_cost.log (benchmarks/gpu_launch_cost.py), count_calls.json + count_calls.log
# (benchmarks/count_calls.py), summary.txt.
# Took 3.5 minutes on an H200 without the fine-tuning step; each step runs under a time
# limit (PYTEST_LIMIT, FINETUNE_LIMIT, BENCH_LIMIT seconds, 240, 150 and 200 by default;
# 120 for the launch cost, 60 for the call count).
#
# Exit status: 0 when the tests passed and the benchmark ran; 1 when a test failed or
# the benchmark failed; 2 without a usable CUDA device (a message says so, nothing is
# checked: this script is not a CPU test; the CPU suite is plain `pytest`).
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
PYTEST_LIMIT=${PYTEST_LIMIT:-240}
BENCH_LIMIT=${BENCH_LIMIT:-200}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
unset TRITON_INTERPRET

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    msg="gpu_check: no CUDA device is visible to torch ($PY); nothing was checked. Run this on a machine with an NVIDIA GPU."
    echo "$msg" | tee "$OUT/summary.txt"
    exit 2
fi
export ADAPTIR_TEST_DEVICE=cuda
export ADAPTIR_COMPILE_JSON="$OUT/compile_check.json"

{
    nvidia-smi 2>&1 | head -20
    "$PY" - <<'EOF'
import platform, torch, triton
p = torch.cuda.get_device_properties(0)
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
      f"CUDA {torch.version.cuda}")
print(f"{p.name}: {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. Tests on CUDA: the Triton-specific files and every per-operator / module parity test.
TESTS=""
for f in tests/test_triton_ops.py tests/test_triton_compile.py tests/test_project_in.py tests/test_local_branch.py \
         tests/test_global_branch.py tests/test_combine_out.py tests/test_router.py tests/test_spectral_gate.py tests/test_spectrum.py \
         tests/test_module.py; do
    [ -f "$f" ] && TESTS="$TESTS $f"
done
PYTEST_ARGS="-q -rs -p no:cacheprovider"
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS="$PYTEST_ARGS --timeout=150"
echo "== pytest on CUDA:$TESTS"
set -o pipefail
timeout "$PYTEST_LIMIT" "$PY" -m pytest $PYTEST_ARGS $TESTS 2>&1 | tee "$OUT/pytest.log"
test_rc=$?
[ $test_rc -eq 124 ] && echo "gpu_check: pytest stopped after ${PYTEST_LIMIT}s" | tee -a "$OUT/pytest.log"

# 2. One EDT-B fine-tuning step: no adapters, eager adapters, fused adapters (before the
#    table: no other step measures it).
echo "== fine-tuning step"
timeout "${FINETUNE_LIMIT:-150}" "$PY" benchmarks/bench_finetune_step.py --device cuda --batch-size 16 --repeats 10 \
    --json "$OUT/finetune_cuda.json" 2>&1 | tee "$OUT/finetune_cuda.log"
finetune_rc=$?

# 3. The benchmark table.
echo "== benchmark"
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu_bench.py --out "$OUT" --sweep --sweep-budget 40 --compile-only edt-train ipt-train 2>&1 | tee "$OUT/bench.log"
bench_rc=$?
[ $bench_rc -eq 124 ] && echo "gpu_check: benchmark stopped after ${BENCH_LIMIT}s (partial results in bench.md)" \
    | tee -a "$OUT/bench.log"

# 4. The host's cost per launch, and the calls one fused step issues, to read the table against.
echo "== launch cost"
timeout 120 "$PY" benchmarks/gpu_launch_cost.py --out "$OUT" 2>&1 | tee "$OUT/launch_cost.log"
echo "== calls issued by one fused forward+backward"
timeout 60 "$PY" benchmarks/count_calls.py --device cuda --shape 16,48,48,180 --json "$OUT/count_calls.json" 2>&1 \
    | tee "$OUT/count_calls.log"

{
    echo "pytest exit status: $test_rc ($(tail -1 "$OUT/pytest.log"))"
    echo "fine-tuning step exit status: $finetune_rc"
    echo "benchmark exit status: $bench_rc"
} | tee "$OUT/summary.txt"
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ] && exit 0
exit 1
