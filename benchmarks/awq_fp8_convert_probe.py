"""Why the int4 -> e4m3 conversion of AWQ's fp8 route ran at a quarter of the memory bandwidth (H100, 2026-12-05:
~55 µs at 5120x5120, where the bf16 de-quantization of the same weight, which writes twice the bytes, takes ~25).

Variants of one kernel over the kernel layout (groups of 128, ``bk8`` = 16: one scale per row and pack block), each
checked against the shipped conversion's bytes (the e4m3 variants) or the shipped bf16 de-quantization first:

- ``MODE`` 0: bf16 out (the shipped de-quantization's arithmetic); 1: bf16 out times the row's ``1/t``;
  2: e4m3 out, clamped (the shipped conversion); 3: e4m3 out, no clamp (the cast saturates);
  4: the bare codes as bytes (store cost alone); 5: e4m3 via a bf16 intermediate cast; 6: as 2, each thread's four
  consecutive bytes packed into an int32 and stored as one (second run).
- ``ONE_STORE``: all 8 nibbles of a word tile in one ``[BLOCK_N, R, 8, BK8]`` tensor, one store of whole
  contiguous 128-input runs per row (the shipped kernels store each nibble's 16-input run separately).
- tiles ``BLOCK_N`` x ``R`` pack blocks, warps.

    python benchmarks/awq_fp8_convert_probe.py [OUT_DIR [TAG]]
"""

from __future__ import annotations

import itertools
import json
import sys

import torch
import triton
import triton.language as tl
from fvq_awq.kernels.common import code_as_float, zero_as_float
from triton.testing import do_bench

from fastvideo_quant.bench import environment, result_stem
from fastvideo_quant.kernels import FP8_DTYPE


