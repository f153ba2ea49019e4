"""Time registered methods' ``apply`` against bf16 at video-DiT shapes; see fastvideo_quant.bench.

    python benchmarks/bench_linear.py --method unquantized --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json

from fastvideo_quant.bench import DIT_MS, DIT_SHAPES, bench_method, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", action="append", required=True, help="method name (repeatable)")
    ap.add_argument("--config", type=json.loads, default=None, help="JSON config dict for from_config")
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in DIT_SHAPES], help="KxN list")
    ap.add_argument("--m", nargs="*", type=int, default=DIT_MS)
    ap.add_argument("--rounds", type=int, default=1, help="alternating bf16/method rounds per point")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", help="the result files' name stem instead of the method's (a --config run beside the default's)")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    for method in args.method:
        rows = bench_method(method, shapes, args.m, config=args.config, rounds=args.rounds)
        for path in write_results(rows, args.out, args.tag):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
