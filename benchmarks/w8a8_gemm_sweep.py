"""Sweep Triton W8A8 GEMM candidates against what the plugins run now (an H100 experiment).

    python benchmarks/w8a8_gemm_sweep.py --out DIR [--quick] [--m 128 1024 4096] [--dtypes int8 fp8] [--budget-s 420]
    python benchmarks/w8a8_gemm_sweep.py --interpret        # CPU, TRITON_INTERPRET=1: correctness only, tiny shape

What it measures: ``out[m, n] = (xq @ wq.T)[m, n] * x_scale[m] * w_scale[n] (+ bias[n])`` in bf16, with int8
(int32 accumulation) or float8_e4m3fn (float32 accumulation) operands, the scales and bias fused in the epilogue.
Activations ``[M, K]`` row-major, quantized per token; the weight ``[N, K]`` row-major (K-major, as Hopper's
8-bit wgmma reads it). Two candidates, both written here (a winner moves to ``fastvideo_quant/kernels/``):

* ``A``: pointer-based, grouped tile order, like the int8 GEMM of the time (now
  ``fastvideo_quant.kernels.w8a8_gemm``), generic over the operand dtype; with ``SPLIT_K > 1`` each K-split applies
  the scales to its partial sum (linear, so exact up to fp32 rounding) and
  ``atomic_add``s it into a zero-filled fp32 buffer, cast to bf16 afterwards (zero-fill + GEMM + cast are timed);
* ``B``: persistent (one program per SM, looping over tiles) with tensor descriptors (``tl.make_tensor_descriptor``,
  TMA loads and stores; Triton's tutorial 09-persistent-matmul). Reported as skipped, with the error, where the
  API is missing.

For each (dtype, shape K x N of ``bench.DIT_SHAPES``, M) every config of a pruned grid (shared memory, BLOCK_M
suited to M; compiled once per dtype, shapes are runtime ints) is first checked on fresh random inputs against
float32 math of the dequantized operands (rel err above 1e-2 int8 / 2e-2 fp8: FAILED, not timed), then timed
(``bench.median_ms``: do_bench median, L2 flushed). Baselines in the same run: bf16 ``F.linear``, row-wise fp8
``torch._scaled_mm`` (use_fast_accum), the int8 plugin's GEMM (``fastvideo_quant.kernels.w8a8_gemm``, autotuned
on its first call; logged as ``int8_gemm_dequant``, its former name), ``torch._int_mm`` (int8 -> int32 only: a
cuBLAS speed reference), and the per-token quant kernels alone, so ratios
are given excluding and including the quantization. The best config of each case is also checked with a bias and
timed as a CUDA-graph replay. The log goes to stdout (and ``DIR``), every number to
``DIR/w8a8-gemm-sweep_<gpu>_<date>.json``. Cases run most important first and stop at ``--budget-s``.
"""

from __future__ import annotations

import os
import sys

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, median_ms, rel_err
from fastvideo_quant.kernels.triton_launch import INTERPRETED, LaunchCache, aligned, int_spec

FP8 = torch.float8_e4m3fn
QDTYPES = {"int8": torch.int8, "fp8": FP8}
MAX_ERR = {"int8": 1e-2, "fp8": 2e-2}
SMEM_MAX = 220 * 1024
#: (dtype, M) cases, most important first (the sweep stops at its time budget): int8 at large M and fp8 at
#: M=128/1024 are where the plugins miss their targets.
CASE_ORDER = [("int8", 4096), ("fp8", 128), ("fp8", 1024), ("int8", 1024), ("fp8", 4096), ("int8", 128)]


# --------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M row-tiles share each column tile while it is in L2."""
    group_size = GROUP_M * num_pid_n
    first_m = (tile_id // group_size) * GROUP_M
    rows = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile_id % group_size) % rows, (tile_id % group_size) // rows


