"""The fp8 GEMM: quantize activations, then ``torch._scaled_mm`` with the right scale layout (or, on CUDA at
small M, the W8A16 kernel: ``W8A16_MAX_M``; with dynamic activations, the core W8A8 Triton GEMM or ``_scaled_mm``
on a padded row count where the measured routes send it: :func:`cuda_route`).

Scale layouts ``torch._scaled_mm`` accepts (checked on torch 2.13 CPU and torch 2.11 CUDA):
tensor-wise (both scales one-element float32) or row-wise (``scale_a [M, 1]``, ``scale_b
[1, N]``, float32). On CUDA (sm_89+) ``mat2`` must be column-major, which is exactly the
``.t()`` view of the ``[out, in]`` row-major weight, so no transpose is ever materialised;
row-wise output must be bf16 there, so fp16/fp32 row-wise outputs go through an fp32
tensor-wise product and the scales are applied afterwards.

CPU: the same fp8 product (:func:`fp8_product`: every product of two e4m3 values exact, summed in float32), then
the scales, computed by a float32 matmul of the upcast fp8 operands — not ``torch._scaled_mm``, which on CPUs
without fp8 instructions runs a reference loop at ~0.12 GFLOP/s (torch 2.13, a Sapphire Rapids core: 3.2 s for
one 256x512x1536 product, 700x the float32 matmul of the same operands; ``fvq demo``'s fp8 forward took 25 s).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch

from fastvideo_quant.errors import MethodUnavailableError
from fastvideo_quant.kernels import W8A8_OUT_DTYPES, takes_small_m, unit_scale
from fvq_fp8.format import FP8_DTYPE
from fvq_fp8.kernels import ops

_CAPABILITY_OK: dict[int, bool] = {}

#: Largest M (tokens) that takes the one-launch W8A16 kernel on CUDA (``fastvideo_quant.kernels.small_m``).
#: H200 (``benchmarks/fp8_path_sweep.py``, ``results/fp8-path-sweep_*``, GPU time): at M <= 16 it is the fastest
#: path on two DiT shapes (1.20x / 1.47x bf16 at 5120x5120 / 13824x5120) and within 5-10% of the Triton W8A8 GEMM
#: on the other two, with one launch instead of two; from M=17 to 32 the Triton GEMM is faster on all four
#: (5120x5120: 1.03-1.05x against 0.97-0.98x, under bf16; the other shapes 1.18-1.45x against 1.11-1.18x). With
#: 64-row tiles at M <= 32 (``results/fp8-path-sweep_*_small-m-chain-64.json``) the Triton GEMM led the then W8A16
#: path at 5120x5120 M=12-16 in the layer chain (1.14-1.18x against 1.04-1.05x) but not one call at a time; since the
#: CUDA W8A16 kernel's cluster K split (``results/w8-cuda-probe_*_rule-m16.json``) W8A16 leads there in both (1.16-1.23x
#: chain, 1.28-1.33x one call), and at M <= 8 it led in both anyway: the cut stays at 16.
#: ``FVQ_FP8_W8A16_MAX_M=0`` disables it.
W8A16_MAX_M = int(os.environ.get("FVQ_FP8_W8A16_MAX_M", "16"))

#: Block-scaled layers at small M: up to this M (tokens), on GPUs with the one-call block route (sm_90,
#: :func:`block_mm_ok`), the CUDA C++ W8A16 kernel with the block scales (each 128-input block's sums times its weight
#: scales; activations not quantized) where it takes the call (``w8_small_m_cuda.takes``), instead of per-group
#: quantization and the block-scaled ``_scaled_mm``. H100, CUDA-graph GPU time, four DiT shapes
#: (``benchmarks/fp8_block_small_m.py``, ``results/fp8-block-small-m_*_occ.md``): M=1-8 1.57-1.80x bf16 against
#: 1.40-1.60x, M=12-16 1.43-1.64x against 1.39-1.58x (equal at 5120x13824); the Triton kernel with block scales ran 1.18-1.38x,
#: slower than the ``_scaled_mm`` route at every point, so it is not used on sm_90.
#: ``FVQ_FP8_BLOCK_W8A16_MAX_M=0`` disables it.
BLOCK_W8A16_MAX_M = int(os.environ.get("FVQ_FP8_BLOCK_W8A16_MAX_M", "16"))

#: On GPUs without the one-call block route (other fp8 GPUs; block sizes other than 128): up to this M the W8A16
#: kernels (the CUDA C++ one where it takes the call, else the Triton one) instead of one fp8 product per K block.
#: Measured on an H100 only (the kernels forced; ``results/fp8-block-small-m_*_before-prefetch.md``): the Triton
#: kernel with block scales ran 0.78-0.87x bf16 at M=48-64 where the loop ran 0.06-0.12x
#: (``results/fp8-block-probe_*_final.md``). ``FVQ_FP8_BLOCK_LOOP_W8A16_MAX_M=0`` keeps the loop.
BLOCK_LOOP_W8A16_MAX_M = int(os.environ.get("FVQ_FP8_BLOCK_LOOP_W8A16_MAX_M", "64"))

#: Largest M (tokens) whose dynamic per-token W8A8 product may run the core Triton GEMM
#: (``fastvideo_quant.kernels.w8a8_gemm``: scales and bias fused in its epilogue, one planned launch after the
#: quantization's) instead of row-wise ``torch._scaled_mm``; below it :func:`cuda_route` decides. Unset: no cap —
#: the routes (and the untabled rule) alone decide, so a route table's intervals are never cut short silently.
#: ``FVQ_FP8_TRITON_GEMM_MAX_M=0`` disables it.
TRITON_GEMM_MAX_M = int(os.environ.get("FVQ_FP8_TRITON_GEMM_MAX_M", str(sys.maxsize)))

#: Measured routes (``routes.json`` beside this file, written by ``benchmarks/fp8_routes.py`` from
#: ``benchmarks/fp8_path_sweep.py`` on an H200, one call at a time and in a layer chain): per ``"KxN"`` the M
#: intervals that take the Triton GEMM and the launch configuration for each (``"shapes"``), and the M intervals
#: whose ``_scaled_mm`` runs on P > M rows (``"pad"``: cuBLASLt's pick for some M is slower than its pick for a larger
#: row count — 3072x12288: 37.4 µs at M=352, 34.0 µs at 512 rows); every other M of a listed shape takes
#: ``_scaled_mm`` as it is. They apply on GPUs of the compute capability they were measured on (the table's
#: ``"capability"``: a config's shared memory may not fit elsewhere, e.g. on sm_89); other GPUs and shapes not listed
#: follow :data:`UNTABLED_TRITON_MAX_M`. ``FVQ_FP8_ROUTES`` names another table.
ROUTES_PATH = os.environ.get("FVQ_FP8_ROUTES", str(Path(__file__).with_name("routes.json")))

#: Shapes without a route: the Triton GEMM (autotuned) up to this M, and up to ``UNTABLED_TRITON_MAX_M_NARROW``
#: when N <= ``NARROW_N``; ``_scaled_mm`` above. From the four DiT shapes' sweeps: the Triton GEMM leads or is within
#: 10% up to M=128 everywhere, and up to 192 where N=5120 (13-15% ahead there), while ``_scaled_mm`` leads by 8-28%
#: at M=193-256 on every shape.
UNTABLED_TRITON_MAX_M = 128
UNTABLED_TRITON_MAX_M_NARROW = 192
NARROW_N = 8192


class Route(NamedTuple):
    """Where a dynamic per-token fp8 product goes on CUDA (above the W8A16 range)."""

    triton: bool  #: the core Triton W8A8 GEMM; False: row-wise ``torch._scaled_mm``
    pick: tuple[int, ...] | None  #: its launch config (a route's; see ``w8a8_gemm.Pick``), None: autotuned
    pad_to: int = 0  #: ``_scaled_mm`` on this many rows (the quantization writes the first M, ``out[:M]``); 0: M


_SCALED_MM = Route(False, None)


_Table = tuple[tuple[int, int] | None, dict[str, tuple[tuple[int, int, tuple[int, ...]], ...]],
               dict[str, tuple[tuple[int, int, int], ...]]]
_ROUTE_TABLES: dict[str, _Table] = {}


def _routes(path: str) -> _Table:
    """The route table at ``path``, read once. A plain dict lookup after that, which torch.compile traces (it cannot
    trace the file read: the shipped table is read when this module is imported)."""
    table = _ROUTE_TABLES.get(path)
    if table is None:
        table = _ROUTE_TABLES[path] = _read_routes(path)
    return table


def _read_routes(path: str) -> _Table:
    """``(compute capability, Triton routes by "KxN", padded routes by "KxN")`` from the table at ``path``
    (``(None, {}, {})`` if the shipped file is absent), checked: a malformed table is an error naming the file and the
    entry, not a silent fallback."""
    p = Path(path)
    if not p.is_file():
        if path != str(Path(__file__).with_name("routes.json")):
            raise FileNotFoundError(f"fp8: FVQ_FP8_ROUTES names {path!r}, which is not a file")
        return None, {}, {}
    try:
        doc = json.loads(p.read_text())
        major, minor = (int(v) for v in doc["capability"])
        table = {_shape_key(shape): tuple((int(lo), int(hi), tuple(int(v) for v in pick)) for lo, hi, pick in entries)
                 for shape, entries in doc["shapes"].items()}
        pads = {_shape_key(shape): tuple((int(lo), int(hi), int(rows)) for lo, hi, rows in entries)
                for shape, entries in doc.get("pad", {}).items()}
        for shape, intervals in table.items():
            if any(len(pick) != 6 or min(pick) < 1 for _, _, pick in intervals):
                raise ValueError(f"shapes[{shape!r}]: a pick is six positive ints")
            _check_intervals(f"shapes[{shape!r}]", intervals)
        for shape, intervals in pads.items():
            if any(rows < hi for _, hi, rows in intervals):
                raise ValueError(f"pad[{shape!r}]: each padded row count must be >= its interval's last M")
            _check_intervals(f"pad[{shape!r}]", intervals)
            _check_intervals(f"shapes and pad of {shape!r}",
                             sorted(intervals + table.get(shape, ()), key=lambda e: (e[0], e[1])))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"fp8: route table {path} is malformed ({type(exc).__name__}: {exc}); expected "
                         '{"capability": [major, minor], "shapes": {"KxN": [[first M, last M, [BLOCK_M, BLOCK_N, '
                         'BLOCK_K, GROUP_M, warps, stages]], ...]}, "pad" (optional): {"KxN": [[first M, last M, '
                         "rows]], ...]}} as benchmarks/fp8_routes.py writes it") from exc
    return (major, minor), table, pads


def _shape_key(shape: str) -> str:
    k, n = (int(v) for v in shape.split("x"))
    return f"{k}x{n}"


def _check_intervals(where: str, intervals) -> None:
    if any(not 1 <= lo <= hi for lo, hi, _ in intervals) or any(
            a[1] >= b[0] for a, b in zip(intervals, intervals[1:])):
        raise ValueError(f"{where}: each interval must be [first M >= 1, last M >= first, ...], in increasing M, "
                         "not overlapping")


def _route(m: int, k: int, n: int, path: str, capability: tuple[int, int]) -> Route:
    measured_on, table, pads = _routes(path)
    shape = f"{k}x{n}"
    if capability == measured_on and (shape in table or shape in pads):
        for lo, hi, pick in table.get(shape, ()):
            if lo <= m <= hi:
                return Route(True, pick)
        for lo, hi, rows in pads.get(shape, ()):
            if lo <= m <= hi:
                return Route(False, None, rows)
        return _SCALED_MM
    limit = UNTABLED_TRITON_MAX_M_NARROW if n <= NARROW_N else UNTABLED_TRITON_MAX_M
    return Route(True, None) if m <= limit else _SCALED_MM


_route_cached = functools.lru_cache(maxsize=4096)(_route)
try:
    _routes(ROUTES_PATH)
except (OSError, ValueError):
    pass  # (raised again, with its message, by the first call that needs the table)


def cuda_route(x: torch.Tensor, weight: torch.Tensor, input_scale: torch.Tensor | None,
               use_fast_accum: bool) -> Route:
    """Where ``x`` [M, K] times the fp8 ``weight`` [N, K] goes, for CUDA, dynamic activations and fast accumulation
    (Triton's fp8 dot on Hopper accumulates as ``use_fast_accum=True`` does; the routes were measured so): the Triton
    W8A8 GEMM (and its config) where the route for (M, K, N) says so and M <= :data:`TRITON_GEMM_MAX_M`; a padded
    ``_scaled_mm`` where the route says so and ``x`` is bf16 (the dtype it was measured with); else ``_scaled_mm``."""
    if not (x.is_cuda and input_scale is None and use_fast_accum and x.dtype in W8A8_OUT_DTYPES):
        return _SCALED_MM
    m = x.shape[0]
    if torch.compiler.is_compiling():  # (M may be symbolic: no cache; the comparisons become guards)
        route = _route(m, x.shape[1], weight.shape[0], ROUTES_PATH, _capability(x.device.index))
    else:
        route = _route_cached(m, x.shape[1], weight.shape[0], ROUTES_PATH, _capability(x.get_device()))
    if route.triton:
        return route if m <= TRITON_GEMM_MAX_M else _SCALED_MM
    return route if route.pad_to == 0 or x.dtype == torch.bfloat16 else _SCALED_MM


_CAPABILITIES: dict[int, tuple[int, int]] = {}


def _capability(index: int) -> tuple[int, int]:
    """The compute capability of CUDA device ``index``, asked once per device (a dict lookup after that)."""
    cap = _CAPABILITIES.get(index)
    if cap is None:
        cap = _CAPABILITIES[index] = _ask_capability(index)
    return cap


def _ask_capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


# A first call while dynamo traces runs this at trace time and takes the answer as a constant: what
# torch.compiler.assume_constant_result marks, set without it — the decorator imports torch._dynamo, two seconds at
# every `import fvq_fp8` (the CLI's, a conformance run's). tests/plugins/fp8/test_small_m_dispatch.py pins the mark.
_ask_capability._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """The GPU entry points the eager CUDA paths call (Triton kernels, and the CUDA C++ W8A16 kernel in front of its
    Triton fallback), imported once (not an import statement per call; not at module import either: CPU installs may
    lack Triton)."""
    from fastvideo_quant.kernels.w8_small_m_cuda import linear as w8a16_small_m
    from fastvideo_quant.kernels.w8_small_m_cuda import linear_if_taken as w8a16_cuda_if_taken
    from fastvideo_quant.kernels.w8a8_linear import w8a8_linear
    from fvq_fp8.kernels import act_quant_triton

    return SimpleNamespace(per_token_quant=act_quant_triton.per_token_quant,
                           per_group_quant_scratch=act_quant_triton.per_group_quant_scratch,
                           per_token_quant_scratch=act_quant_triton.per_token_quant_into_scratch,
                           static_quant=act_quant_triton.static_quant,
                           w8a16_small_m=w8a16_small_m, w8a16_cuda_if_taken=w8a16_cuda_if_taken,
                           w8a8_linear=w8a8_linear)


def require_fp8_gpu(device: torch.device) -> None:
    """MethodUnavailableError unless ``device`` has compute capability >= 8.9 (fp8 tensor cores)."""
    require_fp8_gpu_index(device.index if device.index is not None else torch.cuda.current_device())


def require_fp8_gpu_index(index: int) -> None:
    """:func:`require_fp8_gpu` for the CUDA device ``index`` (a dict lookup after the first call)."""
    if not _CAPABILITY_OK.get(index, False):
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY_OK[index] = (major, minor) >= (8, 9)
        if not _CAPABILITY_OK[index]:  # (raised on every call, not only the first)
            raise MethodUnavailableError(
                f"fp8: {torch.cuda.get_device_name(index)} has compute capability {major}.{minor}; float8 "
                "GEMMs (torch._scaled_mm) need >= 8.9 (Ada, Hopper). Use int8 or the unquantized method there"
            )


#: Weight elements upcast to float32 at a time by the CPU product (16 MiB of float32): the whole weight never is.
CPU_CHUNK_NUMEL = 1 << 22


def fp8_product(xq: torch.Tensor, weight: torch.Tensor, use_fast_accum: bool = False) -> torch.Tensor:
    """Float32 ``[M, N]``: ``sum_k xq[m, k] * weight[n, k]`` of float8_e4m3fn operands, no scales.

    CUDA: ``torch._scaled_mm`` with unit scales. CPU: the operands upcast to float32 and multiplied there. Every
    e4m3 value is exact in float32 and so is the product of two (at most 8 significant bits), so this is the fp8
    product summed in float32 that ``_scaled_mm`` forms — only the order of the float32 sums may differ — at the
    float32 matmul's speed (``tests/plugins/fp8/test_apply.py`` checks it against ``_scaled_mm`` and against
    float64 math of the fp8 operands). The weight is upcast ``CPU_CHUNK_NUMEL`` elements (whole rows) at a time.
    """
    if xq.is_cuda:
        one = unit_scale(xq.device)
        return torch._scaled_mm(xq, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                                use_fast_accum=use_fast_accum)
    xf = upcast_fp8(xq)
    n, k = weight.shape
    rows = max(1, CPU_CHUNK_NUMEL // max(k, 1))
    if rows >= n:
        return xf @ upcast_fp8(weight).t()
    out = xf.new_empty((xq.shape[0], n))  # (from xf: under torch.func.vmap, batched as xf is, for the writes below)
    for n0 in range(0, n, rows):
        out[:, n0 : n0 + rows] = xf @ upcast_fp8(weight[n0 : n0 + rows]).t()
    return out


def _upcast_table(dtype: torch.dtype) -> torch.Tensor:
    # (on the CPU, whatever device context the plugin is imported in: only CPU products read it)
    return torch.arange(256, dtype=torch.uint8, device="cpu").view(dtype).float()


#: The e4m3 table is made here, at import: made by the first eager call instead, it changed a dict that compiled code
#: guards on, so a model compiled and run before any eager call recompiled after the first one. Other float8 dtypes
#: (tests, a hand-cast weight) add theirs on first eager use.
_FP8_TO_F32: dict[torch.dtype, torch.Tensor] = {FP8_DTYPE: _upcast_table(FP8_DTYPE)}


def upcast_fp8(t: torch.Tensor) -> torch.Tensor:
    """A CPU float8 tensor as float32, through a 256-entry table indexed by its bytes (the same values as
    ``t.float()``, NaN and -0 included; ``tests/plugins/fp8/test_apply.py`` checks every byte): torch's CPU cast
    goes element by element and took ~4x the time, about as long as the product itself at M=256."""
    table = _FP8_TO_F32.get(t.dtype)
    if table is None:
        table = _upcast_table(t.dtype)
        if not torch.compiler.is_compiling():  # (a table made while tracing is fake: kept, it broke every later call)
            _FP8_TO_F32[t.dtype] = table
    return table.index_select(0, t.view(torch.uint8).reshape(-1).int()).view(t.shape)


def quantize_activation(x: torch.Tensor, input_scale: torch.Tensor | None, scratch: bool = False,
                        out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 ``x``, scale as ``[M, 1]`` for dynamic per-token or the one-element static scale).

    :param scratch: eager CUDA dynamic quantization writes into a workspace reused by the next such call on the same
        stream and thread (no allocations; ``per_token_quant_scratch``) — only for a GEMM launched right after that
        keeps nothing of it (``fp8_linear``).
    :param out_rows: dynamic only: the outputs get this many rows (>= M), the first M written (a padded GEMM).
    """
    if x.is_cuda and not torch.compiler.is_compiling():
        # Eager: launch the Triton kernel directly; the custom-op wrapper costs host time that
        # dominates at small M. Under torch.compile the op keeps the graph whole.
        kernels = _cuda_kernels()
        if input_scale is None:
            quant = kernels.per_token_quant_scratch if scratch else kernels.per_token_quant
            return quant(x, out_rows)
        return kernels.static_quant(x, input_scale), input_scale
    if input_scale is None:
        return ops.per_token_quant(x, out_rows)
    return ops.static_quant(x, input_scale), input_scale


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
                 bias: torch.Tensor | None, block_k: int = 0) -> torch.Tensor:
    """Small-M path: bf16/fp16 ``x`` times the fp8 weight widened in registers (one launch: the CUDA C++ kernel
    where ``w8_small_m_cuda.rule`` picks a tile, else the Triton kernel). ``block_k``: 0 (``weight_scale_row`` per
    output channel) or the K block of block scales (``weight_scale_row`` is then ``weight_scale_cols``).

    Activations are not quantized (a static ``input_scale`` is not used; nor, with block scales, the per-group
    activation scales), as vLLM's Marlin fp8 path does.
    """
    if torch.compiler.is_compiling():
        return ops.w8a16_linear(x, weight, weight_scale_row, bias, block_k)
    return _cuda_kernels().w8a16_small_m(x, weight, weight_scale_row, bias, block_k)


