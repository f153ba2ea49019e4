# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""Probe: host time per eager fp8 ``_scaled_mm``-path call with the quantization written into the reused workspace
(``per_token_quant_scratch``, what ``fp8_linear`` does since the twelfth session) against fresh tensors per call
(``per_token_quant_planned``), alternating in one process.

    python benchmarks/scratch_probe.py [--m 320 1024] [--rounds 5] [--out FILE.json]

Each variant is the quantization + row-wise ``torch._scaled_mm`` at 5120x5120, checked equal to the other first,
timed back to back (``bench.host_us``: wall time per call before the final sync — host time, the GPU keeping up).
``--pair``: the same question for the planned W8A8 pair (``kernels.w8a8_linear``, int8 and fp8) above 256 rows
(its workspace's limit ``WORKSPACE_MAX_M`` until the twelfth session): the pair at M with the limit at 256 (fresh
buffers per call) against 1024 (the workspace), plans rebuilt before each timing.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from fastvideo_quant.bench import environment, host_us
from fastvideo_quant.kernels import w8a8_linear
from fastvideo_quant.kernels.per_token_quant import per_token_quant_planned, per_token_quant_scratch


def pair_rows(ms: list[int], rounds: int) -> list[dict]:
    rows, shipped = [], w8a8_linear.WORKSPACE_MAX_M
    for qdtype in (torch.int8, torch.float8_e4m3fn):
        wf = torch.randn(5120, 5120, device="cuda") / 72
        w = (wf * 127 / wf.abs().amax()).round().to(qdtype) if qdtype == torch.int8 else wf.to(qdtype)
        ws = torch.rand(5120, device="cuda") * 1e-2
        for m in ms:
            x = torch.randn(m, 5120, device="cuda", dtype=torch.bfloat16)
            outs, times = {}, {256: [], 1024: []}
            for r in range(rounds):
                for limit in (256, 1024):
                    w8a8_linear.WORKSPACE_MAX_M = limit
                    w8a8_linear._PLANS.clear()
                    times[limit].append(host_us(lambda: w8a8_linear.w8a8_linear(x, qdtype, w, ws, None, torch.bfloat16),
                                                300))
                    if r == 0:
                        outs[limit] = w8a8_linear.w8a8_linear(x, qdtype, w, ws, None, torch.bfloat16)
            assert torch.equal(outs[256], outs[1024])
            row = {"pair": str(qdtype).removeprefix("torch."), "M": m, "fresh": statistics.median(times[256]),
                   "workspace": statistics.median(times[1024]), "rounds": {str(k): v for k, v in times.items()}}
            rows.append(row)
            print(f"pair {row['pair']} M={m}: host us/call fresh {row['fresh']:.1f} workspace {row['workspace']:.1f} "
                  f"(rounds: {[round(v, 1) for v in times[256]]} / {[round(v, 1) for v in times[1024]]})", flush=True)
    w8a8_linear.WORKSPACE_MAX_M = shipped
    w8a8_linear._PLANS.clear()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--m", nargs="+", type=int, default=[320, 1024])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pair", action="store_true", help="the W8A8 pair's workspace limit instead")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.pair:
        rows = pair_rows(args.m, args.rounds)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"environment": environment(), "rows": rows}, f)
        return
    fp8 = torch.float8_e4m3fn
    w = (torch.randn(5120, 5120, device="cuda") / 72).to(fp8)
    ws = torch.rand(1, 5120, device="cuda") * 1e-2
    rows = []
    for m in args.m:
        x = torch.randn(m, 5120, device="cuda", dtype=torch.bfloat16)

        def run(quant, x=x):
            xq, xs = quant(x, fp8)
            return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True)

        variants = {"fresh": lambda: run(per_token_quant_planned), "scratch": lambda: run(per_token_quant_scratch)}
        assert torch.equal(variants["fresh"](), variants["scratch"]())
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(host_us(fn, 300))
        row = {"M": m, **{name: statistics.median(t) for name, t in times.items()}, "rounds": times}
        rows.append(row)
        print(f"M={m}: host us/call fresh {row['fresh']:.1f} scratch {row['scratch']:.1f} "
              f"(rounds: {[round(v, 1) for v in times['fresh']]} / {[round(v, 1) for v in times['scratch']]})",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f)


if __name__ == "__main__":
    main()
