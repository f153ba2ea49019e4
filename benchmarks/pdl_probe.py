# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""Programmatic dependent launch and L2 prefetch in the W8A8 pair (quantization kernel + GEMM): A/B per shape.

    python benchmarks/pdl_probe.py [--m 128 256 1024] [--dtypes fp8 int8] [--out FILE.json]

Why (seventh session, H200): fp8 5120x5120 at M=128 reads 1.09-1.17x bf16 (target 1.2x). Its two kernels — the
per-token quantization (~5 µs of which most is launch, ramp and tail) and the W8A8 GEMM — run back to back, and the
GEMM streams a weight that does not depend on the first kernel (``kernels/prefetch.py``). Variants of the planned
call (``kernels/w8a8_linear``), the autotuner's pick fixed per shape:

* ``shipped``: as shipped — the pick (its ``pf_ahead``: weight prefetched into L2 that many K steps ahead, when
  the autotuner chose a prefetching config) and PDL where ``w8a8_gemm.pdl_safe`` allows it;
* ``no-pdl``: PDL off; ``no-pf``: the pick without its prefetch; ``pdl-forced``: PDL whatever ``pdl_safe`` says.

Every variant's output must equal the checked two-call path (``per_token_quant`` + ``w8a8_gemm``) bit for bit on
fresh inputs before it is timed; eager and CUDA-graph medians (do_bench, L2 flushed) next to bf16 ``F.linear`` in
the same process. The first version of this probe (``results/pdl-probe_*``, 2026-12-03) timed fixed prefetch
distances and the small-M kernel's prefetch (slower at every point: removed).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, median_ms
from fastvideo_quant.kernels import w8a8_gemm, w8a8_linear
from fastvideo_quant.kernels.per_token_quant import per_token_quant

VARIANTS = ("shipped", "no-pdl", "no-pf", "pdl-forced")


def quantized_weight(w: torch.Tensor, qdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 127.0 if qdt == torch.int8 else 448.0
    ws = (w.abs().amax(1) / qmax).float()
    y = w / ws[:, None]
    return (y.round().clamp(-127, 127) if qdt == torch.int8 else y).to(qdt), ws


def variant(name: str, picks: dict, x, qdt, wq, ws):
    """Set the knobs of ``name`` (picks restored from ``picks`` first), plan, return the planned call."""
    w8a8_gemm._picked.update(picks)
    w8a8_linear.PDL = name != "no-pdl"
    w8a8_gemm.pdl_safe = (lambda *a: True) if name == "pdl-forced" else _PDL_SAFE
    if name == "no-pf":
        for key, pick in picks.items():
            w8a8_gemm._picked[key] = pick._replace(pf_ahead=0)
    w8a8_linear._PLANS.clear()
    call = lambda: w8a8_linear.w8a8_linear(x, qdt, wq, ws, None, torch.bfloat16)
    call()
    return call


_PDL_SAFE = w8a8_gemm.pdl_safe


def times(fn) -> tuple[float, float]:
    return median_ms(fn), graph_median_ms(fn)


def rows_for(k: int, n: int, w: torch.Tensor, ms: list[int], dtypes: list[torch.dtype]) -> list[dict]:
    rows = []
    wb = w.bfloat16()
    for qdt in dtypes:
        wq, ws = quantized_weight(w, qdt)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w8a8_linear.w8a8_linear(x, qdt, wq, ws, None, torch.bfloat16)  # autotunes this shape's bucket
            picks = {key: p for key, p in w8a8_gemm._picked.items()
                     if key[1:3] == (n, k) and key[5] == qdt and key[0] == w8a8_gemm.m_bucket(m)}
            (pick,) = picks.values()
            row = {"k": k, "n": n, "m": m, "dtype": str(qdt), "pick": pick._asdict(),
                   "bf16": times(lambda: F.linear(x, wb)), "variants": {}}
            for name in VARIANTS:
                if name == "no-pf" and pick.pf_ahead == 0:
                    continue
                fn = variant(name, picks, x, qdt, wq, ws)
                for _ in range(3):  # fresh inputs: equal to the checked two-call path, bit for bit
                    x.copy_(torch.randn_like(x))
                    xq, xs = per_token_quant(x, qdt, flat_scale=True)
                    if not torch.equal(fn(), w8a8_gemm.w8a8_gemm(xq, xs, wq, ws, None, torch.bfloat16)):
                        raise SystemExit(f"{name} {qdt} {k}x{n} M={m}: output differs from the two-call path")
                row["variants"][name] = times(fn)
            variant("shipped", picks, x, qdt, wq, ws)
            rows.append(row)
            print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    be, bg = row["bf16"]
    parts = [f"{name} {e * 1e3:.1f}/{g * 1e3:.1f}us ({be / e:.2f}x/{bg / g:.2f}x)"
             for name, (e, g) in row["variants"].items()]
    p = row["pick"]
    pick = f"{p['block_m']}x{p['block_n']}x{p['block_k']} w{p['num_warps']} s{p['num_stages']} pf{p['pf_ahead']}"
    return (f"{row['dtype']:20s} {row['k']}x{row['n']} M={row['m']} [{pick}]: bf16 {be * 1e3:.1f}/{bg * 1e3:.1f}us | "
            + " | ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--m", nargs="*", type=int, default=[128, 256, 1024])
    ap.add_argument("--dtypes", nargs="*", default=["fp8"], choices=["fp8", "int8"])
    ap.add_argument("--out")
    args = ap.parse_args()
    print("eager/graph medians; speedups vs bf16 eager/graph", flush=True)
    rows = []
    dtypes = [{"fp8": torch.float8_e4m3fn, "int8": torch.int8}[d] for d in args.dtypes]
    for k, n in DIT_SHAPES:
        w = torch.randn(n, k, device="cuda") * k**-0.5
        rows += rows_for(k, n, w, args.m, dtypes)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