#: Up to this M the eager W8A8 pair runs with programmatic dependent launch (compute capability 9.0+): the GEMM
#: starts while the activations are quantized, prefetches the first K steps of its weight and waits for them. H200,
#: ``benchmarks/pdl_prefetch_probe.py`` (``results/pdl-prefetch-probe_*``, every variant bit for bit equal to the
#: pair without it): 5120x5120 M=17-64 19.9-20.2 -> 18.3-19.0 µs one call at a time (graph, L2 flushed: 1.17-1.18x
#: -> 1.25-1.27x bf16), 13.3-13.5 -> 12.6-13.3 µs a layer in the chain; 13824x5120 and 3072x12288 2-5% faster; at
#: M=128 (128-column tiles) no gain in either measurement, -1 to +3%.
PDL_MAX_M = 64


def triton_w8a8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype,
                       pick: tuple[int, ...] | None = None) -> torch.Tensor:
    """Per-token fp8 quantization of ``x`` and the core W8A8 Triton GEMM: eager calls go through
    ``fastvideo_quant.kernels.w8a8_linear`` (a cached launch plan per shape: host time is what eager mid-M calls are
    bound by), compiled code calls the two custom ops. ``pick``: the GEMM's launch config (a route's), None: its
    autotuner's."""
    if torch.compiler.is_compiling():
        xq, x_scale = ops.per_token_quant(x)
        return ops.w8a8_gemm(xq, x_scale, weight, weight_scale_row, bias, out_dtype,
                             None if pick is None else list(pick))
    return _cuda_kernels().w8a8_linear(x, FP8_DTYPE, weight, weight_scale_row, bias, out_dtype, pick,
                                       pdl=x.shape[0] <= PDL_MAX_M)


