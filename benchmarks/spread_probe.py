# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""Run-to-run spread of a method's ratio to bf16 at one point: rounds of alternating timings in one process.

    python benchmarks/spread_probe.py [--method fp8] [--shape 5120x5120] [--m 4096] [--rounds 5] [--out FILE.json]

Why (seventh session, H200): fp8 5120x5120 at M=4096 read 1.54-1.58x bf16 eager in the harness runs and 1.70x in
another process, with fp8 at 178-183 µs every time and bf16 at 281-303 µs; the 1.6x verdict sits inside bf16's own
spread. Each round times bf16 ``F.linear`` and the method's ``apply`` back to back (do_bench medians, L2 flushed),
eager then as CUDA graphs; run the script in several processes to see the spread between processes too.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import build_layer, environment, graph_median_ms, median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", default="fp8")
    ap.add_argument("--shape", default="5120x5120")
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    k, n = (int(v) for v in args.shape.split("x"))
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
    layer = build_layer(args.method, w)
    x = torch.randn(args.m, k, device="cuda", dtype=torch.bfloat16)
    bf16 = lambda: F.linear(x, w)
    method = lambda: layer.quant_method.apply(layer, x)
    rounds = []
    for r in range(args.rounds):
        t = {"bf16": median_ms(bf16), "method": median_ms(method), "bf16_graph": graph_median_ms(bf16),
             "method_graph": graph_median_ms(method)}
        rounds.append(t)
        print(f"round {r}: bf16 {t['bf16'] * 1e3:.1f} us, {args.method} {t['method'] * 1e3:.1f} us "
              f"({t['bf16'] / t['method']:.2f}x); graph {t['bf16_graph'] * 1e3:.1f} / {t['method_graph'] * 1e3:.1f} us "
              f"({t['bf16_graph'] / t['method_graph']:.2f}x)", flush=True)
    ratios = [t["bf16"] / t["method"] for t in rounds]
    print(f"{args.method} {k}x{n} M={args.m}: eager ratio median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "method": args.method, "k": k, "n": n, "m": args.m,
                       "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
