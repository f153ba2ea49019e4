"""8-bit-weight linear for small M in one launch: ``out = (x @ float(w).T) * scale[n] (+ bias[n])``.

Shared by the fp8 (``float8_e4m3fn`` weights) and int8 (bitsandbytes ``int8`` weights) plugins.
Below a few hundred tokens a linear is bound by reading the weight, and the W8A8 paths need two
launches (activation quantization, GEMM) plus allocations whose host time exceeds the GPU time;
this is one launch. The weight tile is widened to the activation dtype in registers — exact:
every e4m3 value and every integer in [-127, 127] is a bf16 and an fp16 value — and multiplied
on the 16-bit tensor cores with float32 accumulation (W8A16). Activations are not quantized, so
this is more accurate than the W8A8 paths it stands in for (vLLM runs fp8 checkpoints the same
way on GPUs without fp8 tensor cores, via Marlin).

A variant that quantized activations per token and 128 columns inside the kernel and multiplied
on the 8-bit tensor cores was measured and dropped: 1.3-1.5x bf16 at M=16 but 0.3-0.6x at M>=64
on an H100 (``benchmarks/results/small-m-sweep_*``), never ahead of this one or of the two-launch
W8A8 path.

The per-output-channel weight scale and the bias are applied in the epilogue, in float32.

Split-K (``split_k > 1``) for the grids that would not fill the GPU: a one-launch, deterministic reduction
through :mod:`fastvideo_quant.kernels.split_k` (partials in split order, self-resetting counters).

Imported lazily (CUDA, or tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels import SMALL_M_ACT_DTYPES, SMALL_M_MAX
from fastvideo_quant.kernels.split_k import SCRATCH, sm_count, split_for_occupancy, split_k_sum
from fastvideo_quant.kernels.triton_launch import (
    INTERPRETED,
    BoundLaunch,
    LaunchCache,
    PlanCache,
    aligned,
    cdiv,
    check_current_device,
    int_spec,
)

#: Weight dtypes the kernel reads (each widened exactly to bf16/fp16).
WEIGHT_DTYPES = (torch.float8_e4m3fn, torch.int8)


@triton.jit(do_not_specialize=["M"])
def _small_m_kernel(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, ws_ptr, lock_ptr, M, N, K,
                    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr,
                    SCALE_BK: tl.constexpr = 0):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    # Wrap columns past N onto valid rows of w, so weight loads need no N mask (stores are masked).
    w_rows = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    steps = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)  # K steps per split
    k0 = pid_k * steps * BLOCK_K
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * K + (k0 + offs_k)[None, :]
    w_ptrs = w_ptr + w_rows.to(tl.int64)[None, :] * K + (k0 + offs_k)[:, None]  # [BLOCK_K, BLOCK_N] view of [N, K]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, steps):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k0 - k * BLOCK_K
            a = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if SCALE_BK == 0:  # per-channel scales: applied once, in the epilogue
            if INTERPRETED:
                # Triton's interpreter mishandles bf16 operands here; fp32 products of the same values are exact
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b.to(a.dtype), acc)
        else:
            # block scales [cdiv(K, SCALE_BK), N]: this step's float32 product times its K block's scale per column
            # (BLOCK_K divides SCALE_BK: a step never straddles two blocks; a step past K in the last split reads the
            # last block's scales and adds zeros)
            if INTERPRETED:
                part = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(a, b.to(a.dtype))
            kb = tl.minimum((k0 + k * BLOCK_K) // SCALE_BK, tl.cdiv(K, SCALE_BK) - 1)
            acc += part * tl.load(s_ptr + kb * N + w_rows)[None, :]
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    n_mask = offs_n < N
    if SPLIT_K > 1:
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        last, total = split_k_sum(acc, ws_ptr, lock_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k, local,
                                  BLOCK_M * BLOCK_N, SPLIT_K, m_mask[:, None] & n_mask[None, :])
        if last:
            _epilogue(total, s_ptr, b_ptr, o_ptr, offs_m, offs_n, m_mask, n_mask, N, HAS_BIAS, SCALE_BK == 0)
    else:
        _epilogue(acc, s_ptr, b_ptr, o_ptr, offs_m, offs_n, m_mask, n_mask, N, HAS_BIAS, SCALE_BK == 0)


@triton.jit
def _epilogue(acc, s_ptr, b_ptr, o_ptr, offs_m, offs_n, m_mask, n_mask, N, HAS_BIAS: tl.constexpr,
              CHANNEL_SCALE: tl.constexpr):
    out = acc
    if CHANNEL_SCALE:
        out = acc * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    o_ptrs = o_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_LAUNCH = LaunchCache(_small_m_kernel)


class Config(NamedTuple):
    """One launch configuration: tile sizes, K splits, warps and pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


