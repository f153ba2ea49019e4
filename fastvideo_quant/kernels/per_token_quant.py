"""Per-token (row-wise) symmetric quantization of activations to int8 or float8 e4m3: one Triton launch.

Shared by the int8 and fp8 plugins (their W8A8 paths quantize ``x`` with it before the GEMM).

* int8 (bitsandbytes' ``int8_vectorwise_quant`` at threshold 0): ``q = round(x * 127 / amax)``, rounded half to
  even (``rint``; by hand under the interpreter, see ``rounding.round_half``), ``scale = amax / 127``
  (already divided, so the GEMM epilogue is one multiply); an all-zero row gets ``q = 0``, ``scale = 0``.
* float8 e4m3: ``scale = max(amax, eps) / 448``, ``q = fp8(clamp(x * (1 / scale), ±448))`` with the reciprocal
  from ``div_rn`` (IEEE), one multiply per element — the torch reference's arithmetic, so results equal it bit for
  bit.

A program quantizes ``rows`` rows: each is read once when it fits in registers (``one_pass``), else twice in
``block_k`` chunks (the amax, then the cast; the second read mostly hits L2). :func:`pick_config` chooses by
``(M, K)``; the choice was measured on an H100 (``benchmarks/quant_sweep.py``).

:func:`per_token_quant_planned` is the same launch for hot paths: the first call per key runs the checked
:func:`per_token_quant` and records the bound launch; later calls allocate the outputs and launch.
:func:`per_token_quant_scratch` also skips the two allocations: it writes into a workspace reused by the next call on
the same stream and thread (the fp8 plugin's eager ``torch._scaled_mm`` path, which consumes the result at once).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from fastvideo_quant.kernels import FP8_AMAX_EPS, FP8_DTYPE
from fastvideo_quant.kernels.cuda_rtc import supports_pdl
from fastvideo_quant.kernels.rounding import round_e4m3, round_half
from fastvideo_quant.kernels.triton_launch import (
    INTERPRETED,
    BoundLaunch,
    LaunchCache,
    PlanCache,
    aligned,
    cdiv,
    check_current_device,
    int_spec,
    next_pow2,
)

ONE_PASS_MAX_K = 16384
_OUT_DTYPES = (torch.int8, FP8_DTYPE)
_IN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class QuantConfig(NamedTuple):
    """How a launch covers ``x``: rows per program, the K chunk (the whole padded row when one pass), warps."""

    rows: int
    block_k: int
    one_pass: bool
    num_warps: int


@triton.jit
def _per_token_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                      FP8: tl.constexpr, EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
                      ONE_PASS: tl.constexpr, INTERP: tl.constexpr, LAUNCH_DEPS: tl.constexpr = False):
    if LAUNCH_DEPS:  # (Hopper+, GPU only) a GEMM launched next with PDL may start now; it waits for our writes
        gdc_launch_dependents()
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    x_rows = x_ptr + rows64[:, None] * stride_xm
    q_rows = q_ptr + rows64[:, None] * stride_qm
    offs = tl.arange(0, BLOCK_K)[None, :]
    if ONE_PASS:
        mask = rmask[:, None] & (offs < K)
        x = tl.load(x_rows + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(magnitude(x), axis=1)
    else:
        acc = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & (offs + k0 < K)
            acc = tl.maximum(acc, magnitude(tl.load(x_rows + k0 + offs, mask=mask, other=0.0).to(tl.float32)))
        amax = tl.max(acc, axis=1)
    if FP8:
        scale = div_ieee(tl.maximum(amax, EPS), tl.full([ROWS], 448.0, tl.float32), INTERP)
        inv = div_ieee(tl.full([ROWS], 1.0, tl.float32), scale, INTERP)
    else:
        scale = div_ieee(amax, tl.full([ROWS], 127.0, tl.float32), INTERP)
        safe = tl.where(amax > 0, amax, 1.0)  # (no 1/0, even in the branch tl.where discards)
        inv = tl.where(amax > 0, div_ieee(tl.full([ROWS], 127.0, tl.float32), safe, INTERP), 0.0)
    if ONE_PASS:
        tl.store(q_rows + offs, quantize_codes(x, inv[:, None], FP8, INTERP).to(q_ptr.dtype.element_ty), mask=mask)
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & (offs + k0 < K)
            x = tl.load(x_rows + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_rows + k0 + offs, quantize_codes(x, inv[:, None], FP8, INTERP).to(q_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(s_ptr + rows, scale, mask=rmask)


@triton.jit
def magnitude(x):
    """``|x|`` with NaN as inf: max drops NaN (on the GPU and under the interpreter), which left a row holding one
    with a finite scale and finite, wrong codes; as inf, the row's scale is inf and its output row non-finite."""
    return tl.where(x == x, tl.abs(x), float("inf"))