@triton.jit
def _dot(a, b, acc, IS_INT: tl.constexpr, FP32_DOT: tl.constexpr):
    if IS_INT:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    elif FP32_DOT:  # the interpreter has no fp8 dot; products of e4m3 values are exact in fp32
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _scaled(acc, sa_ptr, sb_ptr, bias_ptr, offs_m, offs_n, M, N, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
            pid_k):
    """float32 ``acc * x_scale[m] * w_scale[n] (+ bias[n], added by the first K split only)``."""
    sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        if SPLIT_K > 1:
            bias = tl.where(pid_k == 0, bias, 0.0)
        out += bias[None, :]
    return out


@triton.jit
def _ptr_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, IS_INT: tl.constexpr, FP32_DOT: tl.constexpr,
                SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    """Candidate A: one program per (output tile, K split); b is weight.t() by strides."""
    pid_k = tl.program_id(1)
    pid_m, pid_n = _tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows/cols wrap onto valid ones so the main loop needs no M/N masks (stores are masked).
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    if SPLIT_K == 1:
        kt_lo = 0
        kt_hi = k_tiles
    else:  # contiguous runs of K tiles per split (the last ones may be short or empty)
        per_split = tl.cdiv(k_tiles, SPLIT_K)
        kt_lo = pid_k * per_split
        kt_hi = tl.minimum(kt_lo + per_split, k_tiles)
    offs_k = kt_lo * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn.to(tl.int64)[None, :] * stride_bn
    if IS_INT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt_lo, kt_hi):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kt * BLOCK_K
            a = tl.load(a_ptrs, mask=tl.arange(0, BLOCK_K)[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=tl.arange(0, BLOCK_K)[:, None] < k_left, other=0.0)
        acc = _dot(a, b, acc, IS_INT, FP32_DOT)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    out = _scaled(acc, sa_ptr, sb_ptr, bias_ptr, offs_m, offs_n, M, N, HAS_BIAS, SPLIT_K, pid_k)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask)
    else:  # c is the zero-filled float32 buffer
        tl.atomic_add(c_ptrs, out, mask=mask, sem="relaxed")


@triton.jit
def _tma_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                HAS_BIAS: tl.constexpr, IS_INT: tl.constexpr, FP32_DOT: tl.constexpr, NUM_SMS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Candidate B: NUM_SMS programs loop over the output tiles; TMA loads (zero-padded past K) and stores."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[stride_bn, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_cm, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS):
        pid_m, pid_n = _tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        if IS_INT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(k_tiles):
            a = a_desc.load([off_m, kt * BLOCK_K])
            b = b_desc.load([off_n, kt * BLOCK_K])  # [BLOCK_N, BLOCK_K]: .T is the K-major operand wgmma reads
            acc = _dot(a, b.T, acc, IS_INT, FP32_DOT)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        out = _scaled(acc, sa_ptr, sb_ptr, bias_ptr, offs_m, offs_n, M, N, HAS_BIAS, 1, 0)
        c_desc.store([off_m, off_n], out.to(c_ptr.dtype.element_ty))  # TMA clips rows/cols past M/N


_A = LaunchCache(_ptr_kernel)
_B = LaunchCache(_tma_kernel)


# --------------------------------------------------------------------------------------------------- configs
class Config(NamedTuple):
    cand: str  # "A" (pointer, split-K) or "B" (persistent, tensor descriptors)
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    def label(self) -> str:
        return (f"{self.cand} {self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages} "
                f"g{self.group_m} k{self.split_k}")


