"""Fused de-quantize + tensor-core GEMM for small/medium M, and a de-quantize kernel for large M.

Both read the K-major kernel layout in ``[BLOCK_N, W]`` word tiles (``kernels.common``). For nibble
``i`` the de-quantized slab ``[BLOCK_N, W]`` pairs with activations at ``R`` contiguous runs, so the
GEMM does one ``tl.dot`` per nibble (K-extent ``W``) with no reshape of the weight tile. The
de-quantized tile lives only in registers/shared memory. ``SPLIT_K > 1`` (more programs for narrow layers) is
reduced in the same launch, deterministically (``fastvideo_quant.kernels.split_k``: partials summed in split order
by the last program to arrive, which applies the bias and stores the output dtype).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels import FP8_DTYPE
from fastvideo_quant.kernels.per_token_quant import div_ieee, quantize_codes
from fastvideo_quant.kernels.split_k import SCRATCH, split_k_sum
from fastvideo_quant.kernels.triton_launch import INTERPRETED, BoundLaunch, LaunchCache, aligned, int_spec
from fvq_awq.kernels.common import (
    blocks_per_step,
    code_as_float,
    dequant8_float,
    dequant8_float4,
    dequant8_packed,
    dequant8_packed4,
    group_params,
    group_params_3d,
    nibble_offsets,
    packed_neg_zero,
    step_group_count,
    step_groups,
    zero_as_float,
)


@triton.jit
def _slab(w, i: tl.constexpr, s_ptr, z_ptr, kbase, offs_n, mask_n, K, GROUP: tl.constexpr, BK8: tl.constexpr,
          s, zb):
    """Float32 weights of nibble ``i`` of a word tile; ``s``/``zb`` are reused when a block is one group."""
    if 8 * BK8 > GROUP:
        s, zb = group_params(s_ptr, z_ptr, kbase + i * BK8, offs_n, mask_n, K, GROUP)
    return (code_as_float(w, i) - zb) * s


@triton.jit
def _awq_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_om,
                     GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    W: tl.constexpr = R * BK8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    jj = tl.arange(0, W)
    xoff = nibble_offsets(BK8, W)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * 8 * W, K, SPLIT_K * 8 * W):
        w = tl.load(qw_ptr + offs_n[:, None] * (K // 8) + (k0 // 8 + jj)[None, :], mask=mask_n[:, None], other=0)
        s, zb = group_params(s_ptr, z_ptr, k0 + xoff, offs_n, mask_n, K, GROUP)
        for i in tl.static_range(8):
            a = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + xoff + i * BK8)[None, :],
                        mask=mask_m[:, None], other=0)
            b = _slab(w, i, s_ptr, z_ptr, k0 + xoff, offs_n, mask_n, K, GROUP, BK8, s, zb).to(a.dtype)
            acc = tl.dot(a, tl.trans(b), acc)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        _store_tile(acc, bias_ptr, out_ptrs, offs_n[None, :], mask_n[None, :], mask, HAS_BIAS)
    else:
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        last, total = split_k_sum(acc, ws_ptr, lock_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k, local,
                                  BLOCK_M * BLOCK_N, SPLIT_K, mask)
        if last:
            _store_tile(total, bias_ptr, out_ptrs, offs_n[None, :], mask_n[None, :], mask, HAS_BIAS)


@triton.jit
def _store_tile(acc, bias_ptr, out_ptrs, bias_offs, bias_mask, mask, HAS_BIAS: tl.constexpr):
    """Add the bias (``bias_offs``/``bias_mask`` broadcast against ``acc``) and store in the output dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + bias_offs, mask=bias_mask, other=0).to(tl.float32)
    tl.store(out_ptrs, acc.to(out_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _awq_gemm_t_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr, M, N, K, K8, G, stride_xm,
                       stride_om,
                       GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SCALE_AFTER: tl.constexpr, PREFETCH_SZ: tl.constexpr, PACKED: tl.constexpr,
                       CHAINS: tl.constexpr = 2, SCALE_IN: tl.constexpr = False, GPS: tl.constexpr = 1):
    """``out.T [BLOCK_N, BLOCK_M] = W_tile @ x_tile.T``: the de-quantized weights are the dot's left operand.

    On Hopper a left operand computed in registers feeds the tensor cores straight from registers
    (no shared-memory round trip per slab); the activations ``[W, BLOCK_M]`` are the right operand.
    ``SCALE_AFTER`` (a whole step inside one group): the slabs hold the exact integers ``q - z``
    and the group scale multiplies the ``[BLOCK_N, BLOCK_M]`` partial sum once per step. Round 3: the
    step's eight dots feed two partial sums (even / odd nibbles), two independent MMA chains instead
    of one chain of eight (M=16 on the H100: 26.3 -> 24.8 µs at 5120², 56.4 -> 45.7 µs at 13824x5120).
    ``PACKED`` (with ``SCALE_AFTER``, 16-bit activations, on a GPU): the slabs come from ``dequant8_packed`` — the
    exact ``q - z`` in the activations' 16-bit type, three instructions per two weights — instead of float32
    ``q - z`` and a conversion (about four per weight): the step's loop body on Hopper shrinks from 541 to 293
    instructions at ``BLOCK_N=64`` (Triton 3.9 SASS; the de-quantization was the largest part of it).
    ``CHAINS=1``: one partial sum per step instead of two (two hold ``2 * BLOCK_N * BLOCK_M`` more float32 registers,
    which spill at larger tiles). ``SCALE_IN`` (with ``SCALE_AFTER``'s one-group steps): the weights are scaled
    before the dot, ``bf16((q - z) * s)`` as the de-quantize path rounds them, and the dots accumulate into one
    running sum — no partial sums at all (mid M, where the accumulator is large).
    ``GPS`` (groups per step, 2 or 4: groups of 64 or 32 inputs, one pack block of 128 per step): the step's nibble
    slabs ``i`` lie in group ``i * GPS // 8``; ``SCALE_AFTER``/``SCALE_IN`` and ``PACKED`` work per group (zero points
    per byte of the word, ``dequant8_packed4``; one partial sum per group, scaled once).
    """
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    W: tl.constexpr = R * BK8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    xoff = nibble_offsets(BK8, W)
    qw_ptrs = qw_ptr + offs_n[:, None] * K8 + (pid_k * W + tl.arange(0, W))[None, :]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (pid_k * 8 * W + xoff)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # PREFETCH_SZ: the group's scale and zero for the next step are loaded one step ahead (the software
    # pipeliner, num_stages, covers the words and activations that feed the dot, not the scale used after it).
    gidx = offs_n * G + (pid_k * 8 * W) // GROUP
    s_nx = tl.load(s_ptr + gidx, mask=mask_n, other=0)
    z_nx = tl.load(z_ptr + gidx, mask=mask_n, other=0)
    for k0 in range(pid_k * 8 * W, K, SPLIT_K * 8 * W):
        w = tl.load(qw_ptrs, mask=mask_n[:, None], other=0)
        if (SCALE_AFTER or SCALE_IN) and GPS > 1:
            sg0, sg1, sg2, sg3, zg0, zg1, zg2, zg3 = step_groups(s_ptr, z_ptr, offs_n * G + k0 // GROUP, mask_n, GPS)
            sg = (sg0, sg1, sg2, sg3)  # by byte of the word: nibbles 2b, 2b + 1
            zbs = (zero_as_float(zg0)[:, None], zero_as_float(zg1)[:, None], zero_as_float(zg2)[:, None],
                   zero_as_float(zg3)[:, None])  # (float32 paths only; unused values are dropped by the compiler)
            if SCALE_IN:
                for i in tl.static_range(8):
                    b = tl.load(x_ptrs + i * BK8, mask=mask_m[None, :], other=0)
                    acc = tl.dot(((code_as_float(w, i) - zbs[i // 2]) * sg[i // 2][:, None]).to(b.dtype), b, acc)
            else:
                if PACKED and x_ptr.dtype.element_ty != tl.float32:
                    is_bf16_g: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
                    slabs = dequant8_packed4(
                        w, tl.broadcast_to(packed_neg_zero(zg0, is_bf16_g)[:, None], (BLOCK_N, W)),
                        tl.broadcast_to(packed_neg_zero(zg1, is_bf16_g)[:, None], (BLOCK_N, W)),
                        tl.broadcast_to(packed_neg_zero(zg2, is_bf16_g)[:, None], (BLOCK_N, W)),
                        tl.broadcast_to(packed_neg_zero(zg3, is_bf16_g)[:, None], (BLOCK_N, W)), is_bf16_g)
                else:
                    slabs = dequant8_float4(w, zbs[0], zbs[1], zbs[2], zbs[3], x_ptr.dtype.element_ty)
                PER: tl.constexpr = 8 // GPS  # nibble slabs per group
                for g in tl.static_range(GPS):
                    part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                    for j in tl.static_range(PER):
                        part = tl.dot(slabs[g * PER + j], tl.load(x_ptrs + (g * PER + j) * BK8, mask=mask_m[None, :],
                                                                  other=0), part)
                    acc += part * sg[(g * PER) // 2][:, None]
        elif SCALE_AFTER or SCALE_IN:
            if PREFETCH_SZ:
                s = s_nx.to(tl.float32)
                zi = z_nx.to(tl.int32)
                gidx = offs_n * G + tl.minimum(k0 + SPLIT_K * 8 * W, K - 1) // GROUP  # last step: unused reload
                s_nx = tl.load(s_ptr + gidx, mask=mask_n, other=0)
                z_nx = tl.load(z_ptr + gidx, mask=mask_n, other=0)
            else:
                gidx = offs_n * G + k0 // GROUP
                s = tl.load(s_ptr + gidx, mask=mask_n, other=0).to(tl.float32)
                zi = tl.load(z_ptr + gidx, mask=mask_n, other=0).to(tl.int32)
            if SCALE_IN:
                zb = zero_as_float(zi)[:, None]
                for i in tl.static_range(8):
                    b = tl.load(x_ptrs + i * BK8, mask=mask_m[None, :], other=0)
                    acc = tl.dot(((code_as_float(w, i) - zb) * s[:, None]).to(b.dtype), b, acc)
            else:
                if PACKED and x_ptr.dtype.element_ty != tl.float32:
                    is_bf16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
                    slabs = dequant8_packed(w, tl.broadcast_to(packed_neg_zero(zi, is_bf16)[:, None], (BLOCK_N, W)),
                                            is_bf16)
                else:
                    slabs = dequant8_float(w, zero_as_float(zi)[:, None],
                                           x_ptr.dtype.element_ty)
                # Two partial sums (even / odd nibbles): two independent MMA chains instead of one of eight.
                part0 = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                if CHAINS == 2:
                    part1 = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                    for i in tl.static_range(0, 8, 2):
                        b0 = tl.load(x_ptrs + i * BK8, mask=mask_m[None, :], other=0)
                        b1 = tl.load(x_ptrs + (i + 1) * BK8, mask=mask_m[None, :], other=0)
                        part0 = tl.dot(slabs[i], b0, part0)
                        part1 = tl.dot(slabs[i + 1], b1, part1)
                    part0 += part1
                else:
                    for i in tl.static_range(8):
                        part0 = tl.dot(slabs[i], tl.load(x_ptrs + i * BK8, mask=mask_m[None, :], other=0), part0)
                acc += part0 * s[:, None]
        else:
            s, zb = group_params(s_ptr, z_ptr, k0 + xoff, offs_n, mask_n, K, GROUP)
            for i in tl.static_range(8):
                b = tl.load(x_ptrs + i * BK8, mask=mask_m[None, :], other=0)
                a = _slab(w, i, s_ptr, z_ptr, k0 + xoff, offs_n, mask_n, K, GROUP, BK8, s, zb).to(b.dtype)
                acc = tl.dot(a, b, acc)
        qw_ptrs += SPLIT_K * W
        x_ptrs += SPLIT_K * 8 * W
    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        _store_tile(acc, bias_ptr, out_ptrs, offs_n[:, None], mask_n[:, None], mask, HAS_BIAS)
    else:
        local = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
        last, total = split_k_sum(acc, ws_ptr, lock_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k, local,
                                  BLOCK_N * BLOCK_M, SPLIT_K, mask)
        if last:
            _store_tile(total, bias_ptr, out_ptrs, offs_n[:, None], mask_n[:, None], mask, HAS_BIAS)


@triton.jit
def _awq_dequant_kernel(qw_ptr, s_ptr, z_ptr, w_ptr, t_ptr, N, K, K8, G, GROUP: tl.constexpr, BK8: tl.constexpr,
                        R: tl.constexpr, BLOCK_N: tl.constexpr, TO_FP8: tl.constexpr, K_FAST: tl.constexpr,
                        INTERP: tl.constexpr):
    """3-D word tiles ``[BLOCK_N, R, BK8]`` (16-byte loads); nibble ``i`` stores ``R`` runs of ``BK8`` values.
    ``TO_FP8``: each output row's values times ``1 / t[n]`` (IEEE reciprocal), clamped to ±448 and stored as e4m3.
    ``K_FAST``: a 1-D grid whose neighbouring programs take neighbouring K tiles of the same rows (their stores land
    in the same rows' next bytes); else a 2-D grid walking the rows first."""
    if K_FAST:
        nk = K8 // (R * BK8)
        pid_n = tl.program_id(0) // nk
        pid_k = tl.program_id(0) % nk
    else:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    k0 = pid_k * (8 * R * BK8)
    w = tl.load(qw_ptr + n3 * K8 + pid_k * (R * BK8) + r3 * BK8 + j3, mask=mask_n[:, None, None], other=0)
    out_ptrs = w_ptr + n3 * K + k0 + r3 * (8 * BK8) + j3
    if TO_FP8:
        inv = div_ieee(tl.full([BLOCK_N, 1, 1], 1.0, tl.float32),
                       tl.load(t_ptr + n3, mask=mask_n[:, None, None], other=1.0), INTERP)
    if 8 * BK8 <= GROUP:
        s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8), n3, mask_n, G, GROUP)
    for i in tl.static_range(8):
        if 8 * BK8 > GROUP:
            s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8) + i * BK8, n3, mask_n, G, GROUP)
        v = (code_as_float(w, i) - zb) * s
        if TO_FP8:
            v = quantize_codes(v, inv, True, INTERP)
        tl.store(out_ptrs + i * BK8, v.to(w_ptr.dtype.element_ty), mask=mask_n[:, None, None])


def awq_gemm(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
             layout, bias: torch.Tensor | None = None, block_m: int = 16, block_n: int = 64, split_k: int = 1,
             num_warps: int = 4, num_stages: int = 3, r: int = 2) -> torch.Tensor:
    """Fused ``x [M, K] @ W.T (+ bias)``; output in ``x.dtype`` (fp16/bf16 activations).

    The dot's K-extent is ``R * bk8`` and must be >= 16 (``awq_linear_cuda`` checks).
    """
    M, K = x.shape
    N = layout.out_features
    x = x if x.stride(-1) == 1 else x.contiguous()
    rr = blocks_per_step(layout, r)
    if x.is_cuda and rr * layout.bk8 < 16:  # tl.dot needs K >= 16 on the tensor cores
        raise ValueError(f"awq_gemm: dot K-extent R*bk8 = {rr}*{layout.bk8} < 16 for in_features={K}, "
                         f"group={layout.group}; use the dequantize path (awq_linear_cuda chooses it)")
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m), split_k)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    ws, locks = SCRATCH.for_grid(out, grid, block_m * block_n)
    _awq_gemm_kernel[grid](
        x, qweight_k, scales_k, zeros_k, bias if bias is not None else out, out, ws, locks, M, N, K, x.stride(0),
        out.stride(0), GROUP=layout.group, BK8=layout.bk8, R=rr, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT_K=split_k,
        HAS_BIAS=bias is not None, num_warps=num_warps, num_stages=num_stages,
    )
    return out


_GEMM_T_LAUNCH = LaunchCache(_awq_gemm_t_kernel)


@functools.lru_cache(maxsize=1024)
def _gemm_t_plan(layout, M: int, has_bias: bool, block_m: int, block_n: int, split_k: int, num_warps: int,
                 num_stages: int, r: int, prefetch: int, packed: int, chains: int = 2, scale_in: int = 0):
    """Launch geometry and constexprs for one layer and M (built once, not per call)."""
    N, K = layout.out_features, layout.in_features
    rr = blocks_per_step(layout, r)
    steps = K // (layout.pack_block * rr)
    split_k = max(1, min(split_k, steps))
    ints = (M, N, K, K // 8, K // layout.group)
    gps = step_group_count(layout, rr)
    if chains not in (1, 2):
        raise ValueError(f"awq_gemm_t: chains must be 1 or 2, found {chains}")
    meta = {"GROUP": layout.group, "BK8": layout.bk8, "R": rr, "BLOCK_M": block_m, "BLOCK_N": block_n,
            "SPLIT_K": split_k, "HAS_BIAS": has_bias, "SCALE_AFTER": gps > 0 and not scale_in,
            "PREFETCH_SZ": bool(prefetch) and gps == 1, "PACKED": bool(packed) and not INTERPRETED, "CHAINS": chains,
            "SCALE_IN": gps > 0 and bool(scale_in), "GPS": max(gps, 1)}
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m), split_k)
    static_key = (tuple(meta.values()), num_warps, num_stages, int_spec(*ints))
    return rr, ints, meta, grid, {"num_warps": num_warps, "num_stages": num_stages}, static_key


