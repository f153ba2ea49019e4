# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""AWQ at large M: does cuBLAS multiply faster with the de-quantized weight stored ``[K, N]`` (``x @ Wt``, the "NN"
product) than ``[N, K]`` (``F.linear``, "TN", what the shipped path and the bf16 baseline run), or through cuBLASLt?

    python benchmarks/bf16_orient_probe.py [--m 1024 2048 4096 8192] [--rounds 3] [--out FILE.json]

Why (thirty-fifth session): above M=128 the exact AWQ path is de-quantize (bf16 ``[N, K]``, ~30 µs at 5120² on the
H100) + the same cuBLAS GEMM as the baseline, so it cannot pass bf16 (0.92-0.99x at M=4096). If another orientation
or library of the same bf16 GEMM is a few % faster, the de-quantize kernel can write that layout (``[K, N]`` is a
transposed store from the N-major kernel layout) and the path gains it. Prediction: within ±2% (the same nvjet
kernels serve both), so no gain; a gain of ≥3% at M=4096 would be worth a kernel change.

Variants, each timed L2-flushed (``median_ms``) and as a CUDA-graph replay, ``--rounds`` alternating rounds:
``tn`` ``F.linear(x, W)`` (the baseline), ``nn`` ``torch.mm(x, Wt)``, ``lt_tn``/``lt_nn`` the same under
``torch.backends.cuda.preferred_blas_library("cublaslt")``; the whole paths ``path_tn`` (the shipped layer) and
``path_nn`` (a probe kernel de-quantizing into ``[K, N]`` + ``torch.mm``); and the two de-quantize kernels alone.
Checks first, on fresh inputs: the probe kernel's ``[K, N]`` bit for bit against the shipped ``[N, K]`` transposed;
each product within 1e-2 of float32 math on the same weight.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fvq_awq.kernels.common import blocks_per_step, code_as_float, group_params_3d
from fvq_awq.kernels.gemm import awq_dequantize

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms, median_ms, rel_err


@triton.jit
def _dequant_kn_kernel(qw_ptr, s_ptr, z_ptr, w_ptr, N, K, K8, G, GROUP: tl.constexpr, BK8: tl.constexpr,
                       R: tl.constexpr, BLOCK_N: tl.constexpr):
    """The shipped ``_awq_dequant_kernel``'s tiles, stored transposed: ``w[k, n]`` (row stride N)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    k0 = pid_k * (8 * R * BK8)
    w = tl.load(qw_ptr + n3 * K8 + pid_k * (R * BK8) + r3 * BK8 + j3, mask=mask_n[:, None, None], other=0)
    kpos = k0 + r3 * (8 * BK8) + j3
    if 8 * BK8 <= GROUP:
        s, zb = group_params_3d(s_ptr, z_ptr, kpos - j3, n3, mask_n, G, GROUP)
    for i in tl.static_range(8):
        if 8 * BK8 > GROUP:
            s, zb = group_params_3d(s_ptr, z_ptr, kpos - j3 + i * BK8, n3, mask_n, G, GROUP)
        v = (code_as_float(w, i) - zb) * s
        tl.store(w_ptr + (kpos + i * BK8) * N + n3, v.to(w_ptr.dtype.element_ty), mask=mask_n[:, None, None])


def dequant_kn(layer, dtype: torch.dtype, block_n: int, r: int, num_warps: int, out: torch.Tensor) -> torch.Tensor:
    lay = layer.awq_layout
    N, K = lay.out_features, lay.in_features
    rr = blocks_per_step(lay, r)
    grid = (triton.cdiv(N, block_n), K // (lay.pack_block * rr))
    _dequant_kn_kernel[grid](layer.qweight_k, layer.scales_k, layer.zeros_k, out, N, K, K // 8, K // lay.group,
                             GROUP=lay.group, BK8=lay.bk8, R=rr, BLOCK_N=block_n, num_warps=num_warps)
    return out


class Lt:
    """Run under the cuBLASLt preference (set and restored around the call and around graph capture)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library("cublaslt")
        try:
            return self.fn()
        finally:
            torch.backends.cuda.preferred_blas_library(before)