#: The CPU interpreter's config (tests): small tiles keep interpreted runs short.
INTERPRET_CONFIG = Config(16, 32, 32, 1, 4, 1)

#: H100 configs by the largest M they serve: the best geometric mean over the four DiT shapes, for fp8
#: and int8 weights alike, in ``benchmarks/bench_small_m_sweep.py`` (``results/small-m-sweep_*``).
#: Above :data:`~fastvideo_quant.kernels.SMALL_M_MAX` the plugins' two-launch W8A8 paths are faster.
TABLE: tuple[tuple[int, Config], ...] = (
    (16, Config(16, 32, 128, 2, 4, 4)),
    (SMALL_M_MAX, Config(32, 64, 128, 4, 4, 4)),
)


def config_for(m: int) -> Config:
    """The table's config for ``m`` rows (the last one beyond :data:`~fastvideo_quant.kernels.SMALL_M_MAX`)."""
    return next((c for limit, c in TABLE if m <= limit), TABLE[-1][1])


@functools.lru_cache(maxsize=256)
def config_for_shape(m: int, n: int, k: int, sm_count: int) -> Config:
    """:func:`config_for`, with split-K for M <= 16 chosen so the grid holds about ``PROGRAMS_PER_SM``
    programs per multiprocessor (``split_k.split_for_occupancy``): powers of two up to 8 keeping K steps whole."""
    cfg = config_for(m)
    if m > TABLE[0][0]:
        return cfg
    tiles = cdiv(n, cfg.block_n) * cdiv(m, cfg.block_m)
    splits = [s for s in (1, 2, 4, 8) if k % (cfg.block_k * s) == 0]
    return cfg._replace(split_k=split_for_occupancy(tiles, sm_count, splits))


class _Plan(NamedTuple):
    launch: BoundLaunch
    grid: tuple[int, int, int]  # (with a split, SCRATCH gives the workspace per call: per stream, fresh under capture)
    tile_elems: int
    out_shape: tuple[int, int]
    ints: tuple[int, int, int]


#: Launch plans by call key (see :func:`small_m_linear`).
_PLANS = PlanCache()


def small_m_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                   config: Config | None = None, block_k: int = 0) -> torch.Tensor:
    """``x [M, K] @ (float(weight) * scale).T + bias`` in ``x.dtype``, one launch.

    :param x: bf16/fp16 ``[M, K]`` (copied to a contiguous tensor if its rows are not dense).
    :param weight: float8_e4m3fn or int8 ``[N, K]``, contiguous.
    :param scale: float32, contiguous: ``N`` elements (``[N]`` or ``[1, N]``), per output channel; or with
        ``block_k`` ``[ceil(K / block_k), N]``, per output row and ``block_k`` inputs (block-scaled fp8: each K step's
        float32 product is multiplied by its block's scales before it is summed).
    :param bias: ``[N]`` or None.
    :param block_k: 0 (per-channel ``scale``) or the scales' K block, a multiple of the config's ``block_k``.
    :param config: a launch config (sweeps and tests); default: :func:`config_for_shape`, and then the launch is
        planned: the first call per key (shapes, strides, dtypes and 16-byte alignment of every tensor, their
        devices, the current device) checks the arguments and records the bound launch; later calls allocate the
        output and launch. Eager decode at M <= 16 is bound by this host time on slow hosts (H200 device host,
        eighth session: fp8 5120x5120 M=16 read 0.73x bf16 eager against 1.21x as graphs before the plan).
    """
    if config is None:
        index = torch.cuda.current_device() if x.is_cuda else -1
        key = (x.shape, x.stride(), x.dtype, x.data_ptr() % 16, x.get_device(), weight.shape, weight.stride(),
               weight.dtype, weight.data_ptr() % 16, weight.get_device(), scale.shape, scale.stride(), scale.dtype,
               scale.data_ptr() % 16, scale.get_device(),
               None if bias is None else (bias.shape, bias.stride(), bias.dtype, bias.data_ptr() % 16,
                                          bias.get_device()), index, block_k)
        plan = _PLANS.get(key)
        if plan is not None:
            out = torch.empty(plan.out_shape, dtype=x.dtype, device=x.device)
            ws, locks = SCRATCH.for_grid(out, plan.grid, plan.tile_elems)
            plan.launch((x, weight, scale, scale if bias is None else bias, out, ws, locks, *plan.ints),
                        torch._C._cuda_getCurrentRawStream(index) if index >= 0 else None)
            return out
        return _checked(x, weight, scale, bias, None, key, block_k)
    return _checked(x, weight, scale, bias, config, None, block_k)


