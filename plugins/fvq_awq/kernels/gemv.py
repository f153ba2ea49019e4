"""Fused de-quantize + GEMV on CUDA cores (one program per ``BLOCK_N`` output rows per activation row).

Since ``gemm_t`` de-quantizes in packed 16-bit math (2026-12-03) it is faster at M=1 for 16-bit activations; this
kernel serves float32 activations at M <= 16, and M <= 4 where ``gemm_t``'s steps would de-quantize per element
(groups below 32 or inputs not in whole 128s with groups of 32/64: ``dispatch.packed_steps``).

Reads the K-major kernel layout as 3-D word tiles ``[BLOCK_N, R, BK8]``: ``R`` pack blocks of
``BK8`` contiguous words per row and step. The row stride ``K8 = K / 8`` is a kernel argument (not
``K // 8`` computed inside), so Triton sees its divisibility by 16 and issues 16-byte loads; the
first version derived it in-kernel and got scalar 32-bit loads (0.6 TB/s). Nibble ``i`` of the
tile multiplies ``x[k0 + r * 8 * BK8 + i * BK8 + j]`` (``fvq_awq.layout``), a ``[1, R, BK8]``
broadcast; scales/zeros are ``[BLOCK_N, R, 1]`` (one per row and pack block) when a pack block
lies inside one group, so they are loaded once per block instead of gathered per word.
Codes become floats by the ``2**23`` bit trick; ``(2**23 + q) - (2**23 + z)`` is ``q - z``
exactly. float32 accumulation; weights are never de-quantized in memory.

Round 3 tried wide-K tiles with several rows per thread (one activation load serving several rows)
and a register double buffer of the next step's words, scales, zeros and activations; on the H100
both were slower than this kernel (17.9-19 µs vs 16.1 µs at 5120², ``benchmarks/awq_notes.md``),
so this kernel stays. The host side is new: after the first call the compiled kernel is launched
directly (``LaunchCache``) with the per-layer launch plan cached, so an M=1 call costs one launch.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.split_k import SCRATCH, split_k_sum
from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned, cdiv, int_spec
from fvq_awq.kernels.common import blocks_per_step, code_as_float, group_params_3d


@triton.jit
def _awq_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr, N, K, K8, G, stride_xm,
                     stride_om, GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
                     SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    ks = K // SPLIT_K  # this program's share of K (the host makes it a whole number of steps)
    k_start = pid_k * ks
    qw_ptrs = qw_ptr + n3 * K8 + k_start // 8 + r3 * BK8 + j3
    x_ptrs = x_ptr + m * stride_xm + k_start + r3 * (8 * BK8) + j3  # [1, R, BK8]: nibble 0 of each word
    acc = tl.zeros((BLOCK_N, R, BK8), dtype=tl.float32)
    for k0 in range(k_start, k_start + ks, 8 * R * BK8):
        if EVEN_N:
            w = tl.load(qw_ptrs)
        else:
            w = tl.load(qw_ptrs, mask=mask_n[:, None, None], other=0)
        if 8 * BK8 <= GROUP:  # a pack block lies in one group: scale once per word
            s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8), n3, mask_n, G, GROUP)
            t = tl.zeros((BLOCK_N, R, BK8), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(x_ptrs + i * BK8).to(tl.float32)
                t += (code_as_float(w, i) - zb) * xi
            acc += t * s
        else:
            for i in tl.static_range(8):
                s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8) + i * BK8, n3, mask_n, G, GROUP)
                xi = tl.load(x_ptrs + i * BK8).to(tl.float32)
                acc += (code_as_float(w, i) - zb) * (s * xi)
        qw_ptrs += R * BK8
        x_ptrs += 8 * R * BK8
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if SPLIT_K > 1:  # one-launch reduction (fastvideo_quant.kernels.split_k): the last program to arrive stores
        last, total = split_k_sum(out, ws_ptr, lock_ptr, m * tl.num_programs(0) + pid_n, pid_k, tl.arange(0, BLOCK_N),
                                  BLOCK_N, SPLIT_K, mask_n)
        if last:
            _store(total, bias_ptr, out_ptr, m, stride_om, offs_n, mask_n, HAS_BIAS)
    else:
        _store(out, bias_ptr, out_ptr, m, stride_om, offs_n, mask_n, HAS_BIAS)


@triton.jit
def _store(out, bias_ptr, out_ptr, m, stride_om, offs_n, mask_n, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


_LAUNCH = LaunchCache(_awq_gemv_kernel)


def split_for(layout, r: int, want: int) -> int:
    """The largest split ``<= want`` that gives every program a whole number of the kernel's K steps."""
    steps = layout.in_features // (layout.pack_block * blocks_per_step(layout, r))
    return max(d for d in range(1, max(want, 1) + 1) if steps % d == 0)


@functools.lru_cache(maxsize=1024)
def _plan(layout, M: int, has_bias: bool, block_n: int, r: int, num_warps: int, num_stages: int, split_k: int):
    """Everything about a launch that depends only on the layer and M (built once, not per call)."""
    N, K = layout.out_features, layout.in_features
    split = split_for(layout, r, split_k)
    ints = (N, K, K // 8, K // layout.group)
    meta = {"GROUP": layout.group, "BK8": layout.bk8, "R": blocks_per_step(layout, r), "BLOCK_N": block_n,
            "SPLIT_K": split, "HAS_BIAS": has_bias, "EVEN_N": N % block_n == 0}
    # The key holds every constexpr and launch option and what the JIT specializes the ints on.
    static_key = (tuple(meta.values()), num_warps, num_stages, int_spec(*ints))
    grid = (cdiv(N, block_n), M, split)
    return ints, meta, grid, {"num_warps": num_warps, "num_stages": num_stages}, static_key


def awq_gemv(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_n: int = 8, num_warps: int = 4,
             num_stages: int = 3, r: int = 4, split_k: int = 1) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` with ``W`` in the kernel layout; output in ``x.dtype``.

    ``split_k`` > 1 splits K over that many programs per row tile (rounded down to a divisor of the K steps),
    reduced in the same launch; for grids too small to keep enough loads in flight.
    """
    M = x.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    ints, meta, grid, opts, static_key = _plan(layout, M, bias is not None, block_n, r, num_warps, num_stages,
                                               split_k)
    N = ints[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    bias_arg = bias if bias is not None else out
    ws, locks = SCRATCH.for_grid(out, grid, block_n)
    # Per call only what can change between calls: dtypes, device, 16-byte alignment, the row stride.
    key = (static_key, x.dtype, bias_arg.dtype, qweight_k.dtype, scales_k.dtype, zeros_k.dtype, x.device.index,
           aligned(x, qweight_k, scales_k, zeros_k, bias_arg),
           int_spec(x.stride(0)))
    _LAUNCH.launch(key, grid, (x, qweight_k, scales_k, zeros_k, bias_arg, out, ws, locks, *ints, x.stride(0), N),
                   meta, opts)
    return out
