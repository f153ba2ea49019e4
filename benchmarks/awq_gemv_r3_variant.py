"""Round 3's rejected AWQ GEMV variant, kept for the record (nothing imports it; see awq_notes.md round 3).

Measured on an H100 (``results/awq-sweep-r3b_*``): 19.0 µs at 5120² M=1 (best tile), against 16.1 µs
for the kernel in ``fvq_awq/kernels/gemv.py``. Same kernel layout and call signature as
``fvq_awq.kernels.gemv.awq_gemv``, so it can be swept against it (``awq_sweep.runner``).

What it tried: wide-K tiles ``[BLOCK_N, R, BK8]`` with threads along K and several rows per thread
(one activation load serving them); scales/zeros applied per (row, block) after a cross-thread sum,
``s * (sum(q * x) - z * sum(x))``; a register double buffer of the next step's words, scales, zeros
and activations; ``R`` not dividing the block count (the ragged last step is masked).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from fvq_awq.kernels.common import code_as_float

from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned, int_spec

MAGIC_F = tl.constexpr(8388608.0)  # 2**23: code_as_float(w, i) - MAGIC_F is the code q exactly


@triton.jit
def _awq_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, N, K8, G, NBLK, stride_xm, stride_om,
                     GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if EVEN_N:
        mask_n = offs_n >= 0
    else:
        mask_n = offs_n < N
    ONE_GROUP: tl.constexpr = 8 * BK8 <= GROUP  # a pack block lies in one group: one scale per row and block
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    n2 = offs_n[:, None]
    r2 = tl.arange(0, R)[None, :]
    qw_ptrs = qw_ptr + n3 * K8 + r3 * BK8 + j3
    x_ptrs = x_ptr + m * stride_xm + r3 * (8 * BK8) + j3  # [1, R, BK8]: nibble 0 of each word
    # Step 0's operands; inside the loop the next step's are loaded before this step's arithmetic, so a
    # step's DRAM latency (words, scales, zeros) and L2 latency (activations) overlap the previous step.
    w_nx = tl.load(qw_ptrs, mask=mask_n[:, None, None] & (r3 < NBLK), other=0)
    x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, r3 < NBLK, BK8)
    if ONE_GROUP:
        s_nx, z_nx = _params(s_ptr, z_ptr, r2 * (8 * BK8), n2, mask_n[:, None] & (r2 < NBLK), G, GROUP)
    else:
        s_nx = tl.zeros((BLOCK_N, R), dtype=tl.float32)
        z_nx = s_nx
    acc = tl.zeros((BLOCK_N, R), dtype=tl.float32)
    for b0 in range(0, NBLK, R):
        w, s, z = w_nx, s_nx, z_nx
        c0, c1, c2, c3, c4, c5, c6, c7 = x0, x1, x2, x3, x4, x5, x6, x7
        nxt = b0 + R  # the next step's first block; its loads are masked off past the last block
        qw_ptrs += R * BK8
        w_nx = tl.load(qw_ptrs, mask=mask_n[:, None, None] & (nxt + r3 < NBLK), other=0)
        x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs + 8 * R * BK8, nxt + r3 < NBLK, BK8)
        if ONE_GROUP:
            s_nx, z_nx = _params(s_ptr, z_ptr, (nxt + r2) * (8 * BK8), n2, mask_n[:, None] & (nxt + r2 < NBLK),
                                 G, GROUP)
            t = (code_as_float(w, 0) - MAGIC_F) * c0
            t += (code_as_float(w, 1) - MAGIC_F) * c1
            t += (code_as_float(w, 2) - MAGIC_F) * c2
            t += (code_as_float(w, 3) - MAGIC_F) * c3
            t += (code_as_float(w, 4) - MAGIC_F) * c4
            t += (code_as_float(w, 5) - MAGIC_F) * c5
            t += (code_as_float(w, 6) - MAGIC_F) * c6
            t += (code_as_float(w, 7) - MAGIC_F) * c7
            xs = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7
            acc += s * (tl.sum(t, axis=2) - z * tl.sum(xs, axis=2))
        else:  # several groups per pack block: nibble slab i has its own group
            pmask = mask_n[:, None] & (b0 + r2 < NBLK)
            acc += _slab_term(w, 0, c0, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 1, c1, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 2, c2, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 3, c3, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 4, c4, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 5, c5, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 6, c6, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
            acc += _slab_term(w, 7, c7, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP, BK8)
        x_ptrs += 8 * R * BK8
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _x8(ptrs, kmask, BK8: tl.constexpr):
    """The eight nibble slabs' activations ``[1, R, BK8]`` as float32; masked (past the last block) are 0."""
    return (tl.load(ptrs, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 2 * BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 3 * BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 4 * BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 5 * BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 6 * BK8, mask=kmask, other=0).to(tl.float32),
            tl.load(ptrs + 7 * BK8, mask=kmask, other=0).to(tl.float32))