@triton.jit
def _convert(qw_ptr, s_ptr, z_ptr, w_ptr, t_ptr, N, K, K8, G, BK8: tl.constexpr, R: tl.constexpr,
             BLOCK_N: tl.constexpr, MODE: tl.constexpr, ONE_STORE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    k0 = pid_k * (8 * R * BK8)
    w = tl.load(qw_ptr + n3 * K8 + pid_k * (R * BK8) + r3 * BK8 + j3, mask=mask_n[:, None, None], other=0)
    g3 = pid_k * R + r3  # (one group a pack block: bk8 = 16, groups of 128)
    s = tl.load(s_ptr + n3 * G + g3, mask=mask_n[:, None, None], other=0).to(tl.float32)
    zb = zero_as_float(tl.load(z_ptr + n3 * G + g3, mask=mask_n[:, None, None], other=0).to(tl.int32))
    inv = 1.0 / tl.load(t_ptr + n3, mask=mask_n[:, None, None], other=1.0)
    if ONE_STORE:
        i4 = tl.arange(0, 8)[None, None, :, None]
        w4 = w[:, :, None, :]
        code = (((w4 >> (4 * i4)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
        v = (code - zb[:, :, :, None]) * s[:, :, :, None]
        ptrs = (w_ptr + offs_n[:, None, None, None] * K + k0 + tl.arange(0, R)[None, :, None, None] * (8 * BK8)
                + i4 * BK8 + tl.arange(0, BK8)[None, None, None, :])
        m4 = mask_n[:, None, None, None]
        if MODE == 0:
            tl.store(ptrs, v.to(tl.bfloat16), mask=m4)
        elif MODE == 1:
            tl.store(ptrs, (v * inv[:, :, :, None]).to(tl.bfloat16), mask=m4)
        elif MODE == 2:
            y = tl.minimum(tl.maximum(v * inv[:, :, :, None], -448.0), 448.0)
            tl.store(ptrs, y.to(tl.float8e4nv), mask=m4)
        elif MODE == 3:
            tl.store(ptrs, (v * inv[:, :, :, None]).to(tl.float8e4nv), mask=m4)
        elif MODE == 4:
            tl.store(ptrs, ((w4 >> (4 * i4)) & 0xF).to(tl.uint8), mask=m4)
        else:
            y = tl.minimum(tl.maximum(v * inv[:, :, :, None], -448.0), 448.0)
            tl.store(ptrs, y.to(tl.bfloat16).to(tl.float8e4nv), mask=m4)
    else:
        out_ptrs = w_ptr + n3 * K + k0 + r3 * (8 * BK8) + j3
        for i in tl.static_range(8):
            v = (code_as_float(w, i) - zb) * s
            if MODE == 0:
                tl.store(out_ptrs + i * BK8, v.to(tl.bfloat16), mask=mask_n[:, None, None])
            elif MODE == 1:
                tl.store(out_ptrs + i * BK8, (v * inv).to(tl.bfloat16), mask=mask_n[:, None, None])
            elif MODE == 2:
                y = tl.minimum(tl.maximum(v * inv, -448.0), 448.0)
                tl.store(out_ptrs + i * BK8, y.to(tl.float8e4nv), mask=mask_n[:, None, None])
            elif MODE == 3:
                tl.store(out_ptrs + i * BK8, (v * inv).to(tl.float8e4nv), mask=mask_n[:, None, None])
            elif MODE == 4:
                tl.store(out_ptrs + i * BK8, ((w >> (4 * i)) & 0xF).to(tl.uint8), mask=mask_n[:, None, None])
            elif MODE == 5:
                y = tl.minimum(tl.maximum(v * inv, -448.0), 448.0)
                tl.store(out_ptrs + i * BK8, y.to(tl.bfloat16).to(tl.float8e4nv), mask=mask_n[:, None, None])
            else:  # 6: four e4m3 bytes packed into an int32, one 4-byte store each (w_ptr is the int32 view)
                y = tl.minimum(tl.maximum(v * inv, -448.0), 448.0).to(tl.float8e4nv)
                b = y.to(tl.uint8, bitcast=True).to(tl.int32).reshape(BLOCK_N, R, BK8 // 4, 4)
                packed = tl.sum(b << (8 * tl.arange(0, 4))[None, None, None, :], axis=3)
                q3 = tl.arange(0, BK8 // 4)[None, None, :]
                tl.store(w_ptr + n3 * (K // 4) + (k0 + r3 * (8 * BK8) + i * BK8) // 4 + q3, packed,
                         mask=mask_n[:, None, None])


_OUT = {0: torch.bfloat16, 1: torch.bfloat16, 2: FP8_DTYPE, 3: FP8_DTYPE, 4: torch.uint8, 5: FP8_DTYPE, 6: FP8_DTYPE}


#: The variants timed (the first run: 0-5, one store or per nibble, at 32/64 rows x 1/2/4 pack blocks x 4/8 warps; the
#: second: 2 and 6, per nibble, at 16/32/64 rows x 1/2 pack blocks x 4/8 warps).
MODES = (2, 6)


def main() -> None:
    from fvq_awq import fp8_compute
    from fvq_awq.kernels.gemm import awq_dequantize
    from fvq_awq.layout import repack_to_kernel
    from fvq_awq.quantizer import quantize_weight

    env = environment()
    results = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for K, N in [(5120, 5120), (13824, 5120), (5120, 13824)]:
        w = torch.randn(N, K, device="cuda", generator=gen) * K**-0.5
        t = quantize_weight(w, None, group_size=128)
        qw, z, s, lay = repack_to_kernel(*(t[k].cuda() for k in ("qweight", "qzeros", "scales")), 128)
        assert lay.bk8 == 16
        tt = fp8_compute.channel_scales(qw, z, s, lay)
        ref8 = awq_dequantize(qw, z, s, lay, FP8_DTYPE, fp8_scale=tt)
        ref16 = awq_dequantize(qw, z, s, lay, torch.bfloat16)
        shipped = {
            "shipped-bf16": lambda a=(qw, z, s, lay): awq_dequantize(*a, torch.bfloat16),
            "shipped-fp8": lambda a=(qw, z, s, lay), t=tt: awq_dequantize(*a, FP8_DTYPE, fp8_scale=t),
        }
        for name, fn in shipped.items():
            us = 1e3 * do_bench(fn, warmup=25, rep=200)
            results.append({"K": K, "N": N, "variant": name, "us": us})
            print(f"{K}x{N} {name}: {us:.1f} µs", flush=True)
        G = K // 128
        for mode, one, bn, r, warps in itertools.product(MODES, (False,), (16, 32, 64), (1, 2), (4, 8)):
            out = torch.empty(N, K, dtype=_OUT[mode], device="cuda")
            target = out.view(torch.int32) if mode == 6 else out
            grid = (triton.cdiv(N, bn), K // (128 * r))

            def fn(out=target, grid=grid, mode=mode, one=one, bn=bn, r=r, warps=warps, a=(qw, s, z), t=tt,
                   ints=(N, K, K // 8, G)):
                _convert[grid](*a, out, t, *ints, BK8=16, R=r, BLOCK_N=bn, MODE=mode, ONE_STORE=one,
                               num_warps=warps)
            try:
                fn()
            except Exception as e:  # noqa: BLE001 (a config that does not compile is recorded, not fatal)
                results.append({"K": K, "N": N, "mode": mode, "one_store": one, "block_n": bn, "r": r,
                                "warps": warps, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            if mode in (2, 3, 5, 6):
                # (1/t by '/' is not IEEE on the GPU: allow a one-step difference on a few bytes)
                diff = (out.view(torch.uint8).int() - ref8.view(torch.uint8).int()).abs()
                ok = int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3
            elif mode == 0:
                ok = torch.equal(out, ref16)
            else:
                ok = True
            us = 1e3 * do_bench(fn, warmup=25, rep=100)
            row = {"K": K, "N": N, "mode": mode, "one_store": one, "block_n": bn, "r": r, "warps": warps, "us": us,
                   "ok": ok}
            results.append(row)
            print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results"
    tag = sys.argv[2] if len(sys.argv) > 2 else None
    with open(f"{out_dir}/{result_stem('awq-fp8-convert-probe', env, tag)}.json", "w") as f:
        json.dump({"env": env, "results": results}, f, indent=1)
    for K, N in [(5120, 5120), (13824, 5120), (5120, 13824)]:
        rows = [r for r in results if r["K"] == K and r["N"] == N and "us" in r and "mode" in r]
        for mode in MODES:
            best = min((r for r in rows if r["mode"] == mode), key=lambda r: r["us"], default=None)
            if best:
                print(f"best {K}x{N} mode {mode}: {best}")


if __name__ == "__main__":
    main()
