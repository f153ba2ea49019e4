"""Sweep: launch shapes of the block route's activation quantization (``fvq_fp8::per_group_quant``).

    python benchmarks/group_quant_sweep.py --out DIR

Why: on the H100 the quantization is most of what the fp8 block route adds over its GEMM (~2.5 µs at small M, ~10 µs
at 5120x5120 M=1024, ~27 µs at M=4096; ``results/fp8-block-probe_*_final.md``) against ~5 / ~21 µs of bytes at the
copy bandwidth; the shipped shape (8 groups of 128 columns a program, 4 warps) was not tuned. Each config's codes
and scales are checked bit for bit against the shipped config's first, then timed as CUDA-graph replays with L2
emptied. Writes ``group-quant-sweep_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from fvq_fp8.kernels import act_quant_triton as aq

from fastvideo_quant.bench import environment, graph_median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=[16, 128, 1024, 4096])
    ap.add_argument("--ks", nargs="+", type=int, default=[3072, 5120, 13824])
    args = ap.parse_args()
    env = environment()
    rows = []
    for k in args.ks:
        groups = -(-k // 128)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
            shipped = aq.group_config(groups, 128)
            q0, s0 = aq.per_group_quant(x, 128)
            row = {"M": m, "K": k, "shipped": list(shipped), "results": []}
            for per in (1, 2, 4, 8, 16, 32, 64, 128):
                if per > 2 * groups:
                    continue
                for warps in (1, 2, 4, 8, 16):
                    if warps * 32 * 4 > per * 128 * 2:  # (fewer than 2 elements a thread: not worth timing)
                        continue
                    cfg = (per, warps)
                    q, s = aq.per_group_quant(x, 128, config=cfg)
                    if not (torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)):
                        row["results"].append({"config": list(cfg), "error": "differs from the shipped config"})
                        continue
                    us = graph_median_ms(lambda c=cfg, t=x: aq.per_group_quant(t, 128, config=c), 5, 25) * 1e3
                    row["results"].append({"config": list(cfg), "us": us})
            row["results"].sort(key=lambda r: r.get("us", 1e9))
            shipped_us = next(r["us"] for r in row["results"] if tuple(r["config"]) == shipped)
            best = row["results"][0]
            print(f"K={k} M={m}: shipped {shipped} {shipped_us:.1f} us, best {best['config']} {best['us']:.1f} us; "
                  + ", ".join(f"{r['config']}:{r['us']:.1f}" for r in row["results"][:6] if "us" in r), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    with open(out / f"group-quant-sweep_{gpu}_{env['date']}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f)


if __name__ == "__main__":
    main()