@triton.jit
def _slab_term(w, i: tl.constexpr, xi, s_ptr, z_ptr, b0, r2, n2, pmask, G, GROUP: tl.constexpr,
               BK8: tl.constexpr):
    """``s * (sum q*x - z * sum x)`` of nibble slab ``i`` (its own group), as ``[BLOCK_N, R]``."""
    s, z = _params(s_ptr, z_ptr, (b0 + r2) * (8 * BK8) + i * BK8, n2, pmask, G, GROUP)
    return s * (tl.sum((code_as_float(w, i) - MAGIC_F) * xi, axis=2) - z * tl.sum(xi, axis=2))


@triton.jit
def _params(s_ptr, z_ptr, kpos, n2, mask, G, GROUP: tl.constexpr):
    """Scales and zeros as float32 ``[BLOCK_N, R]`` (``scales_k``/``zeros_k`` are ``[N, G]``); masked are 0."""
    idx = n2 * G + kpos // GROUP
    s = tl.load(s_ptr + idx, mask=mask, other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=mask, other=0).to(tl.float32)
    return s, z


_LAUNCH = LaunchCache(_awq_gemv_kernel)


def gemv_r(layout, r: int) -> int:
    """Pack blocks per step: ``r`` (a power of two), at most the row's block count rounded up to a power of two."""
    blocks = layout.in_features // layout.pack_block
    return max(1, min(r, triton.next_power_of_2(blocks)))


@functools.lru_cache(maxsize=1024)
def _plan(layout, M: int, has_bias: bool, block_n: int, r: int, num_warps: int, num_stages: int):
    """Everything about a launch that depends only on the layer and M (built once, not per call)."""
    N, K = layout.out_features, layout.in_features
    rr = gemv_r(layout, r)
    nblk = K // layout.pack_block
    ints = (N, K // 8, K // layout.group, nblk)
    meta = {"GROUP": layout.group, "BK8": layout.bk8, "R": rr, "BLOCK_N": block_n, "HAS_BIAS": has_bias,
            "EVEN_N": N % block_n == 0}
    static_key = (tuple(meta.values()), num_warps, num_stages, int_spec(*ints, N))
    return ints, meta, (triton.cdiv(N, block_n), M), {"num_warps": num_warps, "num_stages": num_stages}, static_key


def awq_gemv(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_n: int = 16, num_warps: int = 4,
             num_stages: int = 1, r: int = 8) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` with ``W`` in the kernel layout; output in ``x.dtype``."""
    M = x.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    ints, meta, grid, opts, static_key = _plan(layout, M, bias is not None, block_n, r, num_warps, num_stages)
    out = torch.empty((M, ints[0]), dtype=x.dtype, device=x.device)
    bias_arg = bias if bias is not None else out
    # The key covers what the JIT specializes on: dtypes, 16-byte alignment, ints == 1 or divisible by 16.
    key = (static_key, x.dtype, bias_arg.dtype, x.device.index, aligned(x, qweight_k, scales_k, zeros_k, bias_arg),
           int_spec(x.stride(0)))
    _LAUNCH.launch(key, grid, (x, qweight_k, scales_k, zeros_k, bias_arg, out, *ints, x.stride(0), ints[0]), meta,
                   opts)
    return out