def padded_scaled_mm(x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
                     bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    """Row-wise bf16 ``_scaled_mm`` (fast accumulation) on ``rows`` >= M rows: the per-token quantization writes the
    first M of a ``rows``-row buffer, the GEMM runs on all of it and ``out[:M]`` is returned (contiguous; each output
    row depends on its own row only, so the unwritten rows change nothing but the rows dropped)."""
    xq, x_scale = quantize_activation(x, None, scratch=True, out_rows=rows)  # (_scaled_mm below is its only reader)
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale_row,
                           bias=_bias(bias, torch.bfloat16), out_dtype=torch.bfloat16, use_fast_accum=True)
    return out[: x.shape[0]]


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_row: torch.Tensor,
    weight_scale_scalar: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    use_fast_accum: bool = True,
) -> torch.Tensor:
    """``x [M, K] @ (weight * scale).T + bias`` with fp8 ``x``; output dtype ``x.dtype``.

    :param weight: float8_e4m3fn ``[N, K]`` row-major.
    :param weight_scale_row: float32 ``[1, N]`` (per output channel; per-shard scales expanded).
    :param weight_scale_scalar: float32 one-element scale when all channels share it, else None.
    :param input_scale: float32 one-element static activation scale, or None for dynamic per-token.
    """
    out_dtype = x.dtype
    if takes_small_m(x, out_dtype, W8A16_MAX_M):
        return w8a16_linear(x, weight, weight_scale_row, bias)
    route = cuda_route(x, weight, input_scale, use_fast_accum)
    if route.triton:
        return triton_w8a8_linear(x, weight, weight_scale_row, bias, out_dtype, route.pick)
    if route.pad_to:
        return padded_scaled_mm(x, weight, weight_scale_row, bias, route.pad_to)
    xq, x_scale = quantize_activation(x, input_scale, scratch=True)  # (read only by the launches below)
    if x.is_cuda:
        if x_scale.numel() == 1 and weight_scale_scalar is not None:
            return _scaled_mm_bias(xq, weight, x_scale.reshape(()), weight_scale_scalar, bias, out_dtype,
                                   use_fast_accum)
        if out_dtype == torch.bfloat16:
            if x_scale.numel() == 1:
                x_scale = x_scale.reshape(1, 1).expand(x.shape[0], 1).contiguous()
            return torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale_row,
                                    bias=_bias(bias, out_dtype), out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    # CPU, and CUDA fp16/fp32 row-wise: the fp8 product summed in fp32, then the column (weight) and row scales (a
    # one-element static scale broadcasts) and the bias, in place on the product (a fresh tensor: no [M, N]
    # temporaries). The weight's scale first: the product of unscaled e4m3 values (up to 448² · K) times an
    # activation scale of float32 activations near 1e35 overflowed where the output does not.
    acc = fp8_product(xq, weight, use_fast_accum).mul_(weight_scale_row).mul_(x_scale.reshape(-1, 1))
    if bias is not None:
        acc.add_(bias)
    return acc.to(out_dtype)


