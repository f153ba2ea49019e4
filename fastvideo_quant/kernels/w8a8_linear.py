"""W8A8 linear: per-token activation quantization, then the W8A8 GEMM — two launches, with a cached plan per shape.

``w8a8_linear(x, qdtype, weight, w_scale, bias, out_dtype)`` is ``per_token_quant`` followed by ``w8a8_gemm``, for
the plugins' eager hot path (int8 at every M above its small-M kernel, fp8 with dynamic activations up to its Triton
GEMM limit). Between a few dozen and a few hundred tokens the GPU needs ~20-40 µs for both kernels, while the two
wrappers spent ~100 µs of host time per call on the device machines (three tensor allocations, two launch keys of
~20 fields each, argument checks): an eager model ran at the host's pace (fp8 5120x5120 at M=128 on the H200: 62 µs
eager against 22 µs of GPU time, 0.41x bf16). Here the first call for a shape runs the checked wrappers (and the
GEMM's autotuner) and records a *plan*: both compiled kernels with their grids and constant arguments, and the
activation buffers. Later calls build one flat key, allocate only the output and call the two launchers.

The plan's key holds everything the kernels specialize on — shapes, strides, dtypes, 16-byte alignment of each
caller tensor — plus the device, the current stream and the thread; a call that differs in any of them gets (or
builds) another plan, so a cached launch never sees arguments it was not compiled for.

Activation buffers (the quantized ``x`` and its scales) are a workspace reused across calls: the quantization kernel
writes them and the GEMM launched right after on the same stream reads them, and the next call's writes are ordered
after that read by the stream. So they are per stream *and* per thread (two threads on one stream would interleave
their launches), and fresh while a CUDA graph is being captured (a graph replays its pointers on any stream at any
time: two graphs must not share buffers). Up to ``WORKSPACE_MAX_M`` rows (1024); above that the buffers are allocated
per call (the GPU time dwarfs it there). The workspace is ``per_token_quant.workspace``'s, shared with the fp8 plugin's
scratch quantization on the same stream and thread (stream order covers both): ``WORKSPACE_MAX_M x K`` bytes (more
when that quantization grew it) plus 4 bytes a row, per (stream, thread, largest K seen); at most
``per_token_quant.WORKSPACE_LIMIT`` of them (exited threads' are dropped first, with the plans viewing them).

Imported lazily (CUDA, or tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch

from fastvideo_quant.kernels import per_token_quant as ptq
from fastvideo_quant.kernels import w8a8_gemm as gemm
from fastvideo_quant.kernels.triton_launch import BoundLaunch, PlanCache

#: Rows up to which the quantized activations live in a reused per-(stream, thread) workspace: the shared workspace's
#: limit (``per_token_quant.WORKSPACE_MAX_ROWS``). Was 256 until the twelfth session; at M=320 (5120x5120, H200 device
#: host) the workspace took the pair's host time per call from 37.7 to 30.6 µs (int8) and 29.6 to 22.4 µs (fp8)
#: (``benchmarks/scratch_probe.py --pair``, ``results/scratch-probe-pair_*``).
WORKSPACE_MAX_M = ptq.WORKSPACE_MAX_ROWS

class _Plan(NamedTuple):
    quant: BoundLaunch
    quant_ints: tuple
    gemm: BoundLaunch
    gemm_ints: tuple
    q: torch.Tensor | None  # workspace views, or None: allocate per call
    s: torch.Tensor | None
    out_shape: tuple[int, int]
    device: torch.device


_PLANS = PlanCache()
ptq.WORKSPACE_PLAN_CACHES.append(_PLANS)  # its plans hold workspace views: emptied when workspaces are dropped


def w8a8_linear(x: torch.Tensor, qdtype: torch.dtype, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype, pick: gemm.Pick | None = None,
                pdl: bool = False) -> torch.Tensor:
    """``quant(x) @ weight.T * x_scale[:, None] * w_scale[None, :] + bias`` in ``out_dtype``, where ``quant`` is the
    per-token quantization to ``qdtype`` (``torch.int8`` or ``torch.float8_e4m3fn``; ``per_token_quant``).

    :param x: bf16/fp16/fp32 ``[M, K]``.
    :param weight: ``[N, K]`` in ``qdtype``; ``w_scale`` float32, ``N`` elements, contiguous; ``bias`` ``[N]`` or None.
    :param pick: the GEMM's launch configuration (``w8a8_gemm``'s ``pick``); None: its autotuner's. Part of the key.
    :param pdl: with a ``pick``, on a CUDA device of compute capability 9.0+ (else ignored): programmatic dependent
        launch — the quantization kernel lets the GEMM start while it runs; the GEMM prefetches the first K steps of
        its weight into L2 and waits for the activations (``w8a8_gemm.launch_spec``). The same results bit for bit;
        a caller enables it where it was measured to pay (the fp8 plugin at M <= ``fvq_fp8.kernels.gemm.PDL_MAX_M``).
        Part of the key.

    Arguments are checked on the first call for each plan key (``per_token_quant``, ``w8a8_gemm``); later calls
    with the same key reuse that result.
    """
    if x.is_cuda:
        index = torch.cuda.current_device()
        stream = torch._C._cuda_getCurrentRawStream(index)
        capturing = torch.cuda.is_current_stream_capturing()
    else:  # (tests under the interpreter)
        index, stream, capturing = -1, 0, False
    key = (x.shape, x.stride(), x.dtype, x.data_ptr() % 16, x.get_device(), qdtype, weight.shape, weight.stride(),
           weight.dtype, weight.data_ptr() % 16, weight.get_device(), w_scale.dtype, w_scale.data_ptr() % 16,
           None if bias is None else (bias.dtype, bias.data_ptr() % 16), out_dtype, pick, pdl, index, stream,
           threading.get_ident())
    plan = _PLANS.get(key)
    if plan is None:
        return _first_call(key, x, qdtype, weight, w_scale, bias, out_dtype, capturing, pick, pdl)
    q, s = plan.q, plan.s
    if q is None or capturing:
        m, k = x.shape
        q = torch.empty((m, k), dtype=qdtype, device=plan.device)
        s = torch.empty((m,), dtype=torch.float32, device=plan.device)
    out = torch.empty(plan.out_shape, dtype=out_dtype, device=plan.device)
    plan.quant((x, q, s, *plan.quant_ints), stream)
    plan.gemm((q, weight, out, s, w_scale, w_scale if bias is None else bias, *plan.gemm_ints), stream)
    return out


def _first_call(key: tuple, x: torch.Tensor, qdtype: torch.dtype, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype, capturing: bool,
                pick: gemm.Pick | None, pdl: bool) -> torch.Tensor:
    """The checked two-call path (it compiles and autotunes), then the plan for ``key`` when it can have one."""
    if pick is not None:
        pick = gemm.as_pick(pick)  # (a table's plain tuple; equal to it, so the key stays the same)
    pdl = pdl and pick is not None  # (the launch specs drop it where the device cannot)
    xq, x_scale = ptq.per_token_quant(x, qdtype, flat_scale=True, launch_deps=pdl)
    out = gemm.w8a8_gemm(xq, x_scale, weight, w_scale, bias, out_dtype, pick, pdl=pdl)
    m, k = xq.shape
    if m == 0 or x.stride(-1) != 1 or capturing:  # (per_token_quant copied x: no plan for a copy)
        return out
    q = s = None
    if m <= WORKSPACE_MAX_M:
        q, s = ptq.workspace(key[-3:], x.device, m, k, qdtype, WORKSPACE_MAX_M)
    spec = gemm.launch_spec(q if q is not None else xq, x_scale, weight, w_scale, bias, out, pick, pdl)
    if spec is None:  # the autotuner had no pick to record (it ran one config): plan on a later call
        return out
    gkey, ggrid, gints, gmeta, gopts = spec
    _PLANS.put(key, _Plan(*ptq.bound_launch(x, qdtype, pdl), gemm._LAUNCH.bind(gkey, ggrid, gmeta, gopts), gints, q,
                          s, (m, weight.shape[0]), x.device))
    return out
