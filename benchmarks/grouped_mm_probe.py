"""Probe: is torch's CUTLASS grouped fp8 GEMM, run as one group, faster than row-wise ``_scaled_mm``?

    python benchmarks/grouped_mm_probe.py --out DIR [--ms 256 416 1024 4096]

Why: at 5120x5120 M=1024 the fp8 path runs 1.31x bf16 on the H100 (issue 8 asks 1.4x). Row-wise ``_scaled_mm``
runs cuBLASLt's one algorithm for outer-vector scales (a JIT ``nvjet`` 128x128 kernel, 320 tiles on 132 SMs, ~4 µs
slower than the tensor-wise kernel at that shape); the fifteenth session found nothing else to choose through
cuBLASLt. ``torch._scaled_grouped_mm`` on sm90 is a different implementation (CUTLASS, persistent, its own tile
choice by shape) with the same row-wise scales: ``[1, M, K] x [1, K, N]`` with scales ``[1, M]`` and ``[1, N]`` is
the same product. If it runs faster at some M, the fp8 routes could take it there.

Each variant is checked against float32 math of the same fp8 operands (rel err) and bit for bit between two calls,
then timed as CUDA-graph replays (GPU time), bf16 ``F.linear`` and tensor-wise ``_scaled_mm`` (what the row scales
cost) in the same process. Writes ``grouped-mm-probe_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from scaled_mm_orient_probe import rowwise_operands  # (benchmarks/ is on the path when run as a script)

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, rel_err


def variants(x: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
             wb: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """The products to time: bf16, row-wise and tensor-wise ``_scaled_mm``, the grouped GEMM in two layouts."""
    bf = torch.bfloat16
    one = torch.ones((), device=x.device)
    offs = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int32)
    a3, b3 = xq.unsqueeze(0), wq.unsqueeze(0).transpose(1, 2)  # [1, M, K] row-major, [1, K, N] column-major
    sa3, sb3 = xs.reshape(1, -1), ws.reshape(1, -1)
    return {
        "bf16": lambda: F.linear(x, wb),
        "row": lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.reshape(1, -1), out_dtype=bf,
                                        use_fast_accum=True),
        "tensor": lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one, out_dtype=bf, use_fast_accum=True),
        "grouped3d": lambda: torch._scaled_grouped_mm(a3, b3, sa3, sb3, out_dtype=bf, use_fast_accum=True)[0],
        "grouped3d_slow": lambda: torch._scaled_grouped_mm(a3, b3, sa3, sb3, out_dtype=bf)[0],
        "grouped2d": lambda: torch._scaled_grouped_mm(xq, b3, xs.reshape(-1), sb3, offs=offs, out_dtype=bf,
                                                      use_fast_accum=True),
    }


def measure(M: int, K: int, N: int) -> dict:
    """Every variant at one point: its error (the tensor-wise one against its own unscaled product), GPU time."""
    x, xq, xs, wq, ws, exact, wb = rowwise_operands(M, K, N)
    row: dict = dict(K=K, N=N, M=M)
    for name, fn in variants(x, xq, xs, wq, ws, wb).items():
        try:
            first = fn()
            torch.cuda.synchronize()
        except (RuntimeError, TypeError, NotImplementedError) as e:  # a layout or arch this torch does not take
            row[name + "_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        ref = (xq.float() @ wq.float().T) if name == "tensor" else exact
        row[name + "_err"] = rel_err(first, ref)
        row[name + "_repeat_equal"] = bool(torch.equal(first, fn()))
        row[name] = graph_median_ms(fn, 5, 25)
    shown = [n for n in ("bf16", "row", "tensor", "grouped3d", "grouped3d_slow", "grouped2d") if n in row]
    print(f"M={M} {K}x{N}: " + " | ".join(
        f"{n} {row[n] * 1e3:.1f}us ({row['bf16'] / row[n]:.2f}x, err {row[n + '_err']:.1e})" for n in shown)
        + "".join(f" | {k}: {v}" for k, v in row.items() if k.endswith("_error")), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=[128, 256, 384, 416, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--rounds", type=int, default=2, help="the whole grid this many times (rows kept per round)")
    args = ap.parse_args()
    env = environment()
    rows = []
    for r in range(args.rounds):
        for M in args.ms:
            for K, N in DIT_SHAPES:
                rows.append(dict(measure(M, K, N), round=r))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    with open(out / f"grouped-mm-probe_{gpu}_{env['date']}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f)


if __name__ == "__main__":
    main()