def awq_gemm_t(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
               layout, bias: torch.Tensor | None = None, block_m: int = 16, block_n: int = 64, split_k: int = 1,
               num_warps: int = 4, num_stages: int = 3, r: int = 1, prefetch: int = 0,
               packed: int = 1, chains: int = 2, scale_in: int = 0) -> torch.Tensor:
    """Fused ``x [M, K] @ W.T (+ bias)`` with the weights as the dot's left operand (``_awq_gemm_t_kernel``).

    The scale moves after the dot when a step's ``8 * r * bk8`` inputs lie in one group, or (``r=1``) in 2 or 4 groups
    of 64 / 32 (per group of nibble slabs: ``common.step_group_count``); there ``packed`` (the
    default) de-quantizes in packed 16-bit math (``dequant8_packed``; float32 math under the Triton interpreter,
    which cannot run inline PTX); ``chains=1`` sums each step's eight dots in one partial sum instead of two, and
    ``scale_in=1`` scales the weights before the dot instead (one running sum; the kernel's docstring). ``split_k``
    programs share the K range; their float32 partials are reduced in the same launch, in split order (one
    launch, deterministic; was a zero fill, atomic adds and a cast: three launches). Dot K-extent ``r * bk8`` >= 16.
    Launched through ``LaunchCache`` (the compiled kernel directly after the first call).
    """
    out, _ = _gemm_t_launch(x, qweight_k, zeros_k, scales_k, layout, bias, block_m, block_n, split_k, num_warps,
                            num_stages, r, prefetch, packed, chains, scale_in)
    return out


