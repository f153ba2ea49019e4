#!/usr/bin/env bash
# One single-GPU device call per stage; everything lands in OUT_DIR and one tarball OUT_DIR.tgz (the device returns
# few files: give an OUT_DIR outside $OUT and TGZ_DIR=$OUT to bring back the tarball alone).
#   benchmarks/gpu_check.sh OUT_DIR suite   # the whole test suite on the GPU, one line per test as it finishes,
#                                           # so a run cut off by the call's time limit still shows how far it got
#   benchmarks/gpu_check.sh OUT_DIR bench   # the shared harness for fp8, int8 and AWQ (bf16 timed in each run)
# Settings: SUITE_S (default 450 s: with 14 workers the H200 had run 1635 of 1688 tests at 300 s in the nineteenth
# session, the W8A8 autotuner trying 64-row tiles at small M; 1695 of 1702 at 520 s in the twentieth — the whole
# suite no longer fits one 600 s call: split it with SUITE_PATHS over two calls, e.g. "tests/kernels tests/plugins/fp8"
# and "tests/plugins/awq tests/plugins/int8 tests/plugins/unquantized tests/cli tests/testing tests/test_*.py"),
# SUITE_PATHS (what pytest collects, default "tests"), XDIST (pytest-xdist workers for the suite, default none),
# CUDA_ONLY=1 (pytest --cuda-only: the ~810 tests CPU CI skips for want of a GPU; not the tests that run on CPU
# and take the GPU when there is one — the conformance suites, the kernels' DEV tests — so not a full GPU run;
# CUDA_ONLY=rest, pytest --no-cuda-only, is those: the two calls with XDIST=15 are the whole suite, ~190 s and ~345 s
# on an H100 in the thirty-eighth session),
# BENCH_S (default 150 s per method), BENCH_METHODS (default "fp8 int8 awq"), BENCH_MS (default: the harness's Ms),
# BENCH_MS_<method> (that method's own M list), BENCH_ROUNDS (alternating rounds per point, default 1).
set -u
out=${1:?usage: gpu_check.sh OUT_DIR suite|bench}
stage=${2:?usage: gpu_check.sh OUT_DIR suite|bench}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python -c "import torch, triton; print('torch',
  torch.__version__, 'triton', triton.__version__)"; } > "$out/env.txt" 2>&1
case "$stage" in
  suite)
    xdist=()
    [ -n "${XDIST:-}" ] && xdist=(-n "$XDIST")
    [ "${CUDA_ONLY:-0}" = 1 ] && xdist+=(--cuda-only)  # only the tests CPU CI skips for want of a GPU (tests/conftest.py)
    [ "${CUDA_ONLY:-0}" = rest ] && xdist+=(--no-cuda-only)  # the complement: together the two are the whole suite
    # shellcheck disable=SC2206  # (split on spaces and expand globs such as tests/test_*.py: intended)
    paths=( ${SUITE_PATHS:-tests} )
    timeout "${SUITE_S:-450}" python -m pytest -v "${xdist[@]}" -p no:cacheprovider -rfE "${paths[@]}" > "$out/suite.log" 2>&1
    echo "pytest rc=$? (124: cut off by SUITE_S)" >> "$out/suite.log"
    grep -c "PASSED" "$out/suite.log" | sed 's/^/passed: /'; grep -E "FAILED|ERROR" "$out/suite.log" | head -20
    tail -3 "$out/suite.log"
    ;;
  bench)
    for m in ${BENCH_METHODS:-fp8 int8 awq}; do
      var="BENCH_MS_$m"
      list=${!var:-${BENCH_MS:-}}
      ms=()
      [ -n "$list" ] && read -r -a ms <<< "--m $list"
      timeout "${BENCH_S:-150}" python benchmarks/bench_linear.py --method "$m" "${ms[@]}" --rounds "${BENCH_ROUNDS:-1}" --out "$out/results" \
        > "$out/bench_$m.log" 2>&1
      echo "$m rc=$?"; grep -E "K=.*M=" "$out/bench_$m.log" | sed 's/ rel err.*//' | tail -24
    done
    ;;
  *) echo "unknown stage $stage (suite or bench)"; exit 2 ;;
esac
tar czf "${TGZ_DIR:-$(dirname "$out")}/$(basename "$out").tgz" -C "$out" .
