"""Markdown table of ``fp8_m_sweep.py`` results: the shipped fp8 layer's GPU-time speedup over bf16 per shape and M.

    python benchmarks/fp8_m_table.py AFTER.json [--before BEFORE.json ...] [--out FILE.md]

Each cell is ``bf16 graph time / shipped graph time`` (CUDA-graph replays: GPU time); with ``--before`` the earlier
run's value at the same point follows it (``after (before)``); cells under 1.0 are marked. A point measured twice in
a file (two sweeps merged) shows the later one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ratios(paths: list[str]) -> tuple[dict[tuple[int, int, int], float], dict]:
    out, env = {}, {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        env = data["environment"]
        for r in data["rows"]:
            if "shipped_graph" in r:
                out[(r["K"], r["N"], r["M"])] = r["bf16_graph"] / r["shipped_graph"]
    return out, env


def table(after: dict, before: dict) -> str:
    shapes = sorted({(k, n) for k, n, _ in after})
    ms = sorted({m for _, _, m in after})
    lines = ["| M | " + " | ".join(f"{k}×{n}" for k, n in shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
    for m in ms:
        cells = []
        for k, n in shapes:
            a = after.get((k, n, m))
            if a is None:
                cells.append("")
                continue
            cell = f"**{a:.2f}**" if a < 1.0 else f"{a:.2f}"
            b = before.get((k, n, m))
            cells.append(cell + (f" ({b:.2f})" if b is not None else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("after", nargs="+")
    ap.add_argument("--before", nargs="*", default=[])
    ap.add_argument("--out")
    args = ap.parse_args()
    after, env = _ratios(args.after)
    before, _ = _ratios(args.before)
    text = (f"# fp8 layer vs bf16 over M (GPU time)\n\nGPU: {env.get('gpu')} · torch {env.get('torch')} · "
            f"{env.get('date')} · L2 flush: {env.get('l2_flush')}\n\nbf16 `F.linear` time / the fp8 layer's time, both "
            "as CUDA-graph replays" + (" — this run (the earlier run in parentheses)" if before else "") +
            "; **bold**: slower than bf16.\n\n" + table(after, before) + "\n")
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