def _bias(bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(out_dtype)


def _scaled_mm_bias(xq: torch.Tensor, weight: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype, use_fast_accum: bool = False) -> torch.Tensor:
    """``torch._scaled_mm(xq, weight.t(), ...) + bias`` in ``out_dtype``: the bias in its epilogue, or added after it
    for float32 output (which ``_scaled_mm`` refuses a bias with)."""
    fused = out_dtype != torch.float32
    out = torch._scaled_mm(xq, weight.t(), scale_a=scale_a, scale_b=scale_b, bias=_bias(bias, out_dtype) if fused
                           else None, out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    return out if fused or bias is None else out.add_(bias.to(out_dtype))


#: The block size of ``torch._scaled_mm``'s DeepSeek-style block scaling (activation scales per token and 128 columns;
#: cuBLASLt >= 12.9, sm_90 only: torch raises NotImplementedError on other GPUs).
BLOCK_MM = 128

#: The block route gives cuBLASLt the weight's 128x128 grid (1x128 x 128x128 recipe), where the layer has one, when the
#: output has at least this many elements (rows x N); else per-row weight scales (1x128 x 1x128). Both are the same
#: product; cuBLASLt runs them at different speeds. H100, CUDA-graph GPU time of the GEMM alone, 7 shapes x 10 M from 32
#: to 256 (``benchmarks/fp8_block_probe.py``, ``results/fp8-block-probe_*_crossover.md``): with N = 5120 per-row scales
#: were faster up to M=192 (3-20%: M·N <= 0.98M) and the grid from M=256 (1.34-1.46x: 1.31M); at 3072x3072 per-row
#: scales were faster at every M to 256 (8-25%, M·N <= 0.79M); with N >= 12288 the grid was faster from M·N ~ 1M (1-8%;
#: cuBLASLt's grid pick at M=160 is the exception, up to 8% slower); at 2048x8192 within 5% either way. The previous cut,
#: a fixed 128 rows, gave the grid to 3072x3072 up to M=256 and to N=5120 at M=160-192, and per-row scales to
#: N >= 12288 at M=64-128. Above 256 rows the earlier sweep (``…_final.md``) has the grid ahead everywhere measured.
BLOCK_GRID_MIN_OUTPUT = 1 << 20


def block_mm_ok(index: int) -> bool:
    """Whether CUDA device ``index`` runs the block-scaled product in one ``torch._scaled_mm``: sm_90, CUDA >= 12.9,
    and torch >= 2.11 (the version it was measured and tested on; torch added the recipes in 2025, older builds keep
    the per-block loop)."""
    return _capability(index)[0] == 9 and _CUDA_VERSION >= (12, 9) and _TORCH_VERSION >= (2, 11)


_CUDA_VERSION = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def fp8_block_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_cols: torch.Tensor,
    block_k: int,
    bias: torch.Tensor | None,
    grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-scaled W8A8: activations quantized per token and per ``block_k`` columns (DeepSeek-V3 style).

    On CUDA with ``block_k`` = 128 on sm_90 (:func:`block_mm_ok`): :func:`block_scaled_mm` (one ``_scaled_mm``, or at
    small M the W8A16 kernel). Other CUDA GPUs at M <= :data:`BLOCK_LOOP_W8A16_MAX_M` (bf16/fp16): the W8A16 kernels
    with the block scales, activations not quantized (as per-channel layers at small M). Elsewhere one fp8
    product per K block (:func:`fp8_product`), each rescaled by its activation-group and weight-block scales and
    summed in fp32: exact block semantics, every product in fp8 — the reference the one-call route is tested
    against (K/block_k products: 0.03-0.16x bf16 on an H100, against 1.15-1.83x for the route).

    :param scale_cols: float32 ``[ceil(K/block_k), N]``: each K block's weight scale per output row.
    :param grid: float32 ``[N/128, K/128]``: the weight's 128x128 block scales when cuBLASLt can take them (the
        layer's ``fp8_block_grid``), else None.
    """
    if x.is_cuda and block_k == BLOCK_MM and block_mm_ok(x.get_device()):
        if torch.compiler.is_compiling():
            return ops.block_scaled_mm(x, weight, scale_cols, grid, bias)  # (one op for torch.compile)
        return block_scaled_mm(x, weight, scale_cols, grid, bias)  # (eager: not the op wrapper's host time)
    if takes_small_m(x, x.dtype, BLOCK_LOOP_W8A16_MAX_M) and block_k % 16 == 0:
        return w8a16_linear(x, weight, scale_cols, bias, block_k)
    return block_loop_linear(x, weight, scale_cols, block_k, bias)


def block_loop_linear(x: torch.Tensor, weight: torch.Tensor, scale_cols: torch.Tensor, block_k: int,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`fp8_block_linear`'s per-block loop (CPU, and CUDA off the one-call route): the reference."""
    if torch.compiler.is_compiling():
        # One op, so x is the bf16/fp16 tensor the previous layer rounded to: inductor fused that rounding with the
        # upcast here and skipped it (emulate_precision_casts off), and fp8 codes at a rounding boundary flipped —
        # compiled bf16 outputs 2.4e-2 off eager's over three layers (CPU)
        xq, scale_groups = ops.per_group_quant(x, block_k)
        x_scale = scale_groups.t()
    else:
        xq, x_scale = ops.per_group_quant_ref(x, block_k)
    # (from x: under torch.func.vmap, batched as x is — an in-place add of batched products into unbatched zeros fails)
    acc = x.new_zeros((x.shape[0], weight.shape[0]), dtype=torch.float32)
    for kb in range(scale_cols.shape[0]):
        k0, k1 = kb * block_k, min((kb + 1) * block_k, x.shape[1])
        acc += fp8_product(xq[:, k0:k1], weight[:, k0:k1]).mul_(x_scale[:, kb : kb + 1]).mul_(scale_cols[kb])
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(x.dtype)


def block_scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale_cols: torch.Tensor, grid: torch.Tensor | None,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W^T`` for a block-scaled fp8 ``weight`` ``[N, K]`` with 128-column K blocks (CUDA, sm_90): the activations
    quantized per token and 128 columns (``fvq_fp8::per_group_quant``, one launch), then one ``torch._scaled_mm``
    with cuBLASLt's block scaling — the ``grid`` (128x128 recipe), when given, for outputs of
    :data:`BLOCK_GRID_MIN_OUTPUT` elements or more, else the per-row ``scale_cols`` (1x128 recipe). At
    M <= :data:`BLOCK_W8A16_MAX_M` (bf16/fp16), where the CUDA C++ W8A16 kernel takes the call: that kernel with
    ``scale_cols`` instead (one launch, activations not quantized). Decided here, inside the custom op, so compiled
    code takes the same path as eager.

    cuBLASLt takes the M-major activation scales at a 16-byte aligned stride only (CUBLAS_STATUS_NOT_SUPPORTED at
    M = 2, 3, 5, 130 with either weight-scale layout on the H100, and at M = 1 with the grid): the quantization writes
    M rounded up to a multiple of 4 rows, the extra output rows are dropped. It also takes a 128x128 grid whose rows
    are not a multiple of 4 floats and returns wrong numbers (rel err 0.06-0.08 at K = 1152 and 1280, 1.7e3 at
    K = 1040; torch 2.11, CUDA 13.0; cuBLASLt wants the K blocks padded to a multiple of 4 in the scales' stride,
    pytorch/pytorch#166752): the layer offers the grid only when ``ceil(K/128) % 4 == 0``
    (``Fp8LinearMethod.process_weights_after_loading``).
    """
    kernels = _cuda_kernels() if x.is_cuda else None
    if takes_small_m(x, x.dtype, BLOCK_W8A16_MAX_M):
        out = kernels.w8a16_cuda_if_taken(x, weight, scale_cols, bias, BLOCK_MM)
        if out is not None:
            return out
    m = x.shape[0]
    rows = -(-m // 4) * 4
    # (the Triton kernel into the workspace, planned per call key — not its op; _scaled_mm reads it right away)
    quant = kernels.per_group_quant_scratch if kernels else ops.per_group_quant
    xq, xs = quant(x, BLOCK_MM, None if rows == m else rows)
    scale_b = grid.t() if grid is not None and rows * weight.shape[0] >= BLOCK_GRID_MIN_OUTPUT else scale_cols
    out = _scaled_mm_bias(xq, weight, xs.t(), scale_b, bias, x.dtype)  # (no fast accumulation with block scales)
    return out if rows == m else out[:m]
