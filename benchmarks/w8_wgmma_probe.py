# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""The CUDA C++ W8A16 wgmma kernel (``fastvideo_quant/kernels/w8_wgmma.cu``) against the shipped fp8 layer and bf16
at M above the small-M kernels' 16 rows.

    cd benchmarks && python w8_wgmma_probe.py --out-dir $OUT [--ms 32 64 128 256] [--tiles "mn128 wg2 cs3 s4" ...]

Per DiT shape, ``L`` distinct layers (one pass over their fp8 weights >= 150 MB, three times L2), and per M: every
tile checked first on fresh random inputs against float32 math of the fp8 weight times its scales (the shipped layer
against its de-quantized weight within the fp8 method's tolerance), then timed as a chain — one CUDA graph calling
all ``L`` layers, replayed back to back, per-layer µs (``layer_chain.py``'s measurement), bf16 ``F.linear`` on the
same (de-quantized) weights in the same process, alternating rounds. Writes ``w8-wgmma-probe_<gpu>_<date>[_tag].json``.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics

import torch
import torch.nn.functional as F
from layer_chain import L2_BYTES, capture, chain_ms_per_layer

from fastvideo_quant.bench import build_layer, rel_err, write_json
from fastvideo_quant.kernels.w8_wgmma_cuda import w8_wgmma

SHAPES = ["5120x5120", "5120x13824", "13824x5120", "3072x12288"]


def parse_tile(text: str) -> dict:
    return {k: int(v) for k, v in (re.fullmatch(r"([a-z]+?)(\d+)", w).groups() for w in text.split())}


def default_tiles(M: int) -> list[str]:
    mn = next(mn for mn in (32, 64, 128) if mn >= min(M, 128))
    return [f"mn{mn} wg{wg} cs{cs} s{s} wait1" for wg in (1, 2) for cs in (1, 2, 3, 4) for s in (3, 5)
            if s * (wg * 64 * 128 + mn * 256) + 1024 <= 227 * 1024]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--ms", type=int, nargs="*", default=[32, 64, 128, 256])
    ap.add_argument("--shapes", nargs="*", default=SHAPES, help="KxN")
    ap.add_argument("--tiles", nargs="*", help="default: default_tiles(M)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag")
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    points = []
    for shape in args.shapes:
        K, N = (int(v) for v in shape.split("x"))
        L = max(4, math.ceil(3 * L2_BYTES / (N * K)))
        wbf = [(torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16) for _ in range(L)]
        layers = [build_layer("fp8", w) for w in wbf]
        ws = [layer.weight.data for layer in layers]
        scales = [layer.weight_scale.data.reshape(-1).contiguous() for layer in layers]
        deq = [(w.float() * s[:, None]) for w, s in zip(ws, scales, strict=True)]
        wdq = [d.to(torch.bfloat16) for d in deq]
        for M in args.ms:
            tiles = {t: parse_tile(t) for t in (args.tiles or default_tiles(M))}
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            fns = {"bf16": lambda i: F.linear(x, wdq[i]),
                   "shipped": lambda i: layers[i].quant_method.apply(layers[i], x)}
            fns.update({name: (lambda i, t=t: w8_wgmma(x, ws[i], scales[i], None, **t)) for name, t in tiles.items()})
            errs = {}
            for name, fn in fns.items():  # checked first, fresh inputs, on the first and the last layer
                if name == "bf16":
                    continue
                e = 0.0
                for i in (0, L - 1):
                    x.copy_(torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen))
                    e = max(e, rel_err(fn(i), x.float() @ deq[i].t()))
                limit = 5e-2 if name == "shipped" else 5e-3  # (the shipped path may quantize x: W8A8)
                if not e < limit:
                    raise SystemExit(f"{name} {shape} M={M}: relative error {e:.3g} against float32 math")
                errs[name] = e
            graphs = {name: capture([lambda i=i, fn=fn: fn(i) for i in range(L)]) for name, fn in fns.items()}
            chain = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, g in graphs.items():
                    chain[name].append(chain_ms_per_layer(g, L, 20) * 1e3)
            us = {name: statistics.median(v) for name, v in chain.items()}
            best = min(tiles, key=lambda n: us[n])
            points.append({"K": K, "N": N, "M": M, "layers": L, "chain_us": us, "chain_rounds_us": chain,
                           "errs": errs, "best": best})
            print(f"{shape} M={M} ({L} layers) us/layer: bf16 {us['bf16']:.1f}, shipped {us['shipped']:.1f} "
                  f"({us['bf16'] / us['shipped']:.2f}x, err {errs['shipped']:.1e}), wgmma best {best} {us[best]:.1f} "
                  f"({us['bf16'] / us[best]:.2f}x, err {errs[best]:.1e})", flush=True)
            print("   " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(us.items(), key=lambda kv: kv[1])[:8]),
                  flush=True)
            del graphs
        torch.cuda.empty_cache()
    print(write_json(args.out_dir, "w8-wgmma-probe", {"points": points}, args.tag))


if __name__ == "__main__":
    main()
