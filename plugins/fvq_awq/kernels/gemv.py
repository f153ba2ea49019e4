"""Fused de-quantize + GEMV for small M (one program per ``BLOCK_N`` output rows per activation row).

Reads the K-major kernel layout: each program streams ``BLOCK_N`` contiguous int32 rows, ``R`` pack
blocks (``W = R * BK8`` words, 16-byte loads) per step, so enough bytes are in flight to cover memory
latency. Nibble ``i`` of a tile multiplies ``R`` contiguous activation runs (``kernels.common``).
Codes become floats by the ``2**23`` bit trick; ``(2**23 + q) - (2**23 + z)`` is ``q - z`` exactly.
When a pack block lies inside one group, ``sum_i (q_i - z) x_i`` is accumulated per word and scaled
once (4 instructions per weight). float32 accumulation; weights are never de-quantized in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fvq_awq.kernels.common import blocks_per_step, code_as_float, group_params, nibble_offsets


@triton.jit
def _awq_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, N, K, stride_xm, stride_om,
                     GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    W: tl.constexpr = R * BK8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    jj = tl.arange(0, W)
    xoff = nibble_offsets(BK8, W)
    qw_ptrs = qw_ptr + offs_n[:, None] * (K // 8) + jj[None, :]
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BLOCK_N, W), dtype=tl.float32)
    for k0 in range(0, K, 8 * W):
        if EVEN_N:
            w = tl.load(qw_ptrs)
        else:
            w = tl.load(qw_ptrs, mask=mask_n[:, None], other=0)
        qw_ptrs += W
        if 8 * BK8 <= GROUP:  # a pack block lies in one group: scale once per word
            s, zb = group_params(s_ptr, z_ptr, k0 + xoff, offs_n, mask_n, K, GROUP)
            t = tl.zeros((BLOCK_N, W), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(x_row + k0 + xoff + i * BK8).to(tl.float32)
                t += (code_as_float(w, i) - zb) * xi[None, :]
            acc += t * s
        else:
            for i in tl.static_range(8):
                s, zb = group_params(s_ptr, z_ptr, k0 + xoff + i * BK8, offs_n, mask_n, K, GROUP)
                xi = tl.load(x_row + k0 + xoff + i * BK8).to(tl.float32)
                acc += (code_as_float(w, i) - zb) * (s * xi[None, :])
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def awq_gemv(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_n: int = 16, num_warps: int = 4,
             num_stages: int = 3, r: int = 4) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` with ``W`` in the kernel layout; output in ``x.dtype``."""
    M, K = x.shape
    N = layout.out_features
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, block_n), M)
    _awq_gemv_kernel[grid](
        x, qweight_k, scales_k, zeros_k, bias if bias is not None else out, out, N, K, x.stride(0), out.stride(0),
        GROUP=layout.group, BK8=layout.bk8, R=blocks_per_step(layout, r), BLOCK_N=block_n,
        HAS_BIAS=bias is not None, EVEN_N=N % block_n == 0, num_warps=num_warps, num_stages=num_stages,
    )
    return out
