"""The AWQ route for M = 17-256 on shapes the tuning table does not hold, and with groups of 64 / 32: what the rules
pick against each route forced, bf16 ``F.linear`` of the same shape in the same run.

    python benchmarks/awq_mid_m_rule.py OUT.json

Layers of random kernel tensors (the bits do not change the time): a row-parallel rank's half of a GPTQ act-order
layer (K' padded, kernel groups of 32, as ``fvq_awq.act_order`` makes them at TP=2 on the DiT shapes), contiguous
layers at group 128 off the table, and groups of 64. Routes: ``rule`` (the dispatcher's pick,
``dispatch._route``), ``gemm`` (the fused ``awq_gemm`` at 64x128 tiles, the fallback rule for M <= 256 before
2026-12-06), ``gemm_t_mid`` (``dispatch._default_mid``'s tile, where the steps are packed), ``dequant`` (de-quantize
then cuBLAS). Each is first checked against float32 math of the layer's de-quantized weight on fresh random inputs;
then CUDA-graph medians (``fastvideo_quant.bench``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import environment, graph_median_ms, rel_err

#: (K, N, group, what it is)
LAYERS = [
    (3200, 5120, 32, "row half of 5120x5120 act order"),
    (3200, 13824, 32, "row half of 5120x13824 act order"),
    (8704, 5120, 32, "row half of 13824x5120 act order"),
    (1920, 12288, 32, "row half of 3072x12288 act order"),
    (2560, 5120, 128, "row half of 5120x5120, contiguous"),
    (6912, 5120, 128, "row half of 13824x5120, contiguous"),
    (4096, 4096, 128, "4096x4096"),
    (4096, 11008, 128, "4096x11008"),
    (5120, 5120, 64, "5120x5120 group 64"),
    (4096, 4096, 32, "4096x4096 group 32"),
    (4160, 4096, 64, "inputs not in whole 128s (bk8 8)"),
]
MS = [32, 64, 96, 128, 160, 192, 256]


def _tensors(k: int, n: int, group: int):
    from fvq_awq.layout import KernelLayout, choose_bk8, kernel_words

    layout = KernelLayout(k, n, group, choose_bk8(k, group))
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    words = kernel_words(layout, lambda a, b: codes[a:b], torch.device("cuda"))
    zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(n, k // group, device="cuda") * 0.02 + 1e-3).half()
    return words, zeros, scales, layout


def _routes(m: int, x: torch.Tensor, qw, z, s, layout) -> tuple[dict, Callable, dict]:
    """``{route: call}`` for one layer and M, and the dispatcher's pick (its wrapper and keywords)."""
    from fvq_awq.kernels import dispatch
    from fvq_awq.kernels.common import blocks_per_step
    from fvq_awq.kernels.gemm import awq_gemm, awq_gemm_t

    k, n = layout.in_features, layout.out_features
    fn, cfg = dispatch._route(m, layout, False, dispatch._TABLE_PATH, torch.cuda.current_device())
    routes = {
        "rule": lambda: fn(x, qw, z, s, layout, None, **cfg),
        "dequant": lambda: dispatch._dequant_linear(x, qw, z, s, layout, None, block_n=32, r=2),
    }
    if blocks_per_step(layout, 1) * layout.bk8 >= 16:  # (the fused GEMM's dot needs a K-extent of 16)
        routes["gemm"] = lambda: awq_gemm(x, qw, z, s, layout, None, block_m=64, block_n=128, split_k=1, r=1,
                                          num_warps=4, num_stages=3)
    if dispatch.packed_steps(k, layout.group):
        mid = {key: v for key, v in dispatch._default_mid(min(m, 128), k, n, 132).items() if key != "kind"}
        routes["gemm_t_mid"] = lambda: awq_gemm_t(x, qw, z, s, layout, None, **mid)
    return routes, fn, cfg


def main(out: str) -> None:
    from fvq_awq.layout import dequantize_kernel

    rows = []
    for k, n, group, what in LAYERS:
        qw, z, s, layout = _tensors(k, n, group)
        w_ref = dequantize_kernel(qw, z, s, layout)
        w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            routes, fn, cfg = _routes(m, x, qw, z, s, layout)
            ref = x.float() @ w_ref.T
            row = dict(K=k, N=n, group=group, what=what, M=m, rule_fn=getattr(fn, "__name__", str(fn)),
                       rule_cfg={key: v for key, v in cfg.items() if key != "fallback"},
                       bf16_us=graph_median_ms(functools.partial(F.linear, x, w_bf16)) * 1e3)
            for name, route in routes.items():
                err = rel_err(route(), ref)
                if err > 1e-2:
                    raise AssertionError(f"{what} M={m} {name}: rel err {err} against float32 math")
                row[f"{name}_us"] = graph_median_ms(route) * 1e3
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        json.dump({"env": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
