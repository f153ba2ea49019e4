"""The CUDA C++ W8A16 small-M kernel (``w8_small_m.cu``): 8-bit weights (float8 e4m3 or int8) x 16-bit activations
at M <= 16.

The same design as the AWQ plugin's CUDA kernel (``fvq_awq/kernels/awq_small_m.cu``), for 8-bit weights: each lane
loads its tensor-core fragments straight from the ``[N, K]`` weight (two 16-byte loads a row and 128-input block, the
k order inside an MMA chosen to match them), converts them exactly in registers (e4m3: ``cvt.rn.f16x2.e4m3x2``; int8:
the byte under float16's 1024 exponent minus 1152; for bfloat16 activations a shift turns the float16 bits into
bfloat16 bits of the value times 2^-112, undone in the epilogue), and ``kw`` warps split each column's K range
(summed in shared memory in a fixed order), or ``cs`` blocks of a thread-block cluster do. It replaced the Triton
small-M kernel for fp8 and int8 weights where it measured faster (``benchmarks/w8_notes.md``).

Compiled at run time by NVRTC (:mod:`fastvideo_quant.kernels.cuda_rtc`) on first use per (dtype, tile) and device.
:func:`supports` says which calls it takes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from fastvideo_quant.errors import warn_at_caller
from fastvideo_quant.kernels.cuda_rtc import (
    SMALL_M_COMMON,
    CudaRtcError,
    Launcher,
    compile_kernel,
    source_with,
    supports_pdl,
)

SOURCE = Path(__file__).with_name("w8_small_m.cu")
_SIGNATURE = "ppppp" + "i" * 5  # x, weight, scale, bias, out; M K N sx has_bias

#: ``FVQ_W8_CUDA=0`` keeps 8-bit weights at M <= 16 on the Triton small-M kernel (A/B timing, or an NVRTC that
#: misbehaves).
ENABLED = os.environ.get("FVQ_W8_CUDA", "1") != "0"

#: 16 features a block of 8 warps, each an eighth of K: the tile :func:`rule` starts from (and the one
#: :func:`available` compiles to check the kernel).
RULE = {"rowt": 1, "kw": 8, "ft": 1, "u": 1}


#: The tile :func:`rule` takes for e4m3 weights at M=5-8 where the blocks of :data:`RULE` fit one wave and K has
#: 24 or more 128-input blocks: 16 features a block of 4 warps, K over the 2 blocks of a cluster (3 blocks a warp).
RULE_M8_CLUSTER = {"rowt": 1, "kw": 4, "ft": 1, "u": 1, "cs": 2}

#: The tiles :func:`rule` chooses from at M=9-16, in its order of preference at equal fill, with the blocks a
#: multiprocessor holds at their registers (ptxas, CUDA 13.0, sm_90, two 8-column MMA tiles: 128, 78, 80, 80).
RULE_TILES_M16 = (
    ({"rowt": 1, "kw": 4, "ft": 2, "u": 1}, 4),  # 32 features a block of 4 warps
    ({"rowt": 1, "kw": 4, "ft": 1, "u": 1, "cs": 4}, 6),  # 16 features, K over 4 blocks of a cluster, 4 warps each
    ({"rowt": 1, "kw": 4, "ft": 1, "u": 1, "cs": 2}, 6),
    ({"rowt": 1, "kw": 8, "ft": 1, "u": 1}, 3),  # 16 features a block of 8 warps
)


def rule(M: int, K: int, N: int, sms: int, clusters: bool = True, int8: bool = False) -> dict | None:
    """The tile for ``[M, K] x [K, N]`` on ``sms`` SMs, or None where the Triton kernel stays (``clusters``: whether
    the device runs the cluster K split, :func:`clusters_available`; ``int8``: int8 weights, else e4m3). H200,
    2026-12-04; ``benchmarks/w8_notes.md``, seventeenth and twentieth sessions. M <= 8
    (``results/w8-cuda-probe_*_tiles.json``: ten tiles, four DiT shapes, M=1/4/8/16, one CUDA graph over layers of
    distinct weights): 8 warps a column while its N/16 blocks fit one wave (3 blocks an SM at <= 72 registers:
    5120x5120, 13824x5120), else 4 (7 an SM: 5120x13824, 3072x12288) — the fastest of the ten at 9 of 12 such points
    and within 1% at the other 3, 1.2-1.5x faster than the Triton kernel; at M=5-8 with e4m3 weights
    :data:`RULE_M8_CLUSTER` instead of 8 warps a column where K has >= 24 blocks of 128 (``…_cluster2.json``,
    ``…_accn.json``, twenty-first session's ``…_m8-rule.json``). M=9-16: of :data:`RULE_TILES_M16`, the one
    whose blocks fill the largest part of one wave while each warp keeps at least three 128-input blocks of K
    (``…_cluster2.json``, ``…_cluster-rules.json``: ten shapes, M=9/12/16, 7-12 tiles): within 6% of the fastest
    tile measured at every point, 0.77-0.97x the Triton kernel's time; where no tile fits one wave (N > 16896 at 132
    SMs), the Triton kernel. int8 weights (``…_int8.json``) take the same tiles at M <= 8 (the Triton kernel took
    1.08-1.27x their time in the chain at M=1, 1.03-1.25x at M=8) and the Triton kernel at M=9-16, whose int8
    widening is cheaper than this kernel's (at M=16 it took 0.86-0.99x this kernel's time in the chain, 0.98-1.04x
    one call at a time)."""
    if int8 and M > 8:
        return None
    if M <= 8:
        one_wave = -(-N // 16) <= 3 * sms  # RULE's blocks (8 warps, 3 an SM) fit one wave
        if 4 < M and one_wave and clusters and not int8 and K // 128 >= 24:
            return dict(RULE_M8_CLUSTER)
        return {"rowt": 1, "kw": 8 if one_wave else 4, "ft": 1, "u": 1}
    best, best_fill = None, 0.0
    for tile, per_sm in RULE_TILES_M16:
        parts = tile.get("cs", 1)
        if parts > 1 and not clusters or K // 128 < 3 * parts * tile["kw"]:
            continue
        blocks = -(-N // (16 * tile["ft"])) * parts
        fill = blocks / (per_sm * sms)
        if fill <= 1 and fill > best_fill:
            best, best_fill = tile, fill
    return None if best is None else dict(best)


@functools.cache
def _source() -> str:
    return source_with(SMALL_M_COMMON, SOURCE)


_PLANS: dict[tuple, tuple | None] = {}
_NO_PLAN = object()


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
           block_k: int = 0) -> torch.Tensor:
    """8-bit weights at small M (``small_m_linear``'s arguments, per-channel or per-block scales): this kernel where
    :func:`rule` picks a tile and it takes the call (:func:`supports`: M <= 16; :func:`available`), else the Triton
    small-M kernel. The choice and the bound
    launch are kept per call key (shapes, strides, dtypes, device: what does not change from call to call); each call
    then checks its two pointers' alignment (a misaligned call takes the Triton kernel without changing the plan),
    allocates the output and launches (host time is most of a small-M call)."""
    out = linear_if_taken(x, weight, scale, bias, block_k)
    return out if out is not None else _triton()(x, weight, scale, bias, block_k=block_k)


def linear_if_taken(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                    block_k: int = 0) -> torch.Tensor | None:
    """:func:`linear` where this kernel takes the call (:func:`takes`), else None (one plan lookup: for callers whose
    alternative is not the Triton kernel)."""
    plan = _plan_of(x, weight, scale, block_k)
    if plan is None or (x.data_ptr() | weight.data_ptr()) & 15:
        return None
    return _launch(plan, x, weight, scale, bias)


def takes(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int = 0) -> bool:
    """Whether :func:`linear` runs this call on this kernel rather than the Triton kernel (its plan, and the two
    pointers' alignment)."""
    return _plan_of(x, weight, scale, block_k) is not None and not (x.data_ptr() | weight.data_ptr()) & 15


def _plan_of(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int) -> tuple | None:
    """The call key's plan (:func:`_plan`), made on its first call."""
    key = (x.shape, x.stride(), x.dtype, x.device.index, weight.shape, weight.stride(), weight.dtype,
           scale.shape, scale.stride(), scale.dtype, block_k)
    plan = _PLANS.get(key, _NO_PLAN)
    if plan is _NO_PLAN:
        plan = _PLANS[key] = _plan(x, weight, scale, block_k)
    return plan


@functools.cache
def _triton():
    """The Triton small-M kernel (imported on first use, once: CPU installs may lack Triton)."""
    from fastvideo_quant.kernels.small_m import small_m_linear

    return small_m_linear


def _plan(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int = 0) -> tuple | None:
    """:func:`_bind` for :func:`rule`'s tile, or None where the Triton kernel takes the call."""
    from fastvideo_quant.kernels.split_k import sm_count

    if not (ENABLED and _layout_supported(x, weight, scale, block_k)):
        return None
    index = x.device.index
    M, K = x.shape
    int8 = weight.dtype == torch.int8
    tile = rule(M, K, weight.shape[0], sm_count(index), M > 4 and not int8 and clusters_available(index), int8)
    if tile is None or not available(index, int8):
        return None
    return _bind(x, weight, **tile, pdl=supports_pdl(index), block=block_k == 128)


def _bind(x: torch.Tensor, weight: torch.Tensor, rowt: int, kw: int, ft: int, u: int, cs: int = 1,
          occ: int = 1, pdl: bool = False, block: bool = False) -> tuple:
    """What a launch for this call key needs besides the pointers: the launcher, grid, M, K, N, x's row stride and
    the device."""
    M, K = x.shape
    N = weight.shape[0]
    index = x.device.index
    shape = (index, x.dtype == torch.bfloat16, 1 if M <= 8 else 2, rowt, kw, ft, u, cs)
    if block and occ == 1:
        occ = _channel_occupancy(*shape, weight.dtype == torch.int8, pdl)
    launch = _launcher(*shape, occ, weight.dtype == torch.int8, pdl, block)
    return launch, (-(-N // (16 * ft * rowt)), cs, 1), M, K, N, x.stride(0), index


def _launch(bound: tuple, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    launch, grid, M, K, N, sx, index = bound
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()):
        bias = bias.to(x.dtype).contiguous()  # the kernel reads bias[n] in x's dtype
    launch(grid, torch._C._cuda_getCurrentRawStream(index), x.data_ptr(), weight.data_ptr(), scale.data_ptr(),
           (bias if bias is not None else out).data_ptr(), out.data_ptr(), M, K, N, sx, int(bias is not None))
    return out


def supports(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int = 0) -> bool:
    """Whether :func:`w8_small_m_cuda` takes this call: CUDA, 16-bit ``x [M, K]`` with 0 < M <= 16, rows
    16-byte aligned; ``weight`` float8 e4m3 or int8 ``[N, K]`` contiguous, 16-byte aligned, K a multiple of 128, N of
    16; ``scale`` float32 contiguous, with N entries (``[N]`` or ``[1, N]``) or with ``block_k`` = 128 ``[K/128, N]``
    (one per output feature and 128 inputs)."""
    return _layout_supported(x, weight, scale, block_k) and (x.data_ptr() | weight.data_ptr()) % 16 == 0


def _layout_supported(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int = 0) -> bool:
    """:func:`supports` but the pointers' alignment: what a call key (shapes, strides, dtypes) decides once."""
    if x.dim() != 2 or weight.dim() != 2:
        return False
    M, K = x.shape
    N = weight.shape[0]
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and 0 < M <= 16
            and weight.dtype in (torch.float8_e4m3fn, torch.int8) and weight.is_contiguous() and weight.shape[1] == K
            and K % 128 == 0 and N % 16 == 0 and x.stride(1) == 1 and x.stride(0) % 8 == 0
            and scale.dtype == torch.float32 and scale.is_contiguous()
            and (scale.shape == (K // 128, N) if block_k == 128 else block_k == 0 and scale.numel() == N))


@functools.lru_cache(maxsize=64)
def _launcher(index: int, bf16: bool, mt: int, rowt: int, kw: int, ft: int, u: int, cs: int = 1,
              occ: int = 1, int8: bool = False, pdl: bool = False, block: bool = False) -> Launcher:
    defines = {"FVQ_BF16": int(bf16), "FVQ_MT": mt, "FVQ_ROWT": rowt, "FVQ_KW": kw, "FVQ_FT": ft, "FVQ_U": u,
               "FVQ_CS": cs, "FVQ_OCC": occ, "FVQ_INT8": int(int8), "FVQ_PDL": int(pdl), "FVQ_BLOCK": int(block)}
    return compile_kernel(_source(), "w8_small_m", index, defines).launcher(_SIGNATURE, (32 * rowt * kw, 1, 1), pdl)


@functools.lru_cache(maxsize=64)
def _channel_occupancy(index: int, bf16: bool, mt: int, rowt: int, kw: int, ft: int, u: int, cs: int, int8: bool,
                       pdl: bool) -> int:
    """Blocks a multiprocessor holds, by registers, of this tile with per-channel scales: the ``occ`` a block-scaled
    launch of it is compiled for. The block variant keeps each block's sums apart and its scales a step ahead (8-12
    more registers a thread: 68 -> 76 at M <= 8, 128 -> 140 with two feature tiles at M=16, ptxas, CUDA 13.0, sm_90),
    which cost the tiles :func:`rule` sizes to fill one wave a block per multiprocessor and added a tail wave (H100,
    5120x13824 M=1: 41.1 against 34.8 us with per-channel scales); capped to the per-channel count, it keeps the
    wave :func:`rule` planned."""
    threads = 32 * rowt * kw
    regs = -(-_launcher(index, bf16, mt, rowt, kw, ft, u, cs, 1, int8, pdl).kernel.registers // 8) * 8
    return max(1, min(16, 65536 // (regs * threads)))


def _min_capability(int8: bool) -> tuple[int, int]:
    return (8, 0) if int8 else (8, 9)  # (bf16 tensor-core MMA; e4m3 weights also the e4m3x2 conversion)


@functools.cache
def available(index: int, int8: bool = False) -> bool:
    """Whether the kernel compiles and loads on device ``index`` for e4m3 weights (compute capability 8.9+: the
    e4m3 conversion) or int8 weights (8.0+); checked once per device and kind. When it does not, those weights stay on
    the Triton kernel, with one warning saying why."""
    if not ENABLED:
        return False
    if torch.cuda.get_device_capability(index) < _min_capability(int8):
        return False
    try:
        _launcher(index, True, 1, RULE["rowt"], RULE["kw"], RULE["ft"], RULE["u"], int8=int8,
                  pdl=supports_pdl(index))  # (as the layers launch it)
    except CudaRtcError as e:
        kind = "int8" if int8 else "fp8"
        warn_at_caller(f"fastvideo_quant: the CUDA W8A16 small-M kernel is unavailable for {kind} weights ({e}); "
                      f"{kind} layers at M <= 16 use the Triton kernel instead (set FVQ_W8_CUDA=0 to silence this)")
        return False
    return True


@functools.cache
def clusters_available(index: int) -> bool:
    """Whether the cluster K split (``cs`` > 1) runs on device ``index``: compute capability 9.0+ and a cluster
    variant compiles and loads (checked once per device). Without it :func:`rule` keeps to tiles without a cluster,
    with one warning saying why where the compile failed."""
    if not (available(index) and torch.cuda.get_device_capability(index) >= (9, 0)):
        return False
    try:
        _launcher(index, True, 2, 1, 4, 1, 1, 2)
    except CudaRtcError as e:
        warn_at_caller(f"fastvideo_quant: the CUDA W8A16 small-M kernel's cluster split is unavailable ({e}); 8-bit "
                      "layers at M=9-16 with few output columns use tiles without it")
        return False
    return True


def w8_small_m_cuda(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                    rowt: int = 1, kw: int = 8, ft: int = 1, u: int = 1, cs: int = 1, occ: int = 1,
                    pdl: bool | None = None, block_k: int = 0) -> torch.Tensor:
    """``x [M, K] @ (weight * scale[:, None]).T (+ bias)`` in ``x``'s dtype for M <= 16 (with ``block_k`` = 128: each
    128-input block of the weight times its own row of ``scale [K/128, N]``; :func:`supports` must
    hold; compute capability 8.9+ for e4m3 weights, 8.0+ for int8): ``rowt`` warp columns a block, each ``ft`` tiles
    of 16 features wide and ``kw`` warps deep (each a part of K, summed in shared memory), ``u`` 128-input blocks
    loaded ahead per warp; ``cs`` 2..8 splits K over that many blocks of one thread-block cluster (compute capability
    9.0+), whose sums are added in the first block's shared memory (deterministic, no global partials); ``occ``:
    blocks a multiprocessor the registers are capped for; ``pdl``: launch with programmatic dependent launch — the
    blocks may start as the previous kernel's blocks exit and wait (before their first memory access) for it to
    complete (None or True: where :func:`~fastvideo_quant.kernels.cuda_rtc.supports_pdl` says the device runs it, as
    the fp8 and int8 layers launch it). Checked; callers that have checked :func:`supports` themselves call :func:`run`."""
    if not supports(x, weight, scale, block_k):
        raise ValueError(f"w8_small_m_cuda: this call is not supported (x {tuple(x.shape)} {x.dtype} stride "
                         f"{x.stride()} on {x.device}, weight {tuple(weight.shape)} {weight.dtype}, scale "
                         f"{tuple(scale.shape)} {scale.dtype}, block_k={block_k}); see "
                         "fastvideo_quant.kernels.w8_small_m_cuda.supports")
    cap = torch.cuda.get_device_capability(x.device)
    need = _min_capability(weight.dtype == torch.int8)
    if cap < need:
        raise ValueError(f"w8_small_m_cuda: {weight.dtype} weights need compute capability {need[0]}.{need[1]}+, "
                         f"found {cap[0]}.{cap[1]}")
    if kw not in (1, 2, 4, 8) or ft not in (1, 2) or u not in (1, 2) or rowt < 1 or rowt * kw > 16:
        raise ValueError(f"w8_small_m_cuda: kw must be 1, 2, 4 or 8, ft 1 or 2, u 1 or 2, with rowt * kw <= 16 warps "
                         f"a block, found rowt={rowt} kw={kw} ft={ft} u={u}")
    if not 1 <= cs <= 8 or cs > x.shape[1] // 128:
        raise ValueError(f"w8_small_m_cuda: cs (K parts of a cluster) must be in 1..{min(8, x.shape[1] // 128)} "
                         f"(at most 8, and the 128-input blocks of K={x.shape[1]}), found {cs}")
    if cs > 1 and cap < (9, 0):
        raise ValueError(f"w8_small_m_cuda: cs={cs} (a thread-block cluster) needs compute capability 9.0+, found "
                         f"{cap[0]}.{cap[1]}")
    sums = (kw // 2 + cs - 1) * rowt * ft * (2 if x.shape[0] > 8 else 1) * 512  # the sums' static shared memory
    if sums > 48 * 1024:
        raise ValueError(f"w8_small_m_cuda: rowt={rowt} kw={kw} ft={ft} cs={cs} needs {sums} bytes of shared memory for "
                         f"its sums at M={x.shape[0]}, over 48 KiB; use fewer K parts or narrower blocks")
    if not 1 <= occ <= 16:
        raise ValueError(f"w8_small_m_cuda: occ must be 1..16 blocks a multiprocessor, found {occ}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.device != x.device):
        raise ValueError(f"w8_small_m_cuda: bias must be [{weight.shape[0]}] on {x.device}, found "
                         f"{tuple(bias.shape)} on {bias.device}")
    return run(x, weight, scale, bias, rowt, kw, ft, u, cs, occ, pdl is not False and supports_pdl(x.device.index),
               block_k)


def run(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, rowt: int = 1,
        kw: int = 8, ft: int = 1, u: int = 1, cs: int = 1, occ: int = 1, pdl: bool = False,
        block_k: int = 0) -> torch.Tensor:
    """:func:`w8_small_m_cuda` without its checks (``pdl`` checked against
    :func:`~fastvideo_quant.kernels.cuda_rtc.supports_pdl` by the caller)."""
    return _launch(_bind(x, weight, rowt, kw, ft, u, cs, occ, pdl, block_k == 128), x, weight, scale, bias)