def kernel_names(fn) -> list[str]:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tiles", nargs="+", default=["32,2,8", "64,1,8", "16,2,4", "64,2,8"],
                   help="block_n,r,num_warps of the [K, N] de-quantize kernel (the fastest is used for path_nn)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    env = environment()
    print(env, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(7)
    rows = []
    for K, N in DIT_SHAPES:
        w = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
        layer = build_layer("awq", w, {})
        lay = layer.awq_layout
        wd = awq_dequantize(layer.qweight_k, layer.zeros_k, layer.scales_k, lay, torch.bfloat16)
        wt = torch.empty(K, N, dtype=torch.bfloat16, device="cuda")
        tiles = []
        for spec in a.tiles:
            bn, r, nw = (int(v) for v in spec.split(","))
            wt.fill_(float("nan"))
            dequant_kn(layer, torch.bfloat16, bn, r, nw, wt)
            torch.cuda.synchronize()
            if not torch.equal(wt, wd.t()):
                raise AssertionError(f"{K}x{N} tile {spec}: the [K, N] kernel differs from the shipped one, transposed")
            us = median_ms(lambda: dequant_kn(layer, torch.bfloat16, bn, r, nw, wt)) * 1e3
            tiles.append((us, (bn, r, nw)))
        tiles.sort()
        best = tiles[0][1]
        deq_nk_us = median_ms(lambda: awq_dequantize(layer.qweight_k, layer.zeros_k, layer.scales_k, lay,
                                                     torch.bfloat16)) * 1e3
        print(f"{K}x{N} de-quantize [N,K] {deq_nk_us:.1f} us; [K,N] tiles " +
              ", ".join(f"{t}: {us:.1f}" for us, t in tiles), flush=True)
        for M in a.m:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            ref = F.linear(x.float(), wd.float())
            fns = {
                "tn": lambda: F.linear(x, w),
                "nn": lambda: torch.mm(x, wt),
                "lt_tn": Lt(lambda: F.linear(x, w)),
                "lt_nn": Lt(lambda: torch.mm(x, wt)),
                "path_tn": lambda: layer(x)[0],
                "path_nn": lambda: torch.mm(x, dequant_kn(layer, torch.bfloat16, *best, wt)),
            }
            ref_w = F.linear(x.float(), w.float())
            for name in ("tn", "nn", "lt_tn", "lt_nn", "path_tn", "path_nn"):
                e = rel_err(fns[name]().float(), ref_w if name in ("tn", "lt_tn") else ref)
                if e > 1e-2:
                    raise AssertionError(f"{K}x{N} M={M} {name}: rel err {e:.2e}")
            if M == a.m[0] and (K, N) == DIT_SHAPES[0]:
                for name in ("tn", "nn", "lt_tn", "lt_nn"):
                    print(f"  kernels {name}: {kernel_names(fns[name])}", flush=True)
            times: dict[str, list[float]] = {}
            for _ in range(a.rounds):
                for name, fn in fns.items():
                    times.setdefault(f"{name}_eager", []).append(median_ms(fn) * 1e3)
                    if name.startswith("lt"):
                        before = torch.backends.cuda.preferred_blas_library()
                        torch.backends.cuda.preferred_blas_library("cublaslt")
                        try:
                            g = graph_median_ms(fn.fn) * 1e3
                        finally:
                            torch.backends.cuda.preferred_blas_library(before)
                    else:
                        g = graph_median_ms(fn) * 1e3
                    times.setdefault(f"{name}_graph", []).append(g)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"K": K, "N": N, "M": M, "tile_kn": best, "us": times, "median_us": med}
            rows.append(row)
            base = med["tn_graph"]
            print(f"{K}x{N} M={M}: graph tn {base:.1f} us | " + " ".join(
                f"{n} {base / med[n + '_graph']:.3f}x" for n in ("nn", "lt_tn", "lt_nn", "path_tn", "path_nn"))
                + f" | eager path_tn {med['tn_eager'] / med['path_tn_eager']:.3f}x path_nn "
                f"{med['tn_eager'] / med['path_nn_eager']:.3f}x", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