@triton.jit
def div_ieee(a, b, INTERP: tl.constexpr):
    """IEEE (correctly rounded) ``a / b``; also used by the fp8 plugin's static kernel.

    On the GPU Triton's ``/`` on fp32 is not correctly rounded, so ``div_rn``; under the interpreter ``/`` is
    numpy's IEEE division while ``div_rn`` is not correctly rounded (it put an int8 code one step off in a CPU test).
    """
    if INTERP:
        return a / b
    return tl.math.div_rn(a, b)


@triton.jit
def quantize_codes(x, inv, FP8: tl.constexpr, INTERP: tl.constexpr):
    """``x * inv`` as int8 codes (rounded to nearest) or fp8 values (clamped to ±448, e4m3-rounded by hand under the
    interpreter, whose cast does not round like the GPU's); also the fp8 plugin's static kernel."""
    y = x * inv
    if FP8:
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
        if INTERP:  # the interpreter's fp32 -> fp8 cast does not round like the GPU's: round by hand first
            y = round_e4m3(y)
        return y
    if INTERP:
        return round_half(y, False)  # no libdevice under the interpreter: half to even by hand
    return round_half(y, True)


_LAUNCH = LaunchCache(_per_token_kernel)


def pick_config(m: int, k: int) -> QuantConfig:
    """The launch shape for ``[m, k]``: one row per program, read once, 4 warps up to 4096 columns, else 8.

    H100, bf16 in, fp8 out (``benchmarks/results/quant-sweep_*``): 8 warps instead of 16 at K=5120 took M=4096 from
    31.5 to 27.6 µs (2.00 -> 2.28 TB/s) and M=32768 from 197.5 to 169.4 µs (2.55 -> 2.97 TB/s); at K=3072 4 warps are best; at
    K=13824 8 and 16 tie. Two rows per program and the two-pass form never won by more than 3%.
    """
    if k > ONE_PASS_MAX_K:
        return QuantConfig(1, 4096, False, 8)
    block = next_pow2(max(k, 2))
    return QuantConfig(1, block, True, 4 if block <= 4096 else 8)


