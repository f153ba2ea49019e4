"""Probe: host time of an eager block-scaled fp8 call, through the layer against through the custom op.

    python benchmarks/fp8_block_host.py OUT.json

Why: eager calls of the block route went through ``fvq_fp8::block_scaled_mm`` and, inside it,
``fvq_fp8::per_group_quant`` — torch custom ops, whose dispatch costs host time on every call. The layer now calls
the Python functions (and the Triton kernel) directly when not compiling, as the per-channel paths do; the ops stay
for ``torch.compile``. Each point first checks that both give the same bits, then times back-to-back calls
(``fastvideo_quant.bench.host_us``: wall time per call, GPU-bound where the GPU time is the larger).

``results/fp8-block-host_nvidia-h100-80gb-hbm3_2026-12-05.json`` was written by an earlier version that saved the rows
alone (no environment): H100 80GB HBM3, torch 2.11.0+cu130, the device image of that session's other runs.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from fvq_fp8.kernels import ops

from fastvideo_quant.bench import build_layer, environment, host_us, rel_err


def main(out: str) -> None:
    rows = []
    for k, n in [(5120, 5120), (13824, 5120)]:
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        layer = build_layer("fp8", w, {"quant_method": "fp8", "weight_block_size": [128, 128]})
        grid = layer.weight_scale_inv if layer.fp8_block_grid else None
        for m in (1, 16, 64, 1024):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            via_layer = layer.quant_method.apply(layer, x)
            via_op = ops.block_scaled_mm(x, layer.weight, layer.weight_scale_cols, grid, None)
            if not torch.equal(via_layer, via_op):
                raise AssertionError(f"M={m} {k}x{n}: layer and op differ (rel err {rel_err(via_layer, via_op.float())})")
            row = dict(K=k, N=n, M=m,
                       layer_us=host_us(lambda x=x, lay=layer: lay.quant_method.apply(lay, x)),
                       op_us=host_us(lambda x=x, lay=layer, g=grid: ops.block_scaled_mm(x, lay.weight,
                                                                                        lay.weight_scale_cols, g, None)),
                       bf16_us=host_us(lambda x=x, w=w: F.linear(x, w)))
            print(row, flush=True)
            rows.append(row)
    with open(out, "w") as f:
        json.dump({"environment": environment(), "rows": rows}, f)


if __name__ == "__main__":
    main(sys.argv[1])
