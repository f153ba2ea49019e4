"""Probe: where the eager block-scaled fp8 call's host time goes, piece by piece (M where the GPU is not the limit).

    python benchmarks/fp8_block_host_parts.py OUT.json

Why: an eager block-scaled call at M=64 takes ~50 µs of wall time a call on the H100 device host where the GPU needs
~15 (``results/fp8-block-host_*``); the M <= 16 path (one CUDA C++ launch) takes ~18. This times, back to back
(``fastvideo_quant.bench.host_us``), the layer's ``apply``, ``gemm.block_scaled_mm``, the group quantization alone,
``torch._scaled_mm`` alone with block scales (grid and per-row) and with row-wise scales, an empty allocation, and the
median CUDA-graph replay of ``apply`` (the GPU time). Each fast path is first checked against the reference on fresh inputs.
"""

from __future__ import annotations

import json
import sys

import torch
from fvq_fp8.kernels import act_quant_triton, gemm

from fastvideo_quant.bench import build_layer, environment, graph_median_ms, host_us, rel_err


def point(layer: torch.nn.Module, m: int) -> dict:
    """One (layer, M): the checks, then each piece's wall time per back-to-back call."""
    n, k = layer.weight.shape
    grid = layer.weight_scale_inv if layer.fp8_block_grid else None
    cols = layer.weight_scale_cols
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ layer.quant_method.dequantize_weight(layer).float().T
    err = rel_err(layer.quant_method.apply(layer, x), ref)
    if err > 4e-2:
        raise AssertionError(f"M={m} {k}x{n}: rel err {err}")
    xq, xs = act_quant_triton.per_group_quant(x, 128)
    rowq = xq.float().abs().amax(1, keepdim=True) / 448 + 1e-12  # (any row scales: timing only)
    wrow = torch.ones(1, n, device="cuda")
    gb = grid.t() if grid is not None and m * n >= gemm.BLOCK_GRID_MIN_OUTPUT else cols
    wt = layer.weight.t()
    return dict(
        K=k, N=n, M=m, rel_err=err,
        apply_us=host_us(lambda: layer.quant_method.apply(layer, x)),
        layer_us=host_us(lambda: layer(x)),
        block_scaled_mm_us=host_us(lambda: gemm.block_scaled_mm(x, layer.weight, cols, grid, None)),
        group_quant_us=host_us(lambda: act_quant_triton.per_group_quant(x, 128)),
        scaled_mm_block_us=host_us(lambda: torch._scaled_mm(xq, wt, scale_a=xs.t(), scale_b=gb, out_dtype=torch.bfloat16)),
        scaled_mm_rowwise_us=host_us(lambda: torch._scaled_mm(xq, wt, scale_a=rowq, scale_b=wrow, out_dtype=torch.bfloat16,
                                                              use_fast_accum=True)),
        empty_us=host_us(lambda: torch.empty((m, n), dtype=torch.bfloat16, device="cuda")),
        gpu_us=graph_median_ms(lambda: layer.quant_method.apply(layer, x)) * 1e3,
    )


def main(out: str) -> None:
    rows = []
    for k, n in [(5120, 5120), (13824, 5120)]:
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        layer = build_layer("fp8", w, {"quant_method": "fp8", "weight_block_size": [128, 128]})
        for m in (32, 64, 256, 1024):
            row = point(layer, m)
            print({a: (round(b, 1) if isinstance(b, float) else b) for a, b in row.items()}, flush=True)
            rows.append(row)
    with open(out, "w") as f:
        json.dump({"environment": environment(), "rows": rows}, f)


if __name__ == "__main__":
    main(sys.argv[1])
