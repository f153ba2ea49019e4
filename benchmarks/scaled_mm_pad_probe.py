# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""Probe: would padding M help where cuBLASLt's row-wise fp8 pick is slow (3072x12288 at M=288-384)?

    python benchmarks/scaled_mm_pad_probe.py [--out FILE.json]

At 3072x12288 ``_scaled_mm`` took 54.6 us at M=288 and 38.3 us at M=512 (``results/fp8-path-sweep_*``); the fp8
layer stays under bf16 at M=352 (0.90x) on either of its paths. If the GEMM ran on a buffer of P > M rows (the
quantization writing the first M, ``out[:M]`` returned), its time would be the padded GEMM's. Timed here, as CUDA
graphs: per-token quantization of M rows, ``_scaled_mm`` at M rows and at each P, bf16 at M. (The padded GEMM is timed
on a P-row buffer: its speed, not a correct result; the fix itself would need a P-row quantization buffer.)
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import environment, graph_median_ms
from fastvideo_quant.kernels.per_token_quant import per_token_quant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for K, N in ((3072, 12288), (5120, 5120)):
        w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.float8_e4m3fn)
        ws = torch.rand(1, N, device="cuda") * 1e-2
        wb = (w.float() * ws.reshape(-1, 1)).bfloat16()
        big = per_token_quant(torch.randn(512, K, device="cuda", dtype=torch.bfloat16), torch.float8_e4m3fn)
        for M in (288, 320, 352, 384, 416):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            row = dict(K=K, N=N, M=M, bf16=graph_median_ms(lambda: F.linear(x, wb), 5, 25),
                       quant=graph_median_ms(lambda: per_token_quant(x, torch.float8_e4m3fn), 5, 25))
            for P in sorted({M, 384, 416, 448, 512} - {p for p in (384, 416, 448) if p < M}):
                q, s = big[0][:P], big[1][:P]
                row[f"gemm_{P}"] = graph_median_ms(lambda q=q, s=s: torch._scaled_mm(
                    q, w.t(), scale_a=s, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True), 5, 25)
            rows.append(row)
            best = min((k for k in row if k.startswith("gemm_")), key=row.get)
            print(f"{K}x{N} M={M}: bf16 {row['bf16'] * 1e3:.1f} quant {row['quant'] * 1e3:.1f} | " + " ".join(
                f"{k[5:]}: {row[k] * 1e3:.1f}" for k in row if k.startswith("gemm_")) +
                f" | unpadded {row['bf16'] / (row['quant'] + row[f'gemm_{M}']):.2f}x, best pad ({best[5:]}) "
                f"{row['bf16'] / (row['quant'] + row[best]):.2f}x bf16", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f)


if __name__ == "__main__":
    main()
