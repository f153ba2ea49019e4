"""Triton kernels that quantize activations to float8 e4m3 in one pass over memory.

Imported lazily (only on CUDA, or by tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.

``per_token_quant``: the core kernel (``fastvideo_quant.kernels.per_token_quant``, shared with the int8 plugin)
with fp8 output: one launch reads each row, takes its amax, computes ``scale = max(amax, 1e-12) / 448`` and
stores ``clamp(x / scale)`` as fp8 plus the scale (a torch version needs ~4 passes).
``static_quant``: ``clamp(x / s)`` with a given per-tensor scale (a non-finite ``x`` stored as NaN).
``per_group_quant``: per token and per ``group`` columns (block-scaled weights' activations, DeepSeek-V3 style), the
scales written group-major ``[G, M]`` so that ``.t()`` is the M-major ``[M, G]`` layout ``torch._scaled_mm``'s
1x128 block scaling takes.
``x * (1/scale)`` with the reciprocal from ``div_rn`` (IEEE), one multiply per element, as the torch
reference does, so results equal it bit for bit (a division per element made the kernel ALU-bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels import FP8_AMAX_EPS
from fastvideo_quant.kernels.per_token_quant import (
    WORKSPACE_MAX_ROWS,
    WORKSPACE_PLAN_CACHES,
    div_ieee,
    magnitude,
    per_token_quant_planned,
    per_token_quant_scratch,
    quantize_codes,
    run_scratch_plan,
    scratch_lookup,
    workspace,
)
from fastvideo_quant.kernels.triton_launch import (
    INTERPRETED,
    LaunchCache,
    PlanCache,
    aligned,
    cdiv,
    check_current_device,
    int_spec,
    next_pow2,
)
from fvq_fp8.format import FP8_DTYPE


@triton.jit
def _static_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = offs < K
    inv = div_ieee(tl.full([1], 1.0, tl.float32), tl.load(s_ptr + tl.arange(0, 1)), ROUND_BY_HAND)
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    q = quantize_codes(x, inv, True, ROUND_BY_HAND)  # (clamped to ±448)
    # A non-finite x (x - x is NaN for ±inf and NaN) stores NaN, not the clamp's ±448 (a max/min may also drop a NaN):
    # its output row stays non-finite, as in the torch reference (e4m3fn has no inf; its NaN is representable). The NaN
    # with bits 0x7FF00000: the GPU's cast turns any NaN into e4m3fn's NaN, the interpreter's cast truncates bits and
    # turns this one (not the default NaN, which would read 384) into 0x7F.
    nan = tl.full([BLOCK_K], 0x7FF00000, tl.int32).to(tl.float32, bitcast=True)
    q = tl.where(x - x == 0.0, q, nan)
    tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


_STATIC = LaunchCache(_static_kernel)


@triton.jit
def _group_kernel(x_ptr, q_ptr, s_ptr, ROWS, K, G, stride_xm, stride_qm, EPS: tl.constexpr, GROUP: tl.constexpr,
                  GROUPS: tl.constexpr, INTERP: tl.constexpr):
    # One program: GROUPS consecutive groups of GROUP columns of one row; a group's amax, scale and codes as the
    # per-token kernel's arithmetic (IEEE scale and reciprocal, one multiply per element), its scale at [g, row] of
    # the [G, ROWS] scales.
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    cols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    mask = (g[:, None] < G) & (cols < K)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(magnitude(x), axis=1)
    scale = div_ieee(tl.maximum(amax, EPS), tl.full([GROUPS], 448.0, tl.float32), INTERP)
    inv = div_ieee(tl.full([GROUPS], 1.0, tl.float32), scale, INTERP)
    tl.store(q_ptr + row * stride_qm + cols, quantize_codes(x, inv[:, None], True, INTERP).to(q_ptr.dtype.element_ty),
             mask=mask)
    tl.store(s_ptr + g.to(tl.int64) * ROWS + row, scale, mask=g < G)


_GROUP = LaunchCache(_group_kernel)

#: Groups one program of :func:`per_group_quant` covers (8 x 128 columns: 2 KiB of bf16, 4 warps).
GROUPS_PER_PROGRAM = 8


def _warps(block: int) -> int:
    # ~16 elements (32 bytes of bf16) per thread keeps loads wide without spilling.
    return max(1, min(16, block // 512))


def per_token_quant(x: torch.Tensor, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` → (fp8 ``[M, K]``, float32 scales ``[M, 1]``): the core per-token kernel with fp8 output, its
    launch cached per call key after the first (checked) call. ``out_rows``: as ``per_token_quant``'s (M rows of
    ``out_rows`` written)."""
    return per_token_quant_planned(x, FP8_DTYPE, out_rows)


