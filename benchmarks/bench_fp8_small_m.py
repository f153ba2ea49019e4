"""fp8 at small M on a GPU: W8A16 kernel vs W8A8 (quant + ``_scaled_mm``), and host time per call.

    python benchmarks/bench_fp8_small_m.py --out results.json

1. per DiT shape and M: the W8A16 kernel and the W8A8 path, checked against float32 math of the
   de-quantized weight on fresh inputs, then timed (``do_bench`` median, eager and CUDA-graph replay),
   bf16 ``F.linear`` in the same run; prints ``W8A16_MAX_M=<m>``: the largest M where W8A16's
   graph time beats W8A8's on every shape (the crossover ``gemm.W8A16_MAX_M`` is set from);
2. host time per call at M=1 (wall time of 300 back-to-back calls of a 5120x5120 layer, GPU never
   the bottleneck): bf16, each component, fp8 apply on both paths, direct launch on and off, int8 apply.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, _median_ms, build_layer, environment, rel_err

MS = [1, 16, 32, 64, 128, 256]


def _graph_ms(fn) -> float:
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _median_ms(graph.replay)


def crossover(log) -> tuple[list[dict], int]:
    from fvq_fp8.kernels import gemm
    from fvq_fp8.kernels.w8a16_triton import w8a16_linear

    rows, best = [], {}
    for K, N in DIT_SHAPES:
        w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
        layer = build_layer("fp8", w)
        dq = layer.quant_method.dequantize_weight(layer)
        for M in MS:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)

            def w8a16(x=x, layer=layer):
                return w8a16_linear(x, layer.weight, layer.weight_scale, None)

            def w8a8(x=x, layer=layer):
                return gemm.fp8_linear(x, layer.weight, layer.weight_scale, layer.weight_scale_scalar, None, None)

            saved, gemm.W8A16_MAX_M = gemm.W8A16_MAX_M, 0
            try:
                ref = x.float() @ dq.T
                row = dict(K=K, N=N, M=M, err_w8a16=rel_err(w8a16(), ref), err_w8a8=rel_err(w8a8(), ref),
                           bf16=_median_ms(lambda x=x, w=w: F.linear(x, w)), w8a16=_median_ms(w8a16), w8a8=_median_ms(w8a8),
                           bf16_graph=_graph_ms(lambda x=x, w=w: F.linear(x, w)), w8a16_graph=_graph_ms(w8a16),
                           w8a8_graph=_graph_ms(w8a8))
            finally:
                gemm.W8A16_MAX_M = saved
            if row["err_w8a16"] > 1e-2:
                raise RuntimeError(f"W8A16 kernel wrong: {row}")
            rows.append(row)
            best.setdefault(M, True)
            best[M] &= row["w8a16_graph"] <= row["w8a8_graph"]
            log(json.dumps(row))
        del layer, w, dq
        torch.cuda.empty_cache()
    # The largest M at which W8A16 wins on every shape (M=1 can be a near-tie in graph time).
    threshold = max((m for m in MS if best[m]), default=0)
    return rows, threshold


def _host_us(fn, calls: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def host_times(log) -> dict:
    from fvq_fp8.kernels import act_quant_triton, gemm, launch
    from fvq_fp8.kernels.w8a16_triton import w8a16_linear
    from fvq_int8.kernels import launch as int8_launch

    K = N = 5120
    w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    fp8 = build_layer("fp8", w)
    int8 = build_layer("int8", w, {"fvq_backend": "triton"})
    xq, xs = act_quant_triton.per_token_quant(x)
    out: dict[str, float] = {}

    def apply_w8a8():
        saved, gemm.W8A16_MAX_M = gemm.W8A16_MAX_M, 0
        fp8.quant_method.apply(fp8, x)
        gemm.W8A16_MAX_M = saved

    for direct in (True, False):
        launch.DIRECT = int8_launch.DIRECT = direct
        tag = "direct" if direct else "jit"
        out[f"per_token_quant_{tag}"] = _host_us(lambda: act_quant_triton.per_token_quant(x))
        out[f"w8a16_kernel_{tag}"] = _host_us(lambda: w8a16_linear(x, fp8.weight, fp8.weight_scale, None))
        out[f"fp8_apply_w8a16_{tag}"] = _host_us(lambda: fp8.quant_method.apply(fp8, x))
        out[f"fp8_apply_w8a8_{tag}"] = _host_us(apply_w8a8)
        out[f"int8_apply_{tag}"] = _host_us(lambda: int8.quant_method.apply(int8, x))
    launch.DIRECT = int8_launch.DIRECT = True
    out["bf16_linear"] = _host_us(lambda: F.linear(x, w))
    out["scaled_mm_rowwise"] = _host_us(lambda: torch._scaled_mm(xq, fp8.weight.t(), scale_a=xs, scale_b=fp8.weight_scale,
                                                                 out_dtype=torch.bfloat16, use_fast_accum=True))
    out["torch_empty"] = _host_us(lambda: torch.empty((1, K), dtype=torch.bfloat16, device="cuda"))
    log(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-crossover", action="store_true")
    args = ap.parse_args()
    log = print
    host = host_times(log)
    rows, threshold = ([], None) if args.skip_crossover else crossover(log)
    print(f"W8A16_MAX_M={threshold}")
    with open(args.out, "w") as f:
        json.dump({"environment": environment(), "host_us_m1_5120x5120": host, "crossover": rows,
                   "w8a16_max_m": threshold}, f, indent=1)


if __name__ == "__main__":
    main()