def _checked(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             config: Config | None, plan_key: tuple | None, block_k: int = 0) -> torch.Tensor:
    """The checked launch; with ``plan_key``, its plan recorded for later calls (contiguous ``x`` only)."""
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"small_m_linear: expected 2-D x [M, K] and weight [N, K]; found x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if block_k < 0 or block_k % 16:
        raise ValueError(f"small_m_linear: block_k must be 0 (per-channel scales) or a positive multiple of 16, found "
                         f"{block_k}")
    m, k = x.shape
    n, kw = weight.shape
    if kw != k or x.dtype not in SMALL_M_ACT_DTYPES or weight.dtype not in WEIGHT_DTYPES or scale.dtype != torch.float32 \
            or (scale.shape != (cdiv(k, block_k), n) if block_k else scale.numel() != n):
        scales = f"[{cdiv(k, block_k)}, {n}] (block_k={block_k})" if block_k else f"{n}"
        raise ValueError(
            f"small_m_linear: expected x bf16/fp16 [M, K], weight fp8/int8 [N, K] with the same K and {scales} float32 "
            f"scales; found x {x.dtype} {tuple(x.shape)}, weight {weight.dtype} {tuple(weight.shape)}, "
            f"scale {scale.dtype} {tuple(scale.shape)}"
        )
    if not (weight.is_contiguous() and scale.is_contiguous()):
        raise ValueError(f"small_m_linear: weight and scale must be contiguous; found strides {weight.stride()} "
                         f"and {scale.stride()} (call .contiguous() once after loading, not per call)")
    if x.stride() != (k, 1):  # the kernel indexes rows as m * K (a sliced or transposed input is not)
        x = x.contiguous()
    check_current_device(x, "small_m_linear")
    if weight.device != x.device:  # (another GPU's pointers would fault, not raise)
        raise ValueError(f"small_m_linear: x is on {x.device} but the weight on {weight.device}; move the input to "
                         "the layer's device")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    interpreted = INTERPRETED
    cfg = config or (INTERPRET_CONFIG if interpreted else config_for_shape(m, n, k, sm_count(x.device.index)))
    if block_k and block_k % cfg.block_k:
        if config is not None:
            raise ValueError(f"small_m_linear: the config's block_k={cfg.block_k} must divide the scales' "
                             f"block_k={block_k} (a K step may not straddle two scale blocks)")
        cfg = cfg._replace(block_k=math.gcd(block_k, cfg.block_k))  # (both multiples of 16)
    grid = (cdiv(n, cfg.block_n), cdiv(m, cfg.block_m), cfg.split_k)
    ws, locks = SCRATCH.for_grid(out, grid, cfg.block_m * cfg.block_n)
    has_bias = bias is not None
    even_k = k % (cfg.block_k * cfg.split_k) == 0
    bias_arg = bias if has_bias else scale
    # everything the JIT specializes on: dtypes, constexprs, pointer alignment, and n / k == 1 or % 16
    key = (x.dtype, weight.dtype, scale.dtype, bias_arg.dtype, has_bias, even_k, cfg, x.device.index,
           aligned(x, weight, scale, bias_arg), int_spec(n, k), block_k)
    meta = {"HAS_BIAS": has_bias, "EVEN_K": even_k, "SPLIT_K": cfg.split_k, "BLOCK_M": cfg.block_m,
            "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "INTERPRETED": interpreted, "SCALE_BK": block_k}
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    _LAUNCH.launch(key, grid, (x, weight, scale, bias_arg, out, ws, locks, m, n, k), meta, opts)
    if plan_key is not None and plan_key[1] == (k, 1):  # (a copied x has no plan: its key is the caller's strides)
        _PLANS.put(plan_key, _Plan(_LAUNCH.bind(key, grid, meta, opts), grid, cfg.block_m * cfg.block_n, (m, n),
                                   (m, n, k)))
    return out