def per_token_quant_into_scratch(x: torch.Tensor, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_token_quant` into the core's per-(stream, thread) workspace (``per_token_quant_scratch``): valid until
    the next such call on this stream and thread — for the eager ``torch._scaled_mm`` launched right after it."""
    return per_token_quant_scratch(x, FP8_DTYPE, out_rows)


def static_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` ``[M, K]`` and a one-element float32 ``scale`` → fp8 ``[M, K]``."""
    check_current_device(x, "static_quant")
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    if m == 0:
        return q
    block = min(4096, next_pow2(k))
    interp = INTERPRETED
    sx = x.stride(0)
    key = (x.dtype, scale.dtype, block, interp, x.device.index, aligned(x, scale), int_spec(k, sx))
    _STATIC.launch(key, (m, cdiv(k, block)), (x, q, scale, k, sx, k),
                   {"BLOCK_K": block, "ROUND_BY_HAND": interp}, {"num_warps": _warps(block)})
    return q


def per_group_quant(x: torch.Tensor, group: int, out_rows: int | None = None,
                    config: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` → (fp8 ``[R, K]``, float32 scales ``[G, R]``; G = ceil(K / group), R = ``out_rows`` or M):
    each row's groups of ``group`` columns (the last one partial when ``group`` does not divide K) quantized with
    their own scale ``max(amax, 1e-12) / 448``; rows M onward are left unwritten (for a GEMM run on more rows, whose
    extra output rows are dropped). ``group``: a power of two (the fp8 plugin passes 128). ``config``: (groups per
    program, a power of two; warps) — :func:`group_config` when None (benchmarks pass others)."""
    if group <= 0 or group & (group - 1):
        raise ValueError(f"per_group_quant: group must be a power of two, found {group}")
    check_current_device(x, "per_group_quant")  # (before a plan keys a workspace by the current device)
    m, k = x.shape
    rows = m if out_rows is None else out_rows
    if rows < m:
        raise ValueError(f"per_group_quant: out_rows must be >= the {m} rows of x, found {rows}")
    groups = cdiv(k, group)
    q = torch.empty((rows, k), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((groups, rows), dtype=torch.float32, device=x.device)
    if m == 0 or k == 0:
        return q, scale
    key, grid, ints, meta, opts = _group_spec(x, group, rows, config)
    _GROUP.launch(key, grid, (x, q, scale, *ints), meta, opts)
    return q, scale


def _group_spec(x: torch.Tensor, group: int, rows: int,
                config: tuple[int, int] | None = None) -> tuple[tuple, tuple, tuple, dict, dict]:
    """``(launch key, grid, int args, constexprs, launch options)`` of :func:`per_group_quant` for ``x`` into fresh
    (16-byte aligned) outputs of ``rows`` rows; the kernel's arguments are ``(x, q, scale, *ints)``."""
    m, k = x.shape
    groups = cdiv(k, group)
    per, warps = config or group_config(groups, group)
    sx = x.stride(0)
    key = (x.dtype, group, per, warps, INTERPRETED, x.device.index, aligned(x), int_spec(rows, k, groups, sx))
    meta = {"EPS": FP8_AMAX_EPS, "GROUP": group, "GROUPS": per, "INTERP": INTERPRETED}
    return key, (m, cdiv(groups, per)), (rows, k, groups, sx, k), meta, {"num_warps": warps}


#: ``(bound launch, int arguments, q view, scale view)`` by call key (see :func:`per_group_quant_scratch`).
_GROUP_SCRATCH_PLANS = PlanCache()
WORKSPACE_PLAN_CACHES.append(_GROUP_SCRATCH_PLANS)  # (emptied with the workspaces its views belong to)


def per_group_quant_scratch(x: torch.Tensor, group: int, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_group_quant` into the core's per-(device, stream, thread) activation workspace, its launch planned
    per call key: no allocation, key or configuration pick per call (the block route's eager calls spent ~18 µs of
    host time a call in the quantization, ``benchmarks/w8_notes.md``). Valid until the next use of the workspace on
    this stream and thread — for the eager ``torch._scaled_mm`` launched right after it, which keeps nothing of it.

    Fresh tensors instead (:func:`per_group_quant`) above the workspace's :data:`WORKSPACE_MAX_ROWS` rows and while a
    CUDA graph is being captured (a graph replays its pointers at any time: two graphs must not share buffers). The
    first call per key runs the checked function.
    """
    rows = x.shape[0] if out_rows is None else out_rows
    found = scratch_lookup(x, rows, _GROUP_SCRATCH_PLANS, (group, out_rows))
    if found is None:
        return per_group_quant(x, group, out_rows)
    plan, key, where = found
    if plan is None:
        q, scale = per_group_quant(x, group, out_rows)
        if x.stride(-1) == 1 and x.shape[0] > 0 and x.shape[1] > 0:  # (the checked call raised on a bad group)
            groups = scale.shape[0]
            # (the scales of WORKSPACE_MAX_ROWS rows asked for at once: a buffer grown row count by row count would
            # leave one behind in each earlier plan)
            wq, ws = workspace(where, x.device, rows, x.shape[1], FP8_DTYPE, WORKSPACE_MAX_ROWS,
                               scales=groups * WORKSPACE_MAX_ROWS)
            launch_key, grid, ints, meta, opts = _group_spec(x, group, rows)
            _GROUP_SCRATCH_PLANS.put(key, (_GROUP.bind(launch_key, grid, meta, opts), ints, wq,
                                           ws[: groups * rows].view(groups, rows)))
        return q, scale
    return run_scratch_plan(x, plan, where)



def group_config(groups: int, group: int) -> tuple[int, int]:
    """(groups per program, warps) for :func:`per_group_quant`: :data:`GROUPS_PER_PROGRAM` groups (fewer when the row
    has fewer), a warp per 256 elements up to 8."""
    per = min(GROUPS_PER_PROGRAM, next_pow2(groups))
    return per, max(1, min(8, per * group // 256))