#: Per M bucket, a union of grids: (candidate, (BLOCK_M, BLOCK_N, num_warps) tiles, BLOCK_K values, stages,
#: SPLIT_K values). ~30 configs per bucket: compiles dominate the sweep's time. M=128 is bound by reading the
#: weight (narrow N tiles, long K steps, split-K to fill the 132 SMs: 128x128 tiles give 40 programs at N=5120);
#: M=4096 is compute-bound (128x256 / 256x128 tiles, 8 warps). Candidate B's tensor descriptors stay at
#: BLOCK_K <= 128 (128 bytes: the widest TMA swizzle; the tutorial's fp8 configs stop there too).
Grid = list[tuple[str, list[tuple[int, int, int]], tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
GRIDS: dict[int, Grid] = {
    128: [("A", [(64, 32, 4), (64, 64, 4), (64, 128, 4), (128, 64, 4)], (128, 256), (4,), (1, 2, 4)),
          ("A", [(128, 128, 8)], (128,), (4,), (1, 2, 4)),
          ("B", [(64, 64, 4), (64, 128, 4), (128, 64, 4)], (128,), (4,), (1,))],
    1024: [("A", [(64, 128, 4), (64, 256, 4), (128, 128, 8), (128, 256, 8)], (128,), (3, 4), (1,)),
           ("A", [(64, 128, 4), (128, 128, 8)], (128,), (4,), (2, 4)),
           ("A", [(128, 128, 8), (128, 256, 8)], (64,), (4, 5), (1,)),
           ("B", [(64, 128, 4), (64, 256, 4), (128, 128, 8), (128, 256, 8)], (128,), (3, 4), (1,)),
           ("B", [(128, 128, 8), (128, 256, 8)], (64,), (4,), (1,))],
    4096: [("A", [(128, 128, 8), (128, 256, 8), (256, 128, 8)], (64, 128), (3, 4, 5), (1,)),
           ("A", [(128, 128, 8)], (256,), (3,), (1,)),
           ("B", [(128, 128, 8), (128, 256, 8), (256, 128, 8)], (64, 128), (3, 4), (1,))],
}
QUICK_GRIDS: dict[int, Grid] = {
    128: [("A", [(64, 64, 4), (64, 128, 4), (128, 64, 4)], (256,), (4,), (1, 2, 4)),
          ("B", [(64, 64, 4), (128, 64, 4)], (128,), (4,), (1,))],
    1024: [("A", [(64, 256, 4), (128, 128, 8), (128, 256, 8)], (128,), (4,), (1, 2)),
           ("B", [(128, 128, 8), (128, 256, 8)], (128,), (3, 4), (1,))],
    4096: [("A", [(128, 256, 8), (256, 128, 8)], (64, 128), (3, 4), (1,)),
           ("B", [(128, 256, 8), (256, 128, 8)], (64, 128), (3,), (1,))],
}
#: Interpreter configs (tiny tiles; uneven K, an empty K split and a multi-tile persistent loop are exercised).
INTERPRET_CONFIGS = [Config("A", 16, 32, 128, 1, 4, 1, 2), Config("A", 32, 64, 64, 4, 4, 1, 2),
                     Config("B", 16, 32, 64, 1, 4, 1, 2), Config("B", 32, 64, 128, 1, 4, 1, 2)]
INTERPRET_SHAPE = (192, 96, 40)  # K, N, M


def m_bucket(m: int) -> int:
    return 128 if m <= 256 else (1024 if m <= 2048 else 4096)


def smem_bytes(c: Config) -> int:
    """Pipeline buffers of 1-byte operands: stages x (A tile + B tile)."""
    return c.num_stages * (c.block_m * c.block_k + c.block_k * c.block_n)


def configs_for(m: int, quick: bool) -> list[Config]:
    """The bucket's grid, less configs over the shared-memory budget or with tiles taller than M needs."""
    out = []
    for cand, tiles, bks, stages, splits in (QUICK_GRIDS if quick else GRIDS)[m_bucket(m)]:
        for bm, bn, warps in tiles:
            if bm > max(64, triton.next_power_of_2(m)):  # e.g. no 256-row tiles at M=128 (one half-empty row)
                continue
            for bk in bks:
                for st in stages:
                    for sk in splits:
                        c = Config(cand, bm, bn, bk, sk, warps, st)
                        if smem_bytes(c) <= SMEM_MAX and c not in out:
                            out.append(c)
    return out


# --------------------------------------------------------------------------------------------------- launch
_NUM_SMS: list[int] = []


def num_sms() -> int:
    if not _NUM_SMS:
        _NUM_SMS.append(torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 3)
    return _NUM_SMS[0]


def _set_allocator() -> str | None:
    """Tensor descriptors built on the device need a global scratch allocator; None if set, else why not."""
    try:
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8,
                                                                         device="cuda" if torch.cuda.is_available()
                                                                         else "cpu"))
    except Exception as exc:  # noqa: BLE001 - reported, and candidate B is skipped
        return f"{type(exc).__name__}: {exc}"
    return None


