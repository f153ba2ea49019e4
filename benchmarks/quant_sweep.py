"""Launch shapes of the per-token activation quantization kernel (``fastvideo_quant.kernels.per_token_quant``).

    python benchmarks/quant_sweep.py [--out DIR]

For int8 and float8 e4m3 outputs, K in (3072, 5120, 13824) (the DiT shapes' inputs) and M in (128, 1024, 4096,
32768): every launch shape (rows per program, one pass or ``block_k`` chunks, warps) is first checked bit for bit
against the torch reference (int8: ``torch.round(x * (127 / amax))`` with an IEEE division; fp8: the fp8 plugin's
``per_token_quant_ref``), then timed (``bench.median_ms``: do_bench, L2 flushed). Prints, per point, the default
(``pick_config``) and the three fastest shapes with their bandwidth (bytes read + written / time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastvideo_quant.bench import environment, median_ms
from fastvideo_quant.kernels.per_token_quant import FP8_DTYPE, QuantConfig, per_token_quant, pick_config

KS = (3072, 5120, 13824)
MS = (128, 1024, 4096, 32768)


def configs(k: int) -> list[QuantConfig]:
    out = []
    if k <= 16384:
        block = 1 << (k - 1).bit_length()
        for rows in (1, 2, 4):
            for warps in (4, 8, 16):
                if rows * block // (warps * 32) <= 64:
                    out.append(QuantConfig(rows, block, True, warps))
    for block in (1024, 2048, 4096):
        for rows in (1, 2, 4):
            for warps in (4, 8):
                if rows * block // (warps * 32) <= 64:
                    out.append(QuantConfig(rows, block, False, warps))
    return out


def reference(x: torch.Tensor, qdtype: torch.dtype) -> torch.Tensor:
    if qdtype == torch.int8:
        amax = x.float().abs().amax(1, keepdim=True)
        inv = torch.full_like(amax, 127) / amax  # IEEE (``127 / t`` is ``t.reciprocal() * 127`` in torch)
        return torch.round(x.float() * torch.where(amax > 0, inv, 0)).to(torch.int8)
    from fvq_fp8.kernels.ops import per_token_quant_ref

    return per_token_quant_ref(x)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    args = ap.parse_args()
    env = environment()
    print(env)
    rows = []
    t0 = time.time()
    for qdtype in (torch.int8, FP8_DTYPE):
        name = "int8" if qdtype == torch.int8 else "fp8"
        for k in KS:
            for m in MS:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = reference(x, qdtype).view(torch.uint8)
                nbytes = m * k * 3 + m * 4
                default = pick_config(m, k)
                results = []
                for cfg in configs(k):
                    q, _ = per_token_quant(x, qdtype, config=cfg)
                    if not torch.equal(q.view(torch.uint8), ref):
                        bad = (q.view(torch.uint8) != ref).sum().item()
                        print(f"  FAILED {name} K={k} M={m} {cfg}: {bad} codes differ")
                        continue
                    us = median_ms(lambda x=x, qd=qdtype, cfg=cfg: per_token_quant(x, qd, config=cfg), 10, 40) * 1e3
                    results.append((us, cfg))
                results.sort(key=lambda r: r[0])
                d_us = next((us for us, c in results if c == default), float("nan"))
                line = (f"{name} K={k} M={m}: default {default} {d_us:.1f}us ({nbytes / d_us / 1e6:.2f} TB/s); best: "
                        + "; ".join(f"{c} {us:.1f}us ({nbytes / us / 1e6:.2f} TB/s)" for us, c in results[:3]))
                print(line, flush=True)
                rows.append({"qdtype": name, "K": k, "M": m, "default": default._asdict(), "default_us": d_us,
                             "results": [{"us": us, **c._asdict()} for us, c in results]})
    print(f"done in {time.time() - t0:.0f}s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"quant-sweep_{env['gpu'].lower().replace(' ', '-')}_{env['date']}.json"
        path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
