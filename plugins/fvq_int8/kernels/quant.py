"""Per-token (per-row) symmetric int8 quantization of activations in one Triton kernel.

``q[m, k] = round(x[m, k] * 127 / absmax_m)`` and ``scale[m] = absmax_m / 127`` —
bitsandbytes' ``int8_vectorwise_quant`` at threshold 0, with the scale stored
already divided by 127 so the GEMM epilogue is one multiply. One program per
row: the row is read once when it fits in registers (K <= 16384 covers the DiT
shapes), else in two passes (absmax, then quantize).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.rounding import round_half
from fastvideo_quant.kernels.triton_launch import INTERPRETED, LaunchCache, aligned, int_spec

ONE_PASS_MAX_K = 16384


@triton.jit
def _quant_row_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                      BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr, USE_RINT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        inv = tl.where(amax > 0, 127.0 / amax, 0.0)
        tl.store(q_row + offs, round_half(x * inv, USE_RINT).to(tl.int8), mask=mask)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        amax = tl.max(amax, axis=0)
        inv = tl.where(amax > 0, 127.0 / amax, 0.0)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_row + k0 + offs, round_half(x * inv, USE_RINT).to(tl.int8), mask=mask)
    tl.store(s_ptr + row, amax / 127.0)


_LAUNCH = LaunchCache(_quant_row_kernel, ["x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm", "BLOCK_K",
                                          "ONE_PASS", "USE_RINT"])


def interpreting() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (the core's one answer; a function so tests can patch)."""
    return INTERPRETED


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[M, K]`` and float32 scale ``[M]`` (= absmax / 127) of a 2-D float activation."""
    if x.dim() != 2:
        raise ValueError(f"quantize_per_token: expected a 2-D activation [tokens, in], found shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    one_pass = k <= ONE_PASS_MAX_K
    block = triton.next_power_of_2(k) if one_pass else 4096
    warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    use_rint = not interpreting()
    sx = x.stride(0)
    key = (x.dtype, block, one_pass, use_rint, warps, x.device.index, aligned(x), int_spec(k, sx))
    _LAUNCH.launch(key, (m,), (x, q, s, k, sx, k), {"BLOCK_K": block, "ONE_PASS": one_pass, "USE_RINT": use_rint},
                   {"num_warps": warps})
    return q, s
