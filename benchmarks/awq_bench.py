"""AWQ (group 128) through the shared harness (``fastvideo_quant.bench``) at the DiT shapes.

    python benchmarks/awq_bench.py --out benchmarks/results

Same as ``bench_linear.py --method awq --config '{"group_size": 128}'``, but registers the plugin
in-process when its entry point is not installed (a bare device machine).
"""

from __future__ import annotations

import argparse

from fastvideo_quant.bench import DIT_MS, DIT_SHAPES, bench_method, write_results
from fastvideo_quant.plugins import register_plugin
from fastvideo_quant.quantization.selection import QUANTIZATION_METHODS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    if "awq" not in list(QUANTIZATION_METHODS):
        import fvq_awq.hooks

        register_plugin(fvq_awq.hooks, "awq")
    rows = bench_method("awq", DIT_SHAPES, DIT_MS, config={"group_size": args.group_size})
    for path in write_results(rows, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
