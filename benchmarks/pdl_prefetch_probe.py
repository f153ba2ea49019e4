# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""The fp8 W8A8 pair with programmatic dependent launch and the GEMM's whole weight slice prefetched before its wait.

    python benchmarks/pdl_prefetch_probe.py --out-dir DIR [--ms 17 32 64 128] [--shapes 5120x5120 ...]

Why (twenty-first session): ``pdl_graph_probe.py`` showed that a CUDA graph keeps PDL's programmatic dependency (a
dependent kernel started as soon as the one before it began). The seventh session's PDL prefetched the first 4 K
steps of the weight into L2 before ``gdc_wait`` and more ahead of its pipeline, measured at M >= 128, and gained
nothing as graphs. Here the GEMM may ask for up to its *whole* weight slice (``prefetch.global.L2`` per 128-byte
line, no registers) before it waits for the quantization kernel. Variants of the pair (per-token quantization, then
the W8A8 GEMM with the route's tile; the package's kernels with their PDL hooks, ``LAUNCH_DEPS`` / ``GDC`` / ``PF``,
set by hand — ``results/pdl-prefetch-probe_*`` came from this probe's first version, which carried its own copies of
the two kernels with the same hooks, at 5e2ea67):

* ``base``: no PDL, no prefetch (checked bit for bit against the package's ``per_token_quant`` + ``w8a8_gemm``);
* ``pdl``: the quantization kernel lets the GEMM start (``gdc_launch_dependents``), which waits before its loop;
* ``pdl-pf4`` / ``pdl-pfall``: + the first 4 K steps / all of them prefetched into L2 before the wait;
* ``pfall``: all prefetched, no PDL (the prefetch alone).

Every variant equals ``base`` bit for bit on fresh inputs before it is timed; ``base`` equals the package. Timed one
call at a time as graphs with L2 flushed (the harness's graph column) and as a layer chain (distinct weights, one
graph), next to bf16 ``F.linear`` and the shipped ``fp8_linear`` in the same process.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w8_cuda_probe import layers_8bit  # noqa: E402  (benchmarks/ is on the path when run as a script)

from fastvideo_quant.bench import capture_chain, chain_ms_per_layer, graph_median_ms, write_json  # noqa: E402
from fastvideo_quant.kernels.per_token_quant import per_token_quant  # noqa: E402
from fastvideo_quant.kernels.w8a8_configs import m_bucket  # noqa: E402
from fastvideo_quant.kernels.w8a8_gemm import _w8a8_gemm_kernel, w8a8_gemm  # noqa: E402

VARIANTS = {"base": (False, 0), "pdl": (True, 0), "pdl-pf4": (True, 4), "pdl-pfall": (True, -1),
            "pfall": (False, -1)}


def pair(x: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, pick, gdc: bool, pf: int) -> torch.Tensor:
    """The package's two kernels, launched through the JIT with the hooks set by hand: ``gdc`` (the quantization
    kernel's ``LAUNCH_DEPS``, the GEMM's ``GDC`` and ``launch_pdl``) and ``pf`` K steps prefetched (-1: all)."""
    M, K = x.shape
    N = w.shape[0]
    bm, bn, bk, gm, warps, stages = pick
    q, s = per_token_quant(x, torch.float8_e4m3fn, flat_scale=True, launch_deps=gdc)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _w8a8_gemm_kernel[grid](q, w, out, s, ws, ws, M, N, K, m_bucket(M), q.stride(0), q.stride(1), w.stride(1),
                            w.stride(0), out.stride(0), out.stride(1), HAS_BIAS=False, EVEN_K=K % bk == 0,
                            IS_INT=False, FP32_DOT=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, GDC=gdc,
                            PF=triton.cdiv(K, bk) if pf < 0 else pf, num_warps=warps, num_stages=stages,
                            launch_pdl=gdc)
    return out


def main() -> None:
    from fvq_fp8.kernels.gemm import cuda_route, fp8_linear

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--ms", type=int, nargs="+", default=[17, 32, 64, 128])
    ap.add_argument("--shapes", nargs="+", default=["5120x5120", "13824x5120", "5120x13824", "3072x12288"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tag")
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    points = []
    for shape in args.shapes:
        K, N = (int(v) for v in shape.split("x"))
        L = max(4, math.ceil(3 * 50 * 2**20 / (N * K)))
        ws, scales, wbf = layers_8bit(K, N, L, gen)
        for M in args.ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            route = cuda_route(x, ws[0], None, True)
            if not route.triton:
                print(f"{shape} M={M}: the route is _scaled_mm; skipped", flush=True)
                continue
            pick = tuple(route.pick)
            # base equals the package bit for bit; every variant equals base
            xq, xs = per_token_quant(x, torch.float8_e4m3fn, flat_scale=True)
            ref = w8a8_gemm(xq, xs, ws[0], scales[0], None, torch.bfloat16, pick)
            base = pair(x, ws[0], scales[0], pick, False, 0)
            if not torch.equal(base, ref):
                raise SystemExit(f"{shape} M={M}: the probe's base pair differs from the package's")
            for name, (gdc, pf) in VARIANTS.items():
                for i in (0, L - 1):
                    x.copy_(torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen))
                    if not torch.equal(pair(x, ws[i], scales[i], pick, gdc, pf), pair(x, ws[i], scales[i], pick, False, 0)):
                        raise SystemExit(f"{shape} M={M}: {name} differs from base")
            fns = {"bf16": lambda i: F.linear(x, wbf[i]),
                   "shipped": lambda i: fp8_linear(x, ws[i], scales[i].reshape(1, -1), None, None, None)}
            fns.update({name: (lambda i, g=gdc, p=pf: pair(x, ws[i], scales[i], pick, g, p))
                        for name, (gdc, pf) in VARIANTS.items()})
            graphs = {name: capture_chain([lambda i=i, fn=fn: fn(i) for i in range(L)]) for name, fn in fns.items()}
            chain = {name: [] for name in fns}
            single = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    chain[name].append(chain_ms_per_layer(graphs[name], L, 20) * 1e3)
                    single[name].append(graph_median_ms(lambda fn=fn: fn(0), 5, 30) * 1e3)
            med = lambda v: sorted(v)[len(v) // 2]
            point = {"K": K, "N": N, "M": M, "pick": pick, "layers": L,
                     "chain_us": {n: med(v) for n, v in chain.items()},
                     "single_graph_us": {n: med(v) for n, v in single.items()}, "chain_rounds": chain,
                     "single_rounds": single}
            points.append(point)
            c, s = point["chain_us"], point["single_graph_us"]
            print(f"{shape} M={M} pick {pick}: chain " + ", ".join(f"{n} {v:.1f}" for n, v in c.items())
                  + " | single (graph, flushed) " + ", ".join(f"{n} {v:.1f}" for n, v in s.items())
                  + f" | x bf16 single: shipped {s['bf16'] / s['shipped']:.3f}, best "
                  + f"{max(s['bf16'] / s[n] for n in VARIANTS):.3f}", flush=True)
            del graphs
        torch.cuda.empty_cache()
    print(write_json(args.out_dir, "pdl-prefetch-probe", {"points": points}, args.tag))


if __name__ == "__main__":
    main()
