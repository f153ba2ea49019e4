"""A model-like measurement beside the harness: many different layers back to back in one CUDA graph.

The harness (``fastvideo_quant/bench.py``, ``fvq bench``) times one call at a time with L2 emptied before each by
writing 256 MB, so every timed call also pays a graph launch and the write-back of the dirty lines it evicts: a fixed
~7 µs a call on the H200 (``benchmarks/flush_probe.py``, seventh AWQ session), which caps small-M ratios below the
bytes' ratio (AWQ M=1: 2.00-2.68x at most). A decode step does not look like that: it runs layer after layer, each
reading a weight that is not in L2 (the model's weights are many times L2), with no flush and no launch gap beyond a
graph's.

The measurement itself is :func:`fastvideo_quant.bench.bench_chain` (``fvq bench --chain``): ``L`` distinct layers
per shape, one pass over the method's weights at least ``--l2-multiple`` x L2, one CUDA graph calling all ``L`` on
the same ``x``, bf16 and the method alternating over ``--rounds`` rounds, every layer checked first against float32
math of its own de-quantized weight within the method's stated tolerance. This script runs several methods into one
table, named as the probes' results are (the probes import :data:`L2_BYTES`, :func:`capture` and
:func:`chain_ms_per_layer` from here).

    python benchmarks/layer_chain.py --methods awq fp8 --out benchmarks/results

Results: ``<out>/layer-chain_<gpu>_<date>[_tag].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvideo_quant.bench import (  # noqa: E402
    DIT_SHAPES,
    L2_FALLBACK_BYTES,
    bench_chain,
    chain_ms_per_layer,
    write_chain_results,
)
from fastvideo_quant.bench import capture_chain as capture  # noqa: E402

L2_BYTES = L2_FALLBACK_BYTES  # (the probes size their chains for 50 MB, as before the chain read the device's L2
#                               size: an H200 reports 60 MiB, so their chains are ~2.5 x L2 there, not 3)
__all__ = ["L2_BYTES", "capture", "chain_ms_per_layer"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["awq", "fp8"])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in DIT_SHAPES], help="KxN")
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--l2-multiple", type=float, default=3.0,
                    help="one pass over the method's weights is at least this many times L2")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=".")
    ap.add_argument("--config", type=json.loads, default=None, help="JSON config dict for from_config (every method)")
    ap.add_argument("--tag")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("layer_chain.py needs a CUDA GPU; none is visible")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    rows = [row for method in args.methods
            for row in bench_chain(method, shapes, args.ms, config=args.config, l2_multiple=args.l2_multiple,
                                   replays=args.replays, rounds=args.rounds)]
    print(*write_chain_results(rows, args.out, "layer-chain", args.l2_multiple, args.replays, args.tag))


if __name__ == "__main__":
    main()
