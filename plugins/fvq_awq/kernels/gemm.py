"""Fused de-quantize + tensor-core GEMM for small/medium M, and a de-quantize kernel for large M.

Both read the K-major kernel layout (``fvq_awq.layout``). A pack block of ``bk8`` words per row is
unpacked to ``[BLOCK_N, bk8, 8]`` codes; flattened, column ``f = 8j + i`` holds input
``k0 + i*bk8 + j``, so the activation tile is gathered with the same permutation and
``tl.dot(x_tile, w_tile.T)`` needs no shuffle of the weights. The de-quantized tile lives only in
registers/shared memory. ``SPLIT_K > 1`` adds float32 partial sums atomically (more programs for
narrow layers).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dequant_tile(w, s_ptr, z_ptr, offs_n, mask_n, k0, N, GROUP: tl.constexpr, BK8: tl.constexpr):
    """int32 words ``[BLOCK_N, BK8]`` → float32 ``[BLOCK_N, BK8, 8]`` weights ``(q - z) * s``."""
    offs_i = tl.arange(0, 8)
    qf = (((w[:, :, None] >> (offs_i * 4)[None, None, :]) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
    if 8 * BK8 <= GROUP:
        g = k0 // GROUP
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.float32)
        z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.int32)
        zb = (z | 0x4B000000).to(tl.float32, bitcast=True)
        return (qf - zb[:, None, None]) * s[:, None, None]
    g = (k0 + offs_i * BK8) // GROUP
    idx = g[None, None, :] * N + offs_n[:, None, None]
    m3 = mask_n[:, None, None]
    s = tl.load(s_ptr + idx, mask=m3, other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=m3, other=0).to(tl.int32)
    zb = (z | 0x4B000000).to(tl.float32, bitcast=True)
    return (qf - zb) * s


@triton.jit
def _awq_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                     GROUP: tl.constexpr, BK8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    PB: tl.constexpr = 8 * BK8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_j = tl.arange(0, BK8)
    offs_f = tl.arange(0, PB)
    perm = (offs_f % 8) * BK8 + offs_f // 8  # column f of the unpacked tile is input k0 + perm[f]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * PB, K, SPLIT_K * PB):
        w = tl.load(qw_ptr + offs_n[:, None] * (K // 8) + (k0 // 8 + offs_j)[None, :], mask=mask_n[:, None], other=0)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + perm)[None, :], mask=mask_m[:, None], other=0)
        wd = _dequant_tile(w, s_ptr, z_ptr, offs_n, mask_n, k0, N, GROUP, BK8)
        b = tl.reshape(wd, (BLOCK_N, PB)).to(a.dtype)
        acc = tl.dot(a, tl.trans(b), acc)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask)


@triton.jit
def _awq_dequant_kernel(qw_ptr, s_ptr, z_ptr, w_ptr, N, K, GROUP: tl.constexpr, BK8: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    k0 = pid_k * 8 * BK8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_j = tl.arange(0, BK8)
    w = tl.load(qw_ptr + offs_n[:, None] * (K // 8) + (k0 // 8 + offs_j)[None, :], mask=mask_n[:, None], other=0)
    wd = tl.permute(_dequant_tile(w, s_ptr, z_ptr, offs_n, mask_n, k0, N, GROUP, BK8), (0, 2, 1))
    offs_i = tl.arange(0, 8)
    ptrs = w_ptr + offs_n[:, None, None] * K + k0 + offs_i[None, :, None] * BK8 + offs_j[None, None, :]
    tl.store(ptrs, wd.to(w_ptr.dtype.element_ty), mask=mask_n[:, None, None])


def awq_gemm(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_m: int = 16, block_n: int = 64, split_k: int = 1,
             num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """Fused ``x [M, K] @ W.T (+ bias)``; output in ``x.dtype`` (fp16/bf16 activations)."""
    M, K = x.shape
    N = layout.out_features
    x = x if x.stride(-1) == 1 else x.contiguous()
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m), split_k)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device) if split_k == 1 else \
        torch.zeros((M, N), dtype=torch.float32, device=x.device)
    _awq_gemm_kernel[grid](
        x, qweight_k, scales_k, zeros_k, bias if bias is not None else out, out, M, N, K, x.stride(0), out.stride(0),
        GROUP=layout.group, BK8=layout.bk8, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT_K=split_k,
        HAS_BIAS=bias is not None, num_warps=num_warps, num_stages=num_stages,
    )
    if split_k == 1:
        return out
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def awq_dequantize(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
                   dtype: torch.dtype, block_n: int = 64) -> torch.Tensor:
    """Kernel layout → ``W [N, K]`` in ``dtype`` (for the de-quantize-then-cuBLAS path at large M)."""
    N, K = layout.out_features, layout.in_features
    w = torch.empty((N, K), dtype=dtype, device=qweight_k.device)
    grid = (triton.cdiv(N, block_n), K // layout.pack_block)
    _awq_dequant_kernel[grid](qweight_k, scales_k, zeros_k, w, N, K, GROUP=layout.group, BK8=layout.bk8,
                              BLOCK_N=block_n, num_warps=4)
    return w