class GemmTPlan(NamedTuple):
    """One ``awq_gemm_t`` launch with everything but the tensors fixed (``bind_gemm_t``): a call allocates the
    output, takes split-K scratch (per stream; fresh under CUDA-graph capture) and launches."""

    launch: BoundLaunch
    grid: tuple[int, int, int]
    tile_elems: int
    ints: tuple[int, ...]  # (M, N, K, K8, G, stride_xm, stride_om)

    def __call__(self, x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                 bias: torch.Tensor | None, stream: int | None = None) -> torch.Tensor:
        out = torch.empty((self.ints[0], self.ints[1]), dtype=x.dtype, device=x.device)
        ws, locks = SCRATCH.for_grid(out, self.grid, self.tile_elems)
        self.launch((x, qweight_k, scales_k, zeros_k, out if bias is None else bias, out, ws, locks, *self.ints),
                    stream)
        return out


def bind_gemm_t(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
                bias: torch.Tensor | None = None, **cfg: int) -> tuple[torch.Tensor, GemmTPlan | None]:
    """:func:`awq_gemm_t` (``cfg``: its block-size keywords; checked as always), and the launch it made as a
    :class:`GemmTPlan` for later calls whose tensors match these in everything the kernel specializes on (the caller
    keys plans on that; ``None`` when ``x`` had to be copied: a plan launches the caller's tensor as is)."""
    out, spec = _gemm_t_launch(x, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
    if x.stride(-1) != 1 or spec is None:
        return out, None
    key, grid, meta, opts, ints = spec
    return out, GemmTPlan(_GEMM_T_LAUNCH.bind(key, grid, meta, opts), grid, meta["BLOCK_M"] * meta["BLOCK_N"], ints)


def _gemm_t_launch(x, qweight_k, zeros_k, scales_k, layout, bias, block_m=16, block_n=64, split_k=1, num_warps=4,
                   num_stages=3, r=1, prefetch=0, packed=1, chains=2, scale_in=0):
    """The checked launch of ``awq_gemm_t``: ``(out, (key, grid, meta, opts, ints))`` (spec None for empty x)."""
    M = x.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    rr, ints, meta, grid, opts, static_key = _gemm_t_plan(layout, M, bias is not None, block_m, block_n, split_k,
                                                          num_warps, num_stages, r, prefetch, packed, chains,
                                                          scale_in)
    if x.is_cuda and rr * layout.bk8 < 16:  # tl.dot needs K >= 16 on the tensor cores
        raise ValueError(f"awq_gemm_t: dot K-extent R*bk8 = {rr}*{layout.bk8} < 16 for in_features={ints[2]}, "
                         f"group={layout.group}; use the dequantize path (awq_linear_cuda chooses it)")
    N = ints[1]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out, None
    bias_arg = bias if bias is not None else out
    ws, locks = SCRATCH.for_grid(out, grid, meta["BLOCK_M"] * meta["BLOCK_N"])
    key = (static_key, x.dtype, bias_arg.dtype, qweight_k.dtype, scales_k.dtype, zeros_k.dtype, x.device.index,
           aligned(x, qweight_k, scales_k, zeros_k, bias_arg), int_spec(x.stride(0)))
    args = (*ints, x.stride(0), N)
    _GEMM_T_LAUNCH.launch(key, grid, (x, qweight_k, scales_k, zeros_k, bias_arg, out, ws, locks, *args), meta, opts)
    return out, (key, grid, meta, opts, args)


_DEQUANT_LAUNCH = LaunchCache(_awq_dequant_kernel)

#: ``awq_dequantize``'s tile for e4m3 output (``fp8_compute``): 32 rows, one pack block, 8 warps — two outputs a
#: thread a nibble. H100 (``benchmarks/awq_fp8_convert_probe.py``, ``results/awq-fp8-convert-probe_*``): 25.3 / 65.2 /
#: 60.2 µs at 5120x5120 / 13824x5120 / 5120x13824, the fastest of 72 tiles at each; the bf16 tile (32 rows, 2
#: blocks, 4 warps: eight a thread) took 59.8 / 162.6 / 159.3 — a byte store per element is what costs there.
FP8_TILE = {"block_n": 32, "r": 1, "num_warps": 8}


@functools.lru_cache(maxsize=1024)
def _dequant_plan(layout, block_n: int, r: int, num_warps: int, to_fp8: bool = False):
    """Launch geometry, int arguments, constexprs and the static part of the key for one layer (built once)."""
    N, K = layout.out_features, layout.in_features
    rr = blocks_per_step(layout, r)
    ints = (N, K, K // 8, K // layout.group)
    # bf16/fp16 output: K-fastest programs, 5-8% faster a pass on an H100 than rows-first at three of the four DiT
    # shapes, bit-equal (benchmarks/awq_dequant_store_probe.py, results/awq-dequant-store-probe_*_2026-12-06); the
    # e4m3 output keeps the rows-first grid its tile was chosen with (FP8_TILE)
    k_fast = not to_fp8
    meta = {"GROUP": layout.group, "BK8": layout.bk8, "R": rr, "BLOCK_N": block_n, "TO_FP8": to_fp8,
            "K_FAST": k_fast, "INTERP": INTERPRETED}
    grid_n, grid_k = triton.cdiv(N, block_n), K // (layout.pack_block * rr)
    grid = (grid_n * grid_k,) if k_fast else (grid_n, grid_k)
    return ints, meta, grid, {"num_warps": num_warps}, (tuple(meta.values()), num_warps, int_spec(*ints))


def awq_dequantize(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
                   dtype: torch.dtype, block_n: int = 32, r: int = 2, num_warps: int = 8,
                   out: torch.Tensor | None = None, fp8_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel layout → ``W [N, K]`` in ``dtype`` (for the de-quantize-then-cuBLAS path at large M), written into
    ``out`` (contiguous ``[N, K]`` of ``dtype``) when given.

    ``dtype`` float8_e4m3fn: ``fp8(clamp(W[n] * (1 / fp8_scale[n]), ±448))`` with ``fp8_scale`` float32 ``[N]`` (the
    fp8 compute route: ``fvq_awq.fp8_compute``); the torch reference is ``fp8_compute.fp8_weight_ref``.

    Launched through ``LaunchCache`` (the compiled kernel directly after the first call): the JIT's per-call work
    cost tens of µs of host time, which eager calls at M ~ 128 waited on.

    Warps: 8 (H100, ``benchmarks/awq_fp8_convert_probe.py``, ``results/awq-fp8-convert-probe_*``: the 32-row,
    2-block bf16 tile took 29.8 / 73.2 / 72.4 µs with 8 at 5120x5120 / 13824x5120 / 5120x13824, 31.7 / 81.8 / 80.3
    with 4). The e4m3 output wants fewer elements a thread (:data:`FP8_TILE`).
    """
    to_fp8 = dtype == FP8_DTYPE
    if to_fp8 != (fp8_scale is not None):
        raise ValueError("awq_dequantize: fp8_scale is given with dtype float8_e4m3fn and only then; found dtype "
                         f"{dtype} and fp8_scale {'given' if fp8_scale is not None else 'None'}")
    ints, meta, grid, opts, static_key = _dequant_plan(layout, block_n, r, num_warps, to_fp8)
    if to_fp8 and (fp8_scale.shape != (ints[0],) or fp8_scale.dtype != torch.float32
                   or fp8_scale.device != qweight_k.device or not fp8_scale.is_contiguous()):
        raise ValueError(f"awq_dequantize: fp8_scale must be a contiguous float32 [{ints[0]}] tensor on "
                         f"{qweight_k.device}, found {tuple(fp8_scale.shape)} {fp8_scale.dtype} on {fp8_scale.device}")
    if out is None:
        w = torch.empty((ints[0], ints[1]), dtype=dtype, device=qweight_k.device)
    elif (out.shape != (ints[0], ints[1]) or out.dtype != dtype or not out.is_contiguous()
          or out.device != qweight_k.device):
        raise ValueError(f"awq_dequantize: out must be a contiguous [{ints[0]}, {ints[1]}] {dtype} tensor on "
                         f"{qweight_k.device}, found {tuple(out.shape)} {out.dtype} on {out.device} "
                         f"(contiguous: {out.is_contiguous()})")
    else:
        w = out
    t = fp8_scale if to_fp8 else scales_k  # (not read unless TO_FP8)
    _DEQUANT_LAUNCH.launch(_dequant_key(static_key, dtype, qweight_k, scales_k, zeros_k, w, t), grid,
                           (qweight_k, scales_k, zeros_k, w, t, *ints), meta, opts)
    return w


def _dequant_key(static_key: tuple, dtype: torch.dtype, qweight_k: torch.Tensor, scales_k: torch.Tensor,
                 zeros_k: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple:
    """The launch key of one de-quantization: what the JIT specializes on beyond the plan (dtypes, alignment)."""
    return (static_key, dtype, qweight_k.dtype, scales_k.dtype, zeros_k.dtype, qweight_k.device.index,
            aligned(qweight_k, scales_k, zeros_k, w, t))


def bind_fp8_conversion(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
                        w: torch.Tensor, fp8_scale: torch.Tensor) -> tuple[BoundLaunch, tuple[int, ...]]:
    """The e4m3 conversion (``awq_dequantize(..., float8_e4m3fn, fp8_scale=, **FP8_TILE)``) into ``w``, run once
    checked, and its launch bound for later calls with tensors of the same dtypes and alignment: ``(launch, ints)``,
    called as ``launch((qweight_k, scales_k, zeros_k, w, fp8_scale, *ints), stream)`` (``fvq_awq.fp8_compute``'s plan)."""
    awq_dequantize(qweight_k, zeros_k, scales_k, layout, FP8_DTYPE, out=w, fp8_scale=fp8_scale, **FP8_TILE)
    ints, meta, grid, opts, static_key = _dequant_plan(layout, FP8_TILE["block_n"], FP8_TILE["r"],
                                                       FP8_TILE["num_warps"], True)
    key = _dequant_key(static_key, FP8_DTYPE, qweight_k, scales_k, zeros_k, w, fp8_scale)
    return _DEQUANT_LAUNCH.bind(key, grid, meta, opts), ints