def w8a8_gemm(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None,
              cfg: Config) -> torch.Tensor:
    """bf16 ``(xq @ wq.T) * xs[:, None] * ws[None, :] + bias`` with candidate ``cfg.cand``."""
    m, k = xq.shape
    n = wq.shape[0]
    is_int = xq.dtype == torch.int8
    fp32_dot = INTERPRETED and not is_int
    bias_arg = bias if bias is not None else ws  # never read without HAS_BIAS
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    spec = (xq.dtype, cfg, bias is not None, aligned(xq, xs, wq, ws, bias_arg))
    if cfg.cand == "B":
        out = torch.empty((m, n), dtype=torch.bfloat16, device=xq.device)
        sms = num_sms()
        args = (xq, wq, out, xs, ws, bias_arg, m, n, k, xq.stride(0), wq.stride(0), out.stride(0))
        meta = {"HAS_BIAS": bias is not None, "IS_INT": is_int, "FP32_DOT": fp32_dot, "NUM_SMS": sms,
                "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}
        _B.launch(spec + (int_spec(*args[6:]),), (min(sms, tiles),), args, meta, opts)
        return out
    split = cfg.split_k > 1
    c = torch.zeros((m, n), dtype=torch.float32, device=xq.device) if split else \
        torch.empty((m, n), dtype=torch.bfloat16, device=xq.device)
    args = (xq, wq, c, xs, ws, bias_arg, m, n, k, xq.stride(0), xq.stride(1), wq.stride(1), wq.stride(0),
            c.stride(0), c.stride(1))
    meta = {"HAS_BIAS": bias is not None, "EVEN_K": k % cfg.block_k == 0, "IS_INT": is_int, "FP32_DOT": fp32_dot,
            "SPLIT_K": cfg.split_k, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
            "GROUP_M": cfg.group_m}
    _A.launch(spec + (meta["EVEN_K"], int_spec(*args[6:])), (tiles, cfg.split_k), args, meta, opts)
    return c.to(torch.bfloat16) if split else c


# --------------------------------------------------------------------------------------------------- data
def quantizer(dtype: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The plugin's per-token activation quant kernel: x -> (q [M, K], float32 scale [M])."""
    if dtype == "int8":
        from fvq_int8.kernels.quant import quantize_per_token

        return quantize_per_token
    from fvq_fp8.kernels.act_quant_triton import per_token_quant

    def fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = per_token_quant(x)  # scale [M, 1]
        return q, s.view(-1)
    return fp8


def quant_weight(w: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: int8 (absmax / 127, round) or fp8 (absmax / 448) ``[N, K]`` and float32 scale ``[N]``."""
    if dtype == "int8":
        s = w.abs().amax(1).clamp_min(1e-12) / 127
        return torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8), s.float()
    s = w.abs().amax(1).clamp_min(1e-12) / 448
    return (w / s[:, None]).to(FP8), s.float()


class Case(NamedTuple):
    x: torch.Tensor  # bf16 [M, K]
    w: torch.Tensor  # bf16 [N, K], the dequantized weight (bf16 baseline)
    xq: torch.Tensor
    xs: torch.Tensor
    wq: torch.Tensor
    ws: torch.Tensor
    bias: torch.Tensor  # bf16 [N]
    ref: torch.Tensor  # float32 (xq * xs) @ (wq * ws).T, without bias


def make_case(dtype: str, k: int, n: int, m: int, device: str) -> Case:
    w = torch.randn(n, k, device=device) * k**-0.5
    wq, ws = quant_weight(w, dtype)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    xq, xs = quantizer(dtype)(x)
    wdq = wq.float() * ws[:, None]
    ref = (xq.float() * xs[:, None]) @ wdq.T
    bias = torch.randn(n, device=device, dtype=torch.bfloat16)
    return Case(x, wdq.to(torch.bfloat16), xq, xs, wq, ws, bias, ref)


def check(case: Case, cfg: Config, bias: bool) -> float:
    out = w8a8_gemm(case.xq, case.xs, case.wq, case.ws, case.bias if bias else None, cfg)
    ref = case.ref + case.bias.float()[None, :] if bias else case.ref
    return rel_err(out, ref) if torch.isfinite(out).all() else math.inf


# --------------------------------------------------------------------------------------------------- baselines
def baselines(dtype: str, case: Case, cache: dict) -> dict[str, Any]:
    """bf16, the plugin's current path and cuBLAS references (µs), and their errors where they have them."""
    x, xq, xs, wq, ws = case.x, case.xq, case.xs, case.wq, case.ws
    m, k = x.shape
    key = (k, case.w.shape[0], m)
    if key not in cache:  # bf16 is the same for both dtypes (the int8 case's dequantized weight)
        cache[key] = {"bf16_us": median_ms(lambda: F.linear(x, case.w)) * 1e3,
                      "bf16_graph_us": graph_median_ms(lambda: F.linear(x, case.w)) * 1e3}
    base = dict(cache[key])
    quant = quantizer(dtype)
    base["quant_us"] = median_ms(lambda: quant(x)) * 1e3
    if dtype == "fp8":
        sa, sb = xs.view(-1, 1), ws.view(1, -1)
        scaled = lambda: torch._scaled_mm(xq, wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                          use_fast_accum=True)
        base["scaled_mm_err"] = rel_err(scaled(), case.ref)
        base["scaled_mm_us"] = median_ms(scaled) * 1e3
        base["scaled_mm_graph_us"] = graph_median_ms(scaled) * 1e3
        base["current_us"] = base["scaled_mm_us"]
    else:
        from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm as int8_gemm_dequant

        current = lambda: int8_gemm_dequant(xq, xs, wq, ws, None, torch.bfloat16)
        current()  # the autotuner's first call
        base["int8_gemm_err"] = rel_err(current(), case.ref)
        base["int8_gemm_us"] = median_ms(current) * 1e3
        base["int8_gemm_graph_us"] = graph_median_ms(current) * 1e3
        base["current_us"] = base["int8_gemm_us"]
        try:
            base["int_mm_us"] = median_ms(lambda: torch._int_mm(xq, wq.t())) * 1e3
        except RuntimeError as exc:
            base["int_mm_error"] = str(exc)[:200]
    return base


# --------------------------------------------------------------------------------------------------- sweep
def sweep_case(dtype: str, k: int, n: int, m: int, cfgs: list[Config], base_cache: dict, broken: dict,
               deadline: float, log: Callable[[str], None]) -> dict[str, Any]:
    case = make_case(dtype, k, n, m, "cuda")
    base = baselines(dtype, case, base_cache)
    flops = 2.0 * m * n * k
    rows, skipped = [], 0
    for cfg in cfgs:
        if cfg.cand in broken or (dtype, cfg) in broken:
            continue
        if time.time() > deadline:
            skipped += 1
            continue
        try:
            err = check(case, cfg, bias=False)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is data
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            broken[(dtype, cfg)] = why  # the same on every shape: do not recompile
            log(f"  ERROR {cfg.label()}: {why}")
            rows.append({"cfg": cfg._asdict(), "label": cfg.label(), "error": why})
            continue
        row = {"cfg": cfg._asdict(), "label": cfg.label(), "rel_err": err}
        if err > MAX_ERR[dtype]:
            log(f"  FAILED {cfg.label()}: rel err {err:.3e} > {MAX_ERR[dtype]:.0e}")
            row["failed"] = True
        else:
            fn = lambda cfg=cfg: w8a8_gemm(case.xq, case.xs, case.wq, case.ws, None, cfg)
            us = median_ms(fn, 10, 40) * 1e3
            row.update(us=us, tops=flops / us * 1e-6, vs_bf16=base["bf16_us"] / us,
                       vs_bf16_incl_quant=base["bf16_us"] / (us + base["quant_us"]))
        rows.append(row)
    timed = sorted((r for r in rows if "us" in r), key=lambda r: r["us"])
    if timed:  # the winner: with a bias too, and its GPU time alone
        best = Config(**timed[0]["cfg"])
        timed[0]["bias_rel_err"] = check(case, best, bias=True)
        timed[0]["graph_us"] = graph_median_ms(
            lambda: w8a8_gemm(case.xq, case.xs, case.wq, case.ws, None, best)) * 1e3
    return {"dtype": dtype, "K": k, "N": n, "M": m, **base, "configs": rows, "not_run_budget": skipped}


def report(res: dict[str, Any], log: Callable[[str], None]) -> None:
    b = res["bf16_us"]
    head = f"{res['dtype']} K={res['K']} N={res['N']} M={res['M']}: bf16 {b:.1f}us | quant {res['quant_us']:.1f}us"
    if res["dtype"] == "fp8":
        head += (f" | _scaled_mm {res['scaled_mm_us']:.1f}us = {b / res['scaled_mm_us']:.2f}x, incl quant "
                 f"{b / (res['scaled_mm_us'] + res['quant_us']):.2f}x")
    else:
        head += (f" | int8_gemm_dequant {res['int8_gemm_us']:.1f}us = {b / res['int8_gemm_us']:.2f}x, incl quant "
                 f"{b / (res['int8_gemm_us'] + res['quant_us']):.2f}x")
        if "int_mm_us" in res:
            head += f" | _int_mm (int32 out) {res['int_mm_us']:.1f}us = {b / res['int_mm_us']:.2f}x"
    log(head)
    timed = sorted((r for r in res["configs"] if "us" in r), key=lambda r: r["us"])
    shown = timed[:3] + [next((r for r in timed[3:] if r["cfg"]["cand"] == c), None) for c in "AB"
                         if all(r["cfg"]["cand"] != c for r in timed[:3])]
    for r in filter(None, shown):
        extra = ""
        if "graph_us" in r:
            extra = f" | graph {r['graph_us']:.1f}us, with bias err {r['bias_rel_err']:.1e}"
        log(f"  {r['label']:<32} {r['us']:8.1f}us  {r['vs_bf16']:.2f}x excl / {r['vs_bf16_incl_quant']:.2f}x incl "
            f"quant  {r['tops']:6.0f} TOPS  err {r['rel_err']:.1e}{extra}")
    if res["not_run_budget"]:
        log(f"  ({res['not_run_budget']} configs not run: time budget spent)")


def summarize(results: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    """Per (dtype, M): configs timed on every shape, by the geometric mean of their speedup incl. quant."""
    for dtype, m in sorted({(r["dtype"], r["M"]) for r in results}):
        sub = [r for r in results if (r["dtype"], r["M"]) == (dtype, m)]
        by_cfg: dict[str, list[float]] = {}
        for r in sub:
            for c in r["configs"]:
                if "us" in c:
                    by_cfg.setdefault(c["label"], []).append(c["vs_bf16_incl_quant"])
        ranked = sorted(((math.exp(sum(map(math.log, v)) / len(v)), min(v), lab) for lab, v in by_cfg.items()
                         if len(v) == len(sub)), reverse=True)
        cur = [r["bf16_us"] / (r["current_us"] + r["quant_us"]) for r in sub]
        log(f"\n{dtype} M={m} over {len(sub)} shapes, incl quant: current path geomean "
            f"{math.exp(sum(map(math.log, cur)) / len(cur)):.2f}x (worst {min(cur):.2f}x)")
        for gm, worst, lab in ranked[:3]:
            log(f"  {lab:<32} geomean {gm:.2f}x  worst {worst:.2f}x")


def run_gpu(args: argparse.Namespace) -> None:
    t0 = time.time()
    deadline = t0 + args.budget_s
    env = environment() | {"triton": triton.__version__, "argv": sys.argv[1:], "num_sms": num_sms()}
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    broken: dict = {}
    why = _set_allocator()
    if why is None and not hasattr(tl, "make_tensor_descriptor"):
        why = f"triton {triton.__version__} has no tl.make_tensor_descriptor"
    if why is not None:
        broken["B"] = why
        log(f"candidate B skipped: {why}")
    log(f"{env}")
    results, base_cache = [], {}
    cases = [(d, m) for d, m in CASE_ORDER if d in args.dtypes and m in args.m] + \
        [(d, m) for m in args.m for d in args.dtypes if (d, m) not in CASE_ORDER]
    for dtype, m in cases:
        cfgs = configs_for(m, args.quick)
        log(f"\n=== {dtype} M={m}: {len(cfgs)} configs ({time.time() - t0:.0f}s elapsed)")
        for k, n in DIT_SHAPES:
            res = sweep_case(dtype, k, n, m, cfgs, base_cache, broken, deadline, log)
            report(res, log)
            results.append(res)
    summarize(results, log)
    log(f"\ndone in {time.time() - t0:.0f}s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"w8a8-gemm-sweep{'-quick' if args.quick else ''}_{env['gpu'].lower().replace(' ', '-')}_{env['date']}"
        with open(out / f"{stem}.json", "w") as f:
            json.dump({"environment": env, "skipped_candidates": {k: v for k, v in broken.items() if k == "B"},
                       "config_errors": [{"dtype": k[0], "label": k[1].label(), "error": v}
                                         for k, v in broken.items() if isinstance(k, tuple)],
                       "results": results}, f, indent=1)
        (out / f"{stem}.log").write_text("\n".join(lines) + "\n")
        print(f"wrote {out / stem}.json and .log")


def run_interpret() -> int:
    """Correctness only, on the CPU interpreter: every interpreter config, both dtypes, with and without bias."""
    k, n, m = INTERPRET_SHAPE
    why = _set_allocator()
    failures = 0
    for dtype in QDTYPES:
        torch.manual_seed(0)
        case = make_case(dtype, k, n, m, "cpu")
        for cfg in INTERPRET_CONFIGS:
            for bias in (False, True):
                try:
                    err = check(case, cfg, bias)
                except Exception as exc:  # noqa: BLE001
                    if cfg.cand == "B":
                        print(f"{dtype} {cfg.label()} bias={bias}: SKIPPED (candidate B): "
                              f"{type(exc).__name__}: {exc} (allocator: {why or 'set'})")
                        continue
                    raise
                ok = err <= MAX_ERR[dtype]
                failures += not ok
                print(f"{dtype} K={k} N={n} M={m} {cfg.label()} bias={bias}: rel err {err:.2e} "
                      f"{'ok' if ok else 'FAILED'}")
    print("interpret: all passed" if not failures else f"interpret: {failures} FAILED")
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the JSON and a copy of the log")
    ap.add_argument("--quick", action="store_true", help="a smaller config grid (a second, confirming run)")
    ap.add_argument("--m", type=int, nargs="+", default=[128, 1024, 4096], help="token counts M")
    ap.add_argument("--dtypes", nargs="+", default=list(QDTYPES), choices=list(QDTYPES))
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop timing configs after this many seconds")
    ap.add_argument("--interpret", action="store_true", help="CPU interpreter, tiny shape, correctness only")
    args = ap.parse_args()
    if args.interpret:
        sys.exit(run_interpret())
    if not torch.cuda.is_available():
        sys.exit("w8a8_gemm_sweep: needs a CUDA GPU (or --interpret for the CPU correctness check)")
    run_gpu(args)


if __name__ == "__main__":
    main()
