"""Derive the fp8 plugin's route table (``fvq_fp8/kernels/routes.json``) from ``fp8_path_sweep.py`` results.

    python benchmarks/fp8_routes.py benchmarks/results/fp8-path-sweep_*.json [--out plugins/fvq_fp8/kernels/routes.json]

For each shape the swept M are grouped into intervals (upper bounds ``EDGES``); in each interval the Triton W8A8
GEMM's config with the best geometric-mean GPU time over the interval's M is its pick, and the interval goes to the
Triton GEMM unless row-wise ``torch._scaled_mm`` is faster there (geometric means again) by more than
``HYSTERESIS`` up to M = ``HYSTERESIS_MAX_M``; above that the Triton GEMM must be faster than ``_scaled_mm`` by
``1 / LARGE_M_MARGIN`` (the established path at large M, and each such interval holds one or two swept M). Why a
margin for the Triton GEMM up to M=256: the ``_scaled_mm`` path costs ~30 µs more host time
per call than the Triton path's planned launch on the device host (8-50 µs, median 30, over M=17-256 and the four
shapes; ``results/fp8-m-sweep_*_fine.json``, ``--b2b``), which an eager model pays where its GPU time is that short
(~20-60 µs up to M=256); a GPU-time gain below 10% is not worth it there. Only Triton intervals are written:
every other M above the W8A16 range takes ``_scaled_mm``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

#: Interval upper bounds (M); an interval holds the swept M above the previous bound. M above the last: _scaled_mm.
EDGES = (32, 64, 128, 192, 256, 320, 384, 512)
HYSTERESIS = 1.10
HYSTERESIS_MAX_M = 256
LARGE_M_MARGIN = 0.95


def _gm(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def derive(rows: list[dict]) -> dict[str, list]:
    table: dict[str, list] = {}
    for K, N in sorted({(r["K"], r["N"]) for r in rows}):
        entries, lo = [], 1
        for hi in EDGES:
            pts = [r for r in rows if (r["K"], r["N"]) == (K, N) and lo <= r["M"] <= hi]
            start, lo = lo, hi + 1
            if not pts:
                continue
            cfgs = set.intersection(*(set(r["triton"]) for r in pts))
            if not cfgs:
                continue
            best = min(cfgs, key=lambda c: _gm([r["triton"][c] for r in pts]))
            t_triton = _gm([r["triton"][best] for r in pts])
            t_cublas = _gm([r["cublas_graph"] for r in pts])
            if t_triton <= t_cublas * (HYSTERESIS if hi <= HYSTERESIS_MAX_M else LARGE_M_MARGIN):
                entries.append([start, hi, [int(v) for v in best.split(",")]])
        table[f"{K}x{N}"] = entries
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("--capability", default="9.0", help="compute capability the sweeps ran on (the routes apply there)")
    args = ap.parse_args()
    rows, envs = [], []
    for path in args.sweeps:
        data = json.loads(Path(path).read_text())
        rows += data["rows"]
        envs.append(data["environment"])
    doc = {
        "_doc": "Triton W8A8 GEMM intervals [first M, last M, pick] per 'KxN' (pick = BLOCK_M, BLOCK_N, BLOCK_K, "
                "GROUP_M, num_warps, num_stages); other M above the W8A16 range take row-wise torch._scaled_mm. "
                "Applied on GPUs of 'capability' only. Written by benchmarks/fp8_routes.py from the sweeps named in "
                "'source'.",
        "gpu": sorted({e["gpu"] for e in envs}),
        "torch": sorted({e["torch"] for e in envs}),
        "source": [Path(p).name for p in args.sweeps],
        "capability": [int(v) for v in args.capability.split(".")],
        "margins": {"hysteresis": HYSTERESIS, "up_to_m": HYSTERESIS_MAX_M, "large_m": LARGE_M_MARGIN},
        "shapes": derive(rows),
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
