# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""The fp8 W8A8 pair with programmatic dependent launch and the GEMM's whole weight slice prefetched before its wait.

    python benchmarks/pdl_prefetch_probe.py --out-dir DIR [--ms 17 32 64 128] [--shapes 5120x5120 ...]

Why (twenty-first session): ``pdl_graph_probe.py`` showed that a CUDA graph keeps PDL's programmatic dependency (a
dependent kernel started as soon as the one before it began). The seventh session's PDL prefetched only the first 4
K steps of the weight into L2 before ``gdc_wait`` (~20% at K=5120) and gained nothing as graphs. Here the GEMM asks
for its *whole* weight slice (``prefetch.global.L2`` per 128-byte line, no registers) before it waits for the
quantization kernel, so the weight streams while the activations are quantized. Variants of the pair (per-token
quantization, then the W8A8 GEMM with the route's tile), the kernels copied from the package with the two hooks:

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
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvideo_quant.bench import capture_chain, chain_ms_per_layer, graph_median_ms, write_json  # noqa: E402
from fastvideo_quant.kernels import FP8_AMAX_EPS  # noqa: E402
from fastvideo_quant.kernels.per_token_quant import div_ieee, per_token_quant, quantize_codes  # noqa: E402
from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm  # noqa: E402

VARIANTS = {"base": (False, 0), "pdl": (True, 0), "pdl-pf4": (True, 4), "pdl-pfall": (True, -1),
            "pfall": (False, -1)}


@triton.jit
def prefetch_l2(ptrs):
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, EPS: tl.constexpr, BLOCK_K: tl.constexpr,
                 LAUNCH_DEPS: tl.constexpr):
    # the package's one-pass fp8 per-token kernel at one row a program (its arithmetic, so equal bit for bit)
    if LAUNCH_DEPS:
        gdc_launch_dependents()
    rows = tl.program_id(0) + tl.arange(0, 1)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    offs = tl.arange(0, BLOCK_K)[None, :]
    mask = rmask[:, None] & (offs < K)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = div_ieee(tl.maximum(amax, EPS), tl.full([1], 448.0, tl.float32), False)
    inv = div_ieee(tl.full([1], 1.0, tl.float32), scale, False)
    tl.store(q_ptr + rows64[:, None] * stride_qm + offs,
             quantize_codes(x, inv[:, None], True, False).to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows, scale, mask=rmask)


@triton.jit(do_not_specialize=["M"])
def gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                GDC: tl.constexpr, PF: tl.constexpr):
    # the package's W8A8 GEMM (fp8, no bias, K a multiple of BLOCK_K, weight [N, K] row-major) with the two hooks
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_k[:, None] + offs_bn.to(tl.int64)[None, :] * stride_bn
    if PF != 0:  # the weight does not depend on the kernel before: ask for it before waiting
        lines = tl.arange(0, BLOCK_K // 128) * 128
        base = b_ptr + offs_bn.to(tl.int64)[None, :] * stride_bn
        steps = tl.cdiv(K, BLOCK_K) if PF < 0 else PF
        for j in range(0, steps):
            prefetch_l2(base + (j * BLOCK_K + lines)[:, None])
    if GDC:
        gdc_wait()  # the activations and their scales come from the kernel before this one
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    m_mask = offs_m < M
    n_mask = offs_n < N
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc * sa[:, None] * sb[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def pair(x: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, pick, gdc: bool, pf: int) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    bm, bn, bk, gm, warps, stages = pick
    q = torch.empty((M, K), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(M, dtype=torch.float32, device=x.device)
    quant_kernel[(M,)](x, q, s, M, K, x.stride(0), q.stride(0), EPS=FP8_AMAX_EPS, BLOCK_K=triton.next_power_of_2(K),
                       LAUNCH_DEPS=gdc, num_warps=4 if K <= 4096 else 8)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    gemm_kernel[grid](q, w, out, s, ws, M, N, K, q.stride(0), w.stride(0), out.stride(0), BLOCK_M=bm, BLOCK_N=bn,
                      BLOCK_K=bk, GROUP_M=gm, GDC=gdc, PF=pf, num_warps=warps, num_stages=stages, launch_pdl=gdc)
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
        ws = [(torch.randn(N, K, device="cuda", generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
              for _ in range(L)]
        scales = [torch.rand(N, device="cuda", generator=gen) * 1e-3 + 1e-4 for _ in range(L)]
        wbf = [(w.float() * s[:, None]).to(torch.bfloat16) for w, s in zip(ws, scales, strict=True)]
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