def per_token_quant(x: torch.Tensor, qdtype: torch.dtype, *, flat_scale: bool = False,
                    config: QuantConfig | None = None, out_rows: int | None = None,
                    launch_deps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` → (``qdtype`` ``[M, K]``, float32 scales ``[M, 1]``, or ``[M]`` when ``flat_scale``).

    :param qdtype: ``torch.int8`` or ``torch.float8_e4m3fn``.
    :param config: the launch shape; :func:`pick_config` when None (tests pass one to reach every branch).
    :param out_rows: give ``q`` and the scales this many rows (>= M); rows M onward are left unwritten (whatever the
        allocator hands out). For a GEMM run on more rows than there are tokens, whose extra output rows are dropped
        (each output row depends on its own input row only): the fp8 plugin's padded ``_scaled_mm`` route.
    :param launch_deps: let a kernel launched next with programmatic dependent launch start while this one runs
        (``gdc_launch_dependents``; compute capability 9.0+, CUDA only): the W8A8 pair's GEMM, which waits for these
        writes before it reads them (``w8a8_linear``).
    """
    if qdtype not in _OUT_DTYPES:
        raise ValueError(f"per_token_quant: qdtype must be torch.int8 or torch.float8_e4m3fn, found {qdtype}")
    if x.dim() != 2 or x.dtype not in _IN_DTYPES:
        raise ValueError("per_token_quant: expected a 2-D bfloat16/float16/float32 activation [tokens, in], found "
                         f"{x.dtype} {tuple(x.shape)}")
    check_current_device(x, "per_token_quant")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    rows = m if out_rows is None else out_rows
    if not isinstance(rows, int) or rows < m:
        raise ValueError(f"per_token_quant: out_rows must be an int >= the {m} rows of x, found {out_rows!r}")
    q = torch.empty((rows, k), dtype=qdtype, device=x.device)
    s = torch.empty((rows,) if flat_scale else (rows, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    key, grid, ints, meta, opts = launch_spec(x, qdtype, config or pick_config(m, k), launch_deps)
    _LAUNCH.launch(key, grid, (x, q, s, *ints), meta, opts)
    return q, s


def launch_spec(x: torch.Tensor, qdtype: torch.dtype, cfg: QuantConfig,
                launch_deps: bool = False) -> tuple[tuple, tuple, tuple, dict, dict]:
    """``(launch key, grid, int args, constexprs, launch options)`` for quantizing ``x`` (2-D, unit column stride)
    into fresh (16-byte aligned) ``q``/``s``; the kernel's arguments are ``(x, q, s, *ints)``. ``launch_deps``: see
    :func:`per_token_quant` (dropped under the interpreter, which runs no PTX, and below compute capability 9.0)."""
    m, k = x.shape
    sx = x.stride(0)
    launch_deps = launch_deps and not INTERPRETED and x.is_cuda and supports_pdl(x.device.index)
    key = (x.dtype, qdtype, cfg, INTERPRETED, x.device.index, aligned(x), int_spec(m, k, sx), launch_deps)
    meta = {"FP8": qdtype == FP8_DTYPE, "EPS": FP8_AMAX_EPS, "ROWS": cfg.rows, "BLOCK_K": cfg.block_k,
            "ONE_PASS": cfg.one_pass, "INTERP": INTERPRETED, "LAUNCH_DEPS": launch_deps}
    return key, (cdiv(m, cfg.rows),), (m, k, sx, k), meta, {"num_warps": cfg.num_warps}


def bound_launch(x: torch.Tensor, qdtype: torch.dtype, launch_deps: bool = False) -> tuple[BoundLaunch, tuple]:
    """``(bound launch, int arguments)`` of quantizing ``x`` (2-D, unit column stride) with :func:`pick_config`'s
    launch shape: what the planned entry points keep per call key."""
    key, grid, ints, meta, opts = launch_spec(x, qdtype, pick_config(*x.shape), launch_deps)
    return _LAUNCH.bind(key, grid, meta, opts), ints


#: ``(bound launch, int arguments)`` by call key (see :func:`per_token_quant_planned`).
_PLANS = PlanCache()


def per_token_quant_planned(x: torch.Tensor, qdtype: torch.dtype,
                            out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_token_quant` (scales ``[M, 1]``; ``out_rows`` as there) with its launch cached per call key.

    The key holds everything the launch depends on: shape, strides, dtype and 16-byte alignment of ``x``, its device,
    the current device, ``qdtype`` and ``out_rows``. A call with a new key runs the checked function (which raises on
    bad input, as always) and, for a non-empty ``x`` with unit column stride (else it quantized a copy), records the
    launch; a call with a known key allocates ``q`` and ``s`` and launches on the current stream, skipping the checks, the
    configuration pick and the launch-key construction (4-13 µs of host per call on the H200 device host,
    ``benchmarks/w8_notes.md``, eighth session).
    """
    index = torch.cuda.current_device() if x.is_cuda else -1
    key = (x.shape, x.stride(), x.dtype, x.data_ptr() % 16, x.get_device(), index, qdtype, out_rows)
    plan = _PLANS.get(key)
    if plan is None:
        q, s = per_token_quant(x, qdtype, out_rows=out_rows)
        if x.stride(-1) == 1 and x.shape[0] > 0:  # (the checked call raised on anything but 2-D float input)
            _PLANS.put(key, bound_launch(x, qdtype))
        return q, s
    launch, ints = plan
    rows = x.shape[0] if out_rows is None else out_rows
    q = torch.empty((rows, x.shape[1]), dtype=qdtype, device=x.device)
    s = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    launch((x, q, s, *ints), torch._C._cuda_getCurrentRawStream(index) if index >= 0 else None)
    return q, s


#: Rows up to which :func:`per_token_quant_scratch` writes into the reused workspace (above: fresh tensors — the GPU
#: time dwarfs two allocations there). Workspace memory: ``WORKSPACE_MAX_ROWS x K`` bytes plus 4 bytes a row, per
#: (device, stream, thread) and largest K seen.
WORKSPACE_MAX_ROWS = 1024
#: Workspaces kept at most. A process that runs layers from ever-new threads (a thread per request) would otherwise
#: keep one workspace per thread it ever had — up to 14 MB each at K=13824. When another would exceed this, the
#: workspaces of threads that have exited are dropped; if every owner is still alive, all are (each live owner makes
#: a new one on its next call). Either way every plan cache in :data:`WORKSPACE_PLAN_CACHES` is emptied with them, so
#: no plan keeps a dropped buffer alive (their next call per key runs the checked path once more).
WORKSPACE_LIMIT = 32
#: (device index, stream, thread) -> (uint8 buffer, float32 buffer); shared with ``w8a8_linear``'s plans.
_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
#: ``(bound launch, int arguments, q view, s view)`` by call key (see :func:`per_token_quant_scratch`).
_SCRATCH_PLANS = PlanCache()
#: The plan caches that hold views of workspaces (``w8a8_linear`` adds its own).
WORKSPACE_PLAN_CACHES: list[PlanCache] = [_SCRATCH_PLANS]


def _make_room() -> None:
    """Drop the workspaces of exited threads — all of them if that frees nothing — and the plans viewing them.

    A thread not started through ``threading`` is not in ``threading.enumerate()``: its workspace counts as an exited
    thread's and is rebuilt on its next call (correct, one checked call slower)."""
    live = {t.ident for t in threading.enumerate()}
    for key in list(_WORKSPACES):  # (a snapshot: other threads may add while this runs)
        if key[2] not in live:
            _WORKSPACES.pop(key, None)
    if len(_WORKSPACES) >= WORKSPACE_LIMIT:
        _WORKSPACES.clear()
    for cache in WORKSPACE_PLAN_CACHES:
        cache.clear()


def workspace(where: tuple, device: torch.device, m: int, k: int, qdtype: torch.dtype,
              reserve_rows: int, scales: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``[m, k]`` (``qdtype``) and ``[scales]`` (float32, ``m`` by default; 16-byte aligned like the first) of the
    activation workspace of ``where`` = (device, stream, thread), grown to ``reserve_rows x k`` when smaller than
    ``m x k`` (plans made before keep the old buffer alive). A new workspace beyond :data:`WORKSPACE_LIMIT` first makes
    room (:func:`_make_room`).

    Reuse is safe where every writer and reader of the workspace runs on that stream, launched by that thread: a
    kernel writes it, the consumer launched right after reads it, and the next write is ordered after that read.
    """
    scales = m if scales is None else scales
    qbuf, sbuf = _WORKSPACES.get(where, (None, None))
    if qbuf is None or qbuf.numel() < m * k or sbuf.numel() < scales:
        if qbuf is None and len(_WORKSPACES) >= WORKSPACE_LIMIT:
            _make_room()
        # (each buffer is replaced only when it is the one too small: the plans viewing the old one keep it alive)
        if qbuf is None or qbuf.numel() < m * k:
            qbuf = torch.empty(max(reserve_rows, m) * k, dtype=torch.uint8, device=device)
        if sbuf is None or sbuf.numel() < scales:
            sbuf = torch.empty(max(reserve_rows, m, scales), dtype=torch.float32, device=device)
        _WORKSPACES[where] = (qbuf, sbuf)
    return qbuf[: m * k].view(qdtype).view(m, k), sbuf[:scales]


def per_token_quant_scratch(x: torch.Tensor, qdtype: torch.dtype,
                            out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_token_quant_planned`, written into the workspace of the current (device, stream, thread): no
    allocation per call. The result is valid until the next call on that stream and thread — for a consumer launched
    on the same stream right away that keeps nothing of it (the fp8 plugin's eager ``torch._scaled_mm``).

    Fresh tensors instead (:func:`per_token_quant_planned`) above :data:`WORKSPACE_MAX_ROWS` rows and while a CUDA graph
    is being captured (a graph replays its pointers on any stream at any time: two graphs must not share buffers).
    The first call per key runs the checked function. (CPU tensors: tests under the Triton interpreter.)
    """
    rows = x.shape[0] if out_rows is None else out_rows
    found = scratch_lookup(x, rows, _SCRATCH_PLANS, (qdtype, out_rows))
    if found is None:
        return per_token_quant_planned(x, qdtype, out_rows)
    plan, key, where = found
    if plan is None:
        q, s = per_token_quant(x, qdtype, out_rows=out_rows)
        if x.stride(-1) == 1 and x.shape[0] > 0:  # (the checked call raised on anything but 2-D float input)
            wq, ws = workspace(where, x.device, rows, x.shape[1], qdtype, WORKSPACE_MAX_ROWS)
            _SCRATCH_PLANS.put(key, (*bound_launch(x, qdtype), wq, ws.view(rows, 1)))
        return q, s
    return run_scratch_plan(x, plan, where)


def scratch_lookup(x: torch.Tensor, rows: int, plans: PlanCache,
                   key_extra: tuple) -> tuple[tuple | None, tuple, tuple[int, int, int]] | None:
    """The scratch entry points' shared lookup: None where fresh tensors must be used (above
    :data:`WORKSPACE_MAX_ROWS` rows, and while a CUDA graph is being captured: a graph replays its pointers at any time,
    so two graphs must not share buffers); else ``(plan or None, key, where)`` — the plan ``plans`` keeps for this
    call's key (``x``'s shape, strides, dtype, 16-byte alignment and device, ``key_extra``, and ``where`` = the current
    (device index, stream, thread), whose workspace the plan writes). A plan is ``(bound launch, int arguments, q view,
    scale view)``, launched by :func:`run_scratch_plan`."""
    if rows > WORKSPACE_MAX_ROWS or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    index = torch.cuda.current_device() if x.is_cuda else -1
    where = (index, torch._C._cuda_getCurrentRawStream(index) if index >= 0 else 0, threading.get_ident())
    key = (x.shape, x.stride(), x.dtype, x.data_ptr() % 16, x.get_device(), *key_extra, *where)
    return plans.get(key), key, where


def run_scratch_plan(x: torch.Tensor, plan: tuple, where: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch a kept scratch plan on ``x`` (its kernel's arguments: ``x``, the q and scale views, the ints)."""
    launch, ints, q, s = plan
    launch((x, q, s, *ints), where[1] if where[0] >= 0 else None)
    return q, s
