"""Triton kernels that quantize activations to float8 e4m3 in one pass over memory.

Imported lazily (only on CUDA, or by tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.

``per_token_quant``: one program per row loads the row once, takes its amax, computes
``scale = max(amax, 1e-12) / 448`` and stores ``clamp(x / scale)`` as fp8 plus the scale —
the read, the reduction and the cast in one launch (a torch version needs ~4 passes).
Rows up to ``ONE_PASS_MAX`` elements stay in registers; longer rows are read twice, the
second time from L2. ``static_quant``: ``clamp(x / s)`` with a given per-tensor scale.
``x * (1/scale)`` with the reciprocal from ``div_rn`` (IEEE), one multiply per element, as the torch
reference does, so results equal it bit for bit (a division per element made the kernel ALU-bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.rounding import round_e4m3
from fastvideo_quant.kernels.triton_launch import INTERPRETED, LaunchCache, aligned, int_spec
from fvq_fp8.format import AMAX_EPS, FP8_DTYPE, FP8_MAX

ONE_PASS_MAX = 16384


@triton.jit
def _to_fp8(x, inv_scale, FP8_MAX: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    """``clamp(x * inv_scale, ±448)``, rounded to e4m3 by hand under the interpreter (the cast does it on GPU)."""
    q = tl.minimum(tl.maximum(x * inv_scale, -FP8_MAX), FP8_MAX)
    if ROUND_BY_HAND:
        q = round_e4m3(q)
    return q


@triton.jit
def _per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                      FP8_MAX: tl.constexpr, EPS: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr,
                      ROUND_BY_HAND: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), EPS) / FP8_MAX
        q = _to_fp8(x, tl.math.div_rn(1.0, scale), FP8_MAX, ROUND_BY_HAND)
        tl.store(q_row + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            mask = offs + k < K
            x = tl.load(x_row + k + offs, mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(acc, tl.abs(x))
        scale = tl.maximum(tl.max(acc, axis=0), EPS) / FP8_MAX
        inv = tl.math.div_rn(1.0, scale)
        for k in range(0, K, BLOCK_K):
            mask = offs + k < K
            x = tl.load(x_row + k + offs, mask=mask, other=0.0).to(tl.float32)
            q = _to_fp8(x, inv, FP8_MAX, ROUND_BY_HAND)
            tl.store(q_row + k + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def _static_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, FP8_MAX: tl.constexpr, BLOCK_K: tl.constexpr,
                   ROUND_BY_HAND: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = offs < K
    inv = tl.math.div_rn(1.0, tl.load(s_ptr))
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    q = _to_fp8(x, inv, FP8_MAX, ROUND_BY_HAND)
    tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


_PER_TOKEN = LaunchCache(_per_token_kernel, ["x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm", "FP8_MAX",
                                             "EPS", "BLOCK_K", "ONE_PASS", "ROUND_BY_HAND"])
_STATIC = LaunchCache(_static_kernel, ["x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm", "FP8_MAX", "BLOCK_K",
                                       "ROUND_BY_HAND"])


def _warps(block: int) -> int:
    # ~16 elements (32 bytes of bf16) per thread keeps loads wide without spilling.
    return max(1, min(16, block // 512))


def per_token_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` (unit stride along K) → (fp8 ``[M, K]``, float32 scales ``[M, 1]``)."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    one_pass = k <= ONE_PASS_MAX
    block = triton.next_power_of_2(k) if one_pass else 4096
    interp = INTERPRETED
    sx = x.stride(0)
    key = (x.dtype, block, one_pass, interp, x.device.index, aligned(x), int_spec(k, sx))
    _PER_TOKEN.launch(key, (m,), (x, q, s, k, sx, k),
                      {"FP8_MAX": FP8_MAX, "EPS": AMAX_EPS, "BLOCK_K": block, "ONE_PASS": one_pass,
                       "ROUND_BY_HAND": interp},
                      {"num_warps": _warps(block)})
    return q, s


def static_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` ``[M, K]`` and a one-element float32 ``scale`` → fp8 ``[M, K]``."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    if m == 0:
        return q
    block = min(4096, triton.next_power_of_2(k))
    interp = INTERPRETED
    sx = x.stride(0)
    key = (x.dtype, block, interp, x.device.index, aligned(x, scale), int_spec(k, sx))
    _STATIC.launch(key, (m, triton.cdiv(k, block)), (x, q, scale, k, sx, k),
                   {"FP8_MAX": FP8_MAX, "BLOCK_K": block, "ROUND_BY_HAND": interp}, {"num_warps": _warps(block)})
    return q
