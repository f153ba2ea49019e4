"""Derive the fp8 plugin's route table (``fvq_fp8/kernels/routes.json``) from ``fp8_path_sweep.py`` results.

    python benchmarks/fp8_routes.py benchmarks/results/fp8-path-sweep_*.json [--out plugins/fvq_fp8/kernels/routes.json]
        [--modes harness chain]

For each shape the swept M are grouped into intervals (upper bounds ``EDGES``); in each interval the Triton W8A8
GEMM's config with the best geometric-mean GPU time over the interval's M is its pick, and the interval goes to the
Triton GEMM unless row-wise ``torch._scaled_mm`` is faster there (geometric means again) by more than
``HYSTERESIS`` up to M = ``HYSTERESIS_MAX_M``; above that the Triton GEMM must be faster than ``_scaled_mm`` by
``1 / LARGE_M_MARGIN`` (the established path at large M, and each such interval holds one or two swept M). Why a
margin for the Triton GEMM up to M=256: the ``_scaled_mm`` path costs ~30 µs more host time
per call than the Triton path's planned launch on the device host (8-50 µs, median 30, over M=17-256 and the four
shapes; ``results/fp8-m-sweep_*_fine.json``, ``--b2b``), which an eager model pays where its GPU time is that short
(~20-60 µs up to M=256); a GPU-time gain below 10% is not worth it there. Above M=256 an interval may also go to
``_scaled_mm`` on a padded row count P >= its last M (the sweep's ``cublas_pad``, same host cost as plain
``_scaled_mm``): when that is faster than plain ``_scaled_mm`` by ``1 / LARGE_M_MARGIN`` too; the faster of the two
challengers wins. Only the Triton and padded intervals are written: every other M above the W8A16 range takes
``_scaled_mm``. Where several sweeps hold the same (K, N, M) and measurement, the one named last counts.

``--modes``: which of the sweep's measurements count (a row's ``"mode"``; rows without one are ``harness``: one
call, L2 emptied; ``chain``: layers of distinct weights back to back in one graph). With both, each measured M
counts once per measurement in its interval's geometric means, so a pick must do well in both, and up to M=256 the
Triton GEMM keeps an interval only if ``_scaled_mm`` is not faster by more than ``HYSTERESIS`` in either (the margin
is for eager host time, which neither measurement sees: it may not cost more than that much GPU time in either).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

#: Interval upper bounds (M); an interval holds the swept M above the previous bound. M above the last: _scaled_mm.
EDGES = (32, 64, 128, 192, 256, 320, 384, 448, 512)
HYSTERESIS = 1.10
HYSTERESIS_MAX_M = 256
LARGE_M_MARGIN = 0.95


def _gm(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def _best(pts: list[dict], key: str, allowed=lambda c: True) -> tuple[str | None, float]:
    """The candidate of ``row[key]`` (measured at every point, ``allowed``) with the best geometric-mean time."""
    cands = [c for c in set.intersection(*(set(r.get(key, {})) for r in pts)) if allowed(c)]
    if not cands:
        return None, math.inf
    best = min(cands, key=lambda c: _gm([r[key][c] for r in pts]))
    return best, _gm([r[key][best] for r in pts])


def latest(rows: list[dict], modes: tuple[str, ...] = ("harness",)) -> list[dict]:
    """One row per (K, N, M, measurement) of ``modes``: the last given."""
    return list({(r["K"], r["N"], r["M"], mode_of(r)): r for r in rows if mode_of(r) in modes}.values())


def mode_of(row: dict) -> str:
    """A sweep row's measurement (``fp8_path_sweep.py``): ``harness`` for rows written before it said."""
    return row.get("mode", "harness")


def derive(rows: list[dict]) -> tuple[dict[str, list], dict[str, list]]:
    """``(Triton intervals, padded intervals)`` per ``"KxN"``, as ``routes.json``'s ``shapes`` and ``pad``."""
    table: dict[str, list] = {}
    pads: dict[str, list] = {}
    for K, N in sorted({(r["K"], r["N"]) for r in rows}):
        entries, padded, lo = [], [], 1
        for hi in EDGES:
            pts = [r for r in rows if (r["K"], r["N"]) == (K, N) and lo <= r["M"] <= hi]
            start, lo = lo, hi + 1
            if not pts:
                continue
            best, t_triton = _best(pts, "triton")
            t_cublas = _gm([r["cublas_graph"] for r in pts])
            if hi <= HYSTERESIS_MAX_M:
                # (in each measurement: a route may not give up more than the margin under either)
                by_mode = [[r for r in pts if mode_of(r) == m] for m in sorted({mode_of(r) for r in pts})]
                if all(_gm([r["triton"][best] for r in ms]) <= _gm([r["cublas_graph"] for r in ms]) * HYSTERESIS
                       for ms in by_mode):
                    entries.append([start, hi, [int(v) for v in best.split(",")]])
                continue
            rows_p, t_pad = _best(pts, "cublas_pad", lambda c, hi=hi: int(c) >= hi)
            if min(t_triton, t_pad) > t_cublas * LARGE_M_MARGIN:
                continue
            if t_triton <= t_pad:
                entries.append([start, hi, [int(v) for v in best.split(",")]])
            else:
                padded.append([start, hi, int(rows_p)])
        table[f"{K}x{N}"] = entries
        if padded:
            pads[f"{K}x{N}"] = padded
    return table, pads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("--modes", nargs="+", choices=("harness", "chain"), default=["harness"],
                    help="the sweeps' measurements that count (both: a pick must do well in each)")
    ap.add_argument("--capability", default="9.0", help="compute capability the sweeps ran on (the routes apply there)")
    args = ap.parse_args()
    rows, envs = [], []
    for path in args.sweeps:
        data = json.loads(Path(path).read_text())
        rows += data["rows"]
        envs.append(data["environment"])
    shapes, pads = derive(latest(rows, tuple(args.modes)))
    doc = {
        "_doc": "'shapes': Triton W8A8 GEMM intervals [first M, last M, pick] per 'KxN' (pick = BLOCK_M, BLOCK_N, "
                "BLOCK_K, GROUP_M, num_warps, num_stages); 'pad': intervals [first M, last M, rows] whose row-wise "
                "torch._scaled_mm runs on that many rows; other M above the W8A16 range take row-wise "
                "torch._scaled_mm. Applied on GPUs of 'capability' only. Written by benchmarks/fp8_routes.py from "
                "the sweeps named in 'source' (a later one's row for the same shape and M counts).",
        "gpu": sorted({e["gpu"] for e in envs}),
        "torch": sorted({e["torch"] for e in envs}),
        "source": [Path(p).name for p in args.sweeps],
        "capability": [int(v) for v in args.capability.split(".")],
        "margins": {"hysteresis": HYSTERESIS, "up_to_m": HYSTERESIS_MAX_M, "large_m": LARGE_M_MARGIN},
        "modes": list(args.modes),
        "shapes": shapes,
        "pad": pads,
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
