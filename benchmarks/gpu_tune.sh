#!/usr/bin/env bash
# One device call: the changed kernels' tests on the GPU, the AWQ sweep (writes a dispatch table), optionally the
# small-M 8-bit sweep, then the shared harness for every method with that table (gpu_check.sh bench). Everything
# under OUT_DIR.
#   benchmarks/gpu_tune.sh OUT_DIR
# Settings: AWQ_MS (default "1 16 4"), AWQ_BUDGET_S (default 240), SMALL_M=1 (run the small-M sweep),
# and gpu_check.sh's bench settings (BENCH_S, BENCH_MS, BENCH_MS_<method>).
set -u
out=${1:?usage: gpu_tune.sh OUT_DIR}
mkdir -p "$out"
python -m pytest -q -p no:cacheprovider -n 8 tests/plugins/awq/test_kernels.py tests/kernels/test_small_m.py 2>&1 | tail -2
# shellcheck disable=SC2086
timeout $(( ${AWQ_BUDGET_S:-240} + 80 )) python benchmarks/awq_sweep.py --ms ${AWQ_MS:-1 16 4} \
  --budget-s "${AWQ_BUDGET_S:-240}" --base plugins/fvq_awq/kernels/tuning.json --out "$out/awq_sweep.json" \
  --tuning "$out/tuning.json" > "$out/awq_sweep.log" 2>&1
grep -E "^K=|dispatch|done|copy" "$out/awq_sweep.log"
if [ -n "${SMALL_M:-}" ]; then
  timeout 100 python benchmarks/bench_small_m_sweep.py --out "$out" --cases fp8:1 fp8:16 int8:16 --budget-s 70 \
    > "$out/small_m_sweep.log" 2>&1
  grep -E "x[0-9]+: |M=" "$out/small_m_sweep.log"
fi
FVQ_AWQ_TUNING="$out/tuning.json" BENCH_METHODS="awq fp8 int8" TGZ_DIR="$out" bash benchmarks/gpu_check.sh "$out/bench" bench
