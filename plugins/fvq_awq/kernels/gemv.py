"""Fused de-quantize + GEMV for small M (one program per ``BLOCK_N`` output rows per activation row).

Reads the K-major kernel layout (``fvq_awq.layout``): each program streams ``BLOCK_N`` contiguous
rows of int32 words (coalesced, 16-byte loads), one pack block per iteration. Nibble slab ``i`` of
the block multiplies the contiguous activation slice ``x[k0 + i*bk8 : ...]``. The 4-bit code is
turned into float without a conversion instruction: ``(q | 0x4B000000)`` read as float32 is
``2**23 + q`` exactly, and subtracting ``2**23 + z`` (built the same way) gives ``q - z`` exactly.
When a pack block lies inside one group, ``sum_i (q_i - z) x_i`` is accumulated per word and scaled
once per block (4 instructions per weight). Accumulation is float32; weights never touch global
memory de-quantized.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _awq_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, N, K, stride_xm, stride_om,
                     GROUP: tl.constexpr, BK8: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    PB: tl.constexpr = 8 * BK8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BK8)
    mask_n = offs_n < N
    qw_ptrs = qw_ptr + offs_n[:, None] * (K // 8) + offs_j[None, :]
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BLOCK_N, BK8), dtype=tl.float32)
    for k0 in range(0, K, PB):
        if EVEN_N:
            w = tl.load(qw_ptrs)
        else:
            w = tl.load(qw_ptrs, mask=mask_n[:, None], other=0)
        qw_ptrs += BK8
        if PB <= GROUP:
            g = k0 // GROUP
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.int32)
            zb = (z | 0x4B000000).to(tl.float32, bitcast=True)
            t = tl.zeros((BLOCK_N, BK8), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(x_row + k0 + i * BK8 + offs_j).to(tl.float32)
                qf = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
                t += (qf - zb[:, None]) * xi[None, :]
            acc += t * s[:, None]
        else:
            for i in tl.static_range(8):
                g = (k0 + i * BK8) // GROUP
                s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.float32)
                z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.int32)
                zb = (z | 0x4B000000).to(tl.float32, bitcast=True)
                xi = tl.load(x_row + k0 + i * BK8 + offs_j).to(tl.float32)
                qf = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
                acc += (qf - zb[:, None]) * (s[:, None] * xi[None, :])
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def awq_gemv(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_n: int = 16, num_warps: int = 4,
             num_stages: int = 3) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` with ``W`` in the kernel layout; output in ``x.dtype``."""
    M, K = x.shape
    N = layout.out_features
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, block_n), M)
    _awq_gemv_kernel[grid](
        x, qweight_k, scales_k, zeros_k, bias if bias is not None else out, out, N, K, x.stride(0), out.stride(0),
        GROUP=layout.group, BK8=layout.bk8, BLOCK_N=block_n, HAS_BIAS=bias is not None,
        EVEN_N=N % block_n == 0, num_warps=num_warps, num_stages=num_stages,
    )
    return out
