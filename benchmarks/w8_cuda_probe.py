# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""The CUDA C++ W8A16 small-M kernel (``fastvideo_quant/kernels/w8_small_m.cu``) against the Triton small-M kernel
and bf16 (and the shipped path: fp8's ``fp8_linear`` or int8's ``int8_linear``), with fp8 or int8 weights at M <= 16.

    cd benchmarks && python w8_cuda_probe.py --out-dir $OUT [--ms 1 8 16] [--wdt int8] [--tiles "rowt1 kw8 ft1 u1" ...]

Per DiT shape, ``L`` distinct layers (one pass over their fp8 weights >= 150 MB, three times L2), and per M: every
tile checked first on fresh random inputs against float32 math of the fp8 weight times its scales (and the Triton
kernel and the shipped fp8 path, ``fp8_linear``, likewise), then timed two ways: (1) as a chain — one CUDA graph
calling all ``L`` layers, replayed back to back, per-layer time (``layer_chain.py``'s measurement: no flush, no per-
call launch); (2) as the harness times a single call — a CUDA-graph replay with L2 emptied before it
(``graph_median_ms``). bf16 ``F.linear`` on the same weights (de-quantized) in the same process, alternating rounds.
Writes ``w8-cuda-probe_<gpu>_<date>[_tag].json``.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from awq_cuda_probe import parse_tile  # (the tile words' reader: rowt1 kw8 ft1 u1)
from fvq_fp8.kernels.gemm import fp8_linear
from fvq_int8.kernels import int8_linear
from layer_chain import L2_BYTES, capture, chain_ms_per_layer

from fastvideo_quant.bench import graph_median_ms, rel_err, write_json
from fastvideo_quant.kernels.small_m import small_m_linear
from fastvideo_quant.kernels.w8_small_m_cuda import w8_small_m_cuda

SHAPES = ["5120x5120", "5120x13824", "13824x5120", "3072x12288"]
TILES = ["rowt1 kw8 ft1 u1", "rowt1 kw4 ft1 u1", "rowt2 kw4 ft1 u1", "rowt1 kw4 ft2 u1", "rowt4 kw2 ft1 u2",
         "rowt2 kw8 ft1 u1", "rowt1 kw8 ft2 u1", "rowt4 kw4 ft1 u1", "rowt1 kw8 ft1 u2", "rowt2 kw2 ft1 u2"]


def layers_8bit(K: int, N: int, L: int, gen: torch.Generator, int8: bool = False) -> tuple[list, list, list]:
    """``L`` random 8-bit weights ``[N, K]`` (e4m3, or int8), their per-channel float32 scales, and the bf16 weights
    they stand for (``w * scale``): the layers the chain probes time."""
    if int8:
        ws = [torch.randint(-127, 128, (N, K), device="cuda", generator=gen, dtype=torch.int8) for _ in range(L)]
    else:
        ws = [(torch.randn(N, K, device="cuda", generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
              for _ in range(L)]
    scales = [torch.rand(N, device="cuda", generator=gen) * 1e-3 + 1e-4 for _ in range(L)]
    return ws, scales, [(w.float() * s[:, None]).to(torch.bfloat16) for w, s in zip(ws, scales, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--ms", type=int, nargs="*", default=[1, 8, 16])
    ap.add_argument("--shapes", nargs="*", default=SHAPES, help="KxN")
    ap.add_argument("--tiles", nargs="*", default=TILES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wdt", choices=["e4m3", "int8"], default="e4m3", help="the weights' 8-bit type")
    ap.add_argument("--tag")
    args = ap.parse_args()
    tiles = {t: parse_tile(t) for t in args.tiles}
    gen = torch.Generator(device="cuda").manual_seed(0)
    points = []
    for shape in args.shapes:
        K, N = (int(v) for v in shape.split("x"))
        L = max(4, math.ceil(3 * L2_BYTES / (N * K)))
        ws, scales, wbf = layers_8bit(K, N, L, gen, args.wdt == "int8")
        for M in args.ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            fns = {"bf16": lambda i: F.linear(x, wbf[i]),
                   "triton": lambda i: small_m_linear(x, ws[i], scales[i].reshape(1, -1), None),
                   "shipped": (lambda i: int8_linear(x, ws[i], scales[i], None, x.dtype)) if args.wdt == "int8"
                   else (lambda i: fp8_linear(x, ws[i], scales[i].reshape(1, -1), None, None, None))}
            fns.update({name: (lambda i, t=t: w8_small_m_cuda(x, ws[i], scales[i], None, **t))
                        for name, t in tiles.items()})
            errs = {}
            for name, fn in fns.items():  # checked first, fresh inputs, on the first and the last layer
                if name == "bf16":
                    continue
                e = 0.0
                for i in (0, L - 1):
                    x.copy_(torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen))
                    e = max(e, rel_err(fn(i), x.float() @ (ws[i].float() * scales[i][:, None]).t()))
                if not e < (5e-2 if name == "shipped" else 5e-3):  # (the shipped path quantizes x above M=16)
                    raise SystemExit(f"{name} {shape} M={M}: relative error {e:.3g} against float32 math")
                errs[name] = e
            graphs = {name: capture([lambda i=i, fn=fn: fn(i) for i in range(L)]) for name, fn in fns.items()}
            chain = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, g in graphs.items():
                    chain[name].append(chain_ms_per_layer(g, L, 20) * 1e3)
            chain_us = {name: statistics.median(v) for name, v in chain.items()}
            best = min(tiles, key=lambda n: chain_us[n])
            single = {name: graph_median_ms(lambda fn=fns[name]: fn(0), 5, 30) * 1e3
                      for name in ("bf16", "triton", "shipped", best)}
            point = {"K": K, "N": N, "M": M, "layers": L, "chain_us": chain_us, "chain_rounds_us": chain,
                     "single_flushed_us": single, "errs": errs, "best": best}
            points.append(point)
            print(f"{shape} M={M} ({L} layers) chain us/layer: bf16 {chain_us['bf16']:.1f}, triton "
                  f"{chain_us['triton']:.1f} ({chain_us['bf16'] / chain_us['triton']:.2f}x), shipped {chain_us['shipped']:.1f} "
                  f"({chain_us['bf16'] / chain_us['shipped']:.2f}x), cuda best {best} "
                  f"{chain_us[best]:.1f} ({chain_us['bf16'] / chain_us[best]:.2f}x); single flushed: bf16 "
                  f"{single['bf16']:.1f}, triton {single['triton']:.1f}, shipped {single['shipped']:.1f}, "
                  f"best {single[best]:.1f} "
                  f"({single['bf16'] / single[best]:.2f}x)", flush=True)
            print("   " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(chain_us.items(), key=lambda kv: kv[1])),
                  flush=True)
            del graphs
        torch.cuda.empty_cache()
    print(write_json(args.out_dir, "w8-cuda-probe", {"weights": args.wdt, "points": points}, args.tag))


if __name__ == "__main__":
    main()
