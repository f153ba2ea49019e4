#!/usr/bin/env bash
# Issue 6 on one host with N >= 2 GPUs: the TP tests over NCCL, then the DiT block at TP=1 and TP=N.
#   benchmarks/tp_gpu_check.sh OUT_DIR [N]
# 1. core TP tests (run_distributed picks NCCL when N GPUs are visible; each rank on its own GPU) and the
#    conformance suite's TP checks of every registered method, against their TP=1 results;
# 2. benchmarks/bench_tp_block.py under torchrun at TP=1 and TP=N (bf16 and each method), same machine.
set -u
out=${1:?usage: tp_gpu_check.sh OUT_DIR [N]}
n=${2:-2}
mkdir -p "$out"
nvidia-smi -L | tee "$out/gpus.txt"
python -m pytest -q -p no:cacheprovider tests/test_layers_tp.py tests/test_sharding_properties.py \
  tests/plugins -k "tp_layer or tp_column_row_pair or nccl or TP or layers_match or loading_agree or roundtrip" \
  2>&1 | tail -25 | tee "$out/tp_tests.log"
for tp in 1 "$n"; do
  for methods in "unquantized fp8 int8" "awq"; do  # awq apart: one method's failure must not hide the others
    # shellcheck disable=SC2086
    torchrun --standalone --nproc-per-node "$tp" benchmarks/bench_tp_block.py --methods $methods \
      --out "$out/tp$tp-${methods%% *}" 2>&1 | grep -v "^W\|^\[W" | tail -12 | tee -a "$out/tp_block.log"
  done
done
