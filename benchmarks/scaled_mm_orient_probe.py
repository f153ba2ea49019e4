"""Probe: does cuBLASLt pick a faster row-wise fp8 GEMM for the transposed product at M=1024-4096?

    python benchmarks/scaled_mm_orient_probe.py --out DIR [--ms 1024 4096]

Why: at 5120x5120 M=1024 the fp8 path runs 1.33-1.37x bf16 (issue 8 asks 1.4x); torch's row-wise ``_scaled_mm``
runs cuBLASLt's 128x128 tiles there (the seventh session's profile), 320 output tiles on 132 SMs (2.4 waves).
``out^T = W @ xq^T`` is the same product with the roles swapped ([N, M] output, the weight as the left operand);
cuBLASLt's heuristic may choose another tile or cluster for it. The result is ``out^T.t()``, a column-major
view: a layer would have to return it as is (callers' ``.view`` would fail) or copy it (timed too).

Each variant is checked against float32 math of the same fp8 operands (rel err), then timed as CUDA-graph
replays (GPU time), bf16 ``F.linear`` in both orientations in the same process. Writes
``scaled-mm-orient_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, rel_err


def rowwise_operands(M: int, K: int, N: int) -> tuple[torch.Tensor, ...]:
    """Seeded bf16 ``x [M, K]`` and ``w [N, K]``, both quantized to fp8 per row: ``(x, xq, xs, wq, ws, exact, wb)``,
    ``exact`` the float32 product of the scaled fp8 operands, ``wb`` the de-quantized weight in bf16 (bf16's operand)."""
    fp8 = torch.float8_e4m3fn
    torch.manual_seed(M + K + N)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5
    ws = w.float().abs().amax(1, keepdim=True) / 448
    xs = x.float().abs().amax(1, keepdim=True) / 448
    wq = (w.float() / ws).to(fp8)
    xq = (x.float() / xs).to(fp8)
    exact = (xq.float() * xs) @ (wq.float() * ws).T
    return x, xq, xs, wq, ws, exact, (wq.float() * ws).to(torch.bfloat16)


def measure(M: int, K: int, N: int) -> dict:
    """Every variant at one point: rel err against float32 math of the same fp8 operands, GPU time as a graph."""
    x, xq, xs, wq, ws, exact, wb = rowwise_operands(M, K, N)

    def fp8_t():
        return torch._scaled_mm(wq, xq.t(), scale_a=ws, scale_b=xs.reshape(1, -1), out_dtype=torch.bfloat16,
                                use_fast_accum=True).t()

    variants = {
        "bf16": lambda: F.linear(x, wb),
        "bf16_t": lambda: F.linear(wb, x).t(),
        "fp8": lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.reshape(1, -1),
                                        out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8_t": fp8_t,
        "fp8_t_copy": lambda: fp8_t().contiguous(),
    }
    row = dict(K=K, N=N, M=M)
    for name, fn in variants.items():
        row[name + "_err"] = rel_err(fn(), exact)
        row[name] = graph_median_ms(fn, 5, 25)
    print(f"M={M} {K}x{N}: " + " | ".join(
        f"{n} {row[n] * 1e3:.1f}us ({row['bf16'] / row[n]:.2f}x, err {row[n + '_err']:.1e})" for n in variants),
        flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=[1024, 4096])
    args = ap.parse_args()
    env = environment()
    rows = []
    for M in args.ms:
        for K, N in DIT_SHAPES:
            rows.append(measure(M, K, N))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    with open(out / f"scaled-mm-orient_{gpu}_{env['date']}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f)


if __name__ == "__main__":
    main()
