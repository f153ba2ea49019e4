"""fp8 over a fine grid of M: each GPU path the plugin can take, the shipped choice, and bf16 — where are the
crossovers, and is the shipped path ever slower than bf16?

    python benchmarks/fp8_m_sweep.py --out DIR [--ms 1 2 4 ... 4096] [--budget-s 420]

Why: the harness times M = 1, 16, 128, 1024, 4096, 32768; the plugin switches paths at M = 32 (W8A16 small-M
kernel → per-token quantization + Triton W8A8 GEMM) and M = 256 (→ row-wise ``torch._scaled_mm``), and the second
cut-off was never measured (``TRITON_GEMM_MAX_M``: "the crossover lies between 128 and 1024"). Issue 8 asks
"never slower than bf16 anywhere", which the harness's M grid cannot show.

Paths (dynamic per-token activations, per-channel weight scales, bf16 in and out):
``small`` the W8A16 kernel (up to M=128), ``triton`` per-token quantization + the core W8A8 GEMM, ``cublas``
per-token quantization + row-wise ``_scaled_mm``, ``shipped`` the fp8 layer (whichever the plugin picks).
Each is checked against float32 math of the de-quantized weight (rel err <= 4e-2: W8A8 quantizes activations)
before it is timed as a CUDA-graph replay (GPU time); bf16 and shipped are also timed eagerly. Writes
``fp8-m-sweep_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms, host_us, median_ms, rel_err

DEFAULT_MS = [1, 4, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048, 4096]


def paths(layer, M: int) -> dict:
    from fvq_fp8.kernels import gemm

    w, s_row = layer.weight, layer.weight_scale  # fp8 [N, K], float32 [1, N]

    def cublas(x):
        xq, xs = gemm.quantize_activation(x, None)
        return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s_row, out_dtype=x.dtype, use_fast_accum=True)

    out = {"shipped": lambda x: layer(x)[0],
           "triton": lambda x: gemm.triton_w8a8_linear(x, w, s_row, None, x.dtype),
           "cublas": cublas}
    if M <= 128:
        out["small"] = lambda x: gemm.w8a16_linear(x, w, s_row, None)
    return out


def measure(M: int, K: int, N: int, layer, wb: torch.Tensor, dq: torch.Tensor, b2b: bool) -> dict:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    exact = x.float() @ dq.T
    row = dict(K=K, N=N, M=M, bf16=median_ms(lambda: F.linear(x, wb), 5, 25),
               bf16_graph=graph_median_ms(lambda: F.linear(x, wb), 5, 25))
    if b2b:
        row["bf16_b2b"] = host_us(lambda: F.linear(x, wb), 200) / 1e3
    for name, fn in paths(layer, M).items():
        err = rel_err(fn(x), exact)
        row[name + "_err"] = err
        if err > 4e-2:
            print(f"WRONG M={M} {K}x{N} {name}: rel err {err:.3e}", flush=True)
            continue
        row[name + "_graph"] = graph_median_ms(lambda fn=fn: fn(x), 5, 25)
        if b2b:  # host time per call: back-to-back eager calls timed before the final sync (bench.host_us)
            row[name + "_b2b"] = host_us(lambda fn=fn: fn(x), 200) / 1e3
    row["shipped"] = median_ms(lambda: layer(x)[0], 5, 25)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=DEFAULT_MS)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--b2b", action="store_true", help="also measure host µs per call (bench.host_us)")
    ap.add_argument("--shapes", nargs="+", default=None, help="KxN shapes (default: the four DiT shapes)")
    args = ap.parse_args()
    t0 = time.time()
    env = environment()
    rows = []
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes] if args.shapes else DIT_SHAPES
    for K, N in shapes:
        torch.manual_seed(K + N)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5
        layer = build_layer("fp8", w)
        dq = layer.weight.float() * layer.weight_scale.reshape(-1, 1)
        wb = dq.to(torch.bfloat16)
        for M in args.ms:
            if time.time() - t0 > args.budget_s:
                print(f"budget spent: skipped {K}x{N} M={M} and after", flush=True)
                break
            r = measure(M, K, N, layer, wb, dq, args.b2b)
            rows.append(r)
            ratios = " ".join(f"{p} {r['bf16_graph'] / r[p + '_graph']:.2f}" for p in ("small", "triton", "cublas",
                                                                                    "shipped") if p + "_graph" in r)
            b2b = " | host us/call: " + " ".join(
                f"{p} {r[p + '_b2b'] * 1e3:.0f}" for p in ("bf16", "small", "triton", "cublas", "shipped")
                if p + "_b2b" in r) if args.b2b else ""
            print(f"{K}x{N} M={M}: bf16 {r['bf16_graph'] * 1e3:.1f}us | graph x bf16: {ratios} | shipped eager "
                  f"{r['bf16'] / r['shipped']:.2f}{b2b} [{time.time() - t0:.0f}s]", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    with open(out / f"fp8-m-sweep_{gpu}_{env['date']}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f)


if __name__ == "__main__":
    main()
