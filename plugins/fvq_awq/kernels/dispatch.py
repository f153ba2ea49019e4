"""Pick the GPU path and block sizes by M and shape: GEMV, fused GEMM (``gemm`` or weights-left ``gemm_t``),
or de-quantize then cuBLAS.

Kinds: ``gemv``, ``gemm``, ``gemm_t``, ``dequant`` (Triton) and ``cuda`` — the CUDA C++ kernel of ``small_m_cuda``
(NVRTC, M <= 16). At M <= 16 with K >= 1024 in whole 128s, N >= 2048 and groups of 32, 64 or whole 128s
(:func:`cuda_takes`) it is the rule: :func:`cuda_rule`
picks its tile by how the blocks fill the SMs (:data:`CUDA_RULE` at M <= 4 while it fits one wave). The table holds the
measured tiles per DiT shape and M bucket (``benchmarks/awq_cuda_probe.py``; H200, 2026-12-04). At the two N=5120
shapes they split K over a thread-block cluster (``"cluster": true``, compute capability 9.0: 160 columns of 32
features are too few blocks for 132 SMs): M=5-16 at 5120x5120, M=1-16 at 13824x5120; on a GPU without clusters those
points take the rules. The 8 bucket (M=5-8) exists for the CUDA kernel.

Choices come from ``tuning.json`` beside this file, written by the sweeps (``benchmarks/awq_sweep.py --tuning``;
M=4 and M=32-256 on the H200, M >= 1024 on the H100): for each swept ``(K, N)`` and M bucket (``MS``: an M takes the
first bucket at or above it), the fastest configuration after a correctness check. ``FVQ_AWQ_TUNING=<path>`` points
at another table; the GPU path reads it once, when this module is imported. Shapes and M buckets not in the table use
the rules below: :func:`cuda_rule` at M <= 16 where the CUDA kernel takes the shape, ``_default_small`` at other
M <= 16 (and the CUDA kernel's fallback), ``_default_mid`` at 16 < M <= 128.

Per call the host does one cached lookup by (M, layer, float32 activations?, device) that returns the kernel
wrapper and its keyword arguments; the wrappers launch the compiled kernel directly
(``fastvideo_quant.kernels.triton_launch.LaunchCache``) with their launch plan cached per layer and M. The fused
``gemm_t`` (the route at M <= 128 on the DiT shapes) skips even that after its first call per call key: a plan
(``awq_linear_cuda``) holds its bound launch (host per call on the H200 device host: M=1 38.6 -> 31.2 µs).
Float32 activations stay float32 throughout: the GEMV at M ≤ 16, else de-quantize to float32 and a float32 GEMM. The
fused GEMM needs a dot K-extent of at least 16.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.errors import warn_at_caller
from fastvideo_quant.kernels.cuda_rtc import supports_pdl
from fastvideo_quant.kernels.split_k import sm_count, split_for_occupancy
from fastvideo_quant.kernels.triton_launch import PlanCache, cdiv, check_current_device
from fvq_awq import fp8_compute
from fvq_awq.kernels.common import blocks_per_step, step_group_count
from fvq_awq.kernels.small_m_cuda import groups_per_block
from fvq_awq.layout import KernelLayout, choose_bk8

_DEFAULT_TABLE = Path(__file__).with_name("tuning.json")
MS = (1, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {}


@functools.lru_cache(maxsize=256)
def _choose(M: int, K: int, N: int, path: str, group: int = 128, sms: int = 132, clusters: bool = True) -> dict:
    """The configuration for an ``[M, K] x [K, N]`` product from the table at ``path``: ``{"kind": ..., **kwargs}``.
    ``clusters``: whether the device runs the CUDA kernel's cluster split (:func:`cuda_clusters_available`); where it
    does not, a table pick that needs one gives way to the rules below.

    Cached per shape: the eager M=1 call spends tens of µs on the host, so the lookup stays out of it."""
    table = _load(path)
    bucket = next((m for m in MS if m >= M), MS[-1])
    packed = packed_steps(K, group)
    if bucket == 128 and not packed:  # (gemm_t's per-element path is far slower: the 256 bucket's de-quantize)
        bucket = 256
    entry = table.get(f"{K}x{N}x{bucket}")
    if entry is not None and entry.get("scale_in") and group % 128:
        # (the 256-row scale_in tile won by 5% at group 128; with groups of 64 / 32 it ran 1-19% behind de-quantize
        # + cuBLAS on the H200: results/awq-groups-after_*)
        return {"kind": "dequant", "block_n": 32, "r": 2}
    if entry is not None and entry.get("kind") == "cuda" and (not cuda_takes(K, group) or group < 128):
        # (a group size the CUDA kernel does not take: the Triton rule below; groups of 64 / 32: the table's tiles
        # were timed at group 128, and cuda_rule's pick for them was within 0-12% of the fastest tile at every DiT
        # point where the table's ran up to 31% behind — H100, results/awq-cuda-groups_*)
        entry = None
    if entry is not None and entry.get("cluster") and not clusters:
        entry = None  # (measured with a cluster split only; the rules are what was measured without one)
    if entry is not None:
        return dict(entry)
    if M <= 16 and cuda_takes(K, group) and K >= 1024 and N >= 2048:
        return cuda_rule(M, K, N, sms, clusters, group)
    if M <= 16:
        return _default_small(M, K, N, group, sms, packed)
    if M <= 128 and packed:
        return _default_mid(M, K, N, sms)
    # (the fused awq_gemm at 64x128 tiles was the rule to M=256 until 2026-12-06: the table never picked it, and with
    # groups of 32 it ran 0.05-0.12x bf16 at M=256; 1.8-10.7x de-quantize + cuBLAS's time at M=160-256 on ten untabled
    # layers, H100 — results/awq-mid-m-rule_*)
    return {"kind": "dequant", "block_n": 32, "r": 2}


#: The CUDA kernel's tile at M <= 8 on untabled shapes: one block per 16 output features, its 8 warps each taking an
#: eighth of K (summed in shared memory), no split K. H200, 2026-12-04 (``results/awq-cuda-probe_*_kw-ft.json``, 102
#: tiles at M=1/4/8 on the four DiT shapes): the fastest tile at 5120x5120 and 13824x5120, within 18% of the fastest
#: elsewhere, and ahead of the Triton route at all twelve points (13.5-27.3 µs against 17.0-32.7). The table holds
#: the fastest per shape. Needs K >= 1024 (a 128-input block for each warp) and N >= 2048 (a block or more per SM).
CUDA_RULE = {"kind": "cuda", "rowt": 1, "u": 1, "kw": 8, "ft": 1, "split_k": 1}

#: The tile the cluster picks in the table use (K in 3 parts of a thread-block cluster, 32 features a block of 4 warps,
#: registers capped for 4 blocks an SM; compute capability 9.0).
CUDA_CLUSTER_TILE = {"kind": "cuda", "rowt": 1, "u": 1, "kw": 4, "ft": 2, "split_k": 3, "cluster": True, "occ": 4}

#: The tiles :func:`cuda_rule` chooses among, each with the blocks an SM holds at M <= 8, at M=9-16, and at M=9-16
#: with groups of 32 (from the registers NVRTC 13 gives them for sm_90, recorded in ``results/awq-cuda-probe_*``;
#: groups of 64 / 32 from the CUDA 13.0 ``nvcc -Xptxas -v`` of the same source: 65536 registers an SM, 64 warps).
#: (Groups of 64 / 32 take :data:`CUDA_RULE_GROUPS` at M <= 8.)
RULE_TILES: tuple[tuple[dict, tuple[int, int, int]], ...] = (
    (CUDA_CLUSTER_TILE, (4, 4, 4)),  # 112-116 / 128 registers (capped), 4 warps
    ({"kind": "cuda", "rowt": 1, "u": 1, "kw": 4, "ft": 2, "split_k": 1}, (4, 3, 2)),  # 124 / 156 / 229, 4 warps
    ({"kind": "cuda", "rowt": 1, "u": 1, "kw": 4, "ft": 4, "split_k": 1}, (2, 2, 2)),  # 188 / 255 / 255, 4 warps
    ({"kind": "cuda", "rowt": 2, "u": 1, "kw": 8, "ft": 2, "split_k": 1}, (1, 1, 1)),  # 115 / 128 / 128, 16 warps
)


#: :data:`CUDA_RULE` for groups of 64 / 32 at M <= 8: registers capped for 3 blocks an SM (80 a thread). Uncapped,
#: the 2 / 4 scales and zero points a block and their partial sums take it to 87-128 registers and 2 blocks an SM;
#: capped, it was the fastest tile or within 12% of it at all 24 M <= 8 points of the four DiT shapes (H100,
#: ``results/awq-cuda-groups_*``; 5120x5120 M=1 group 64: 15.2 µs against 19.5 uncapped, group 128 14.5).
CUDA_RULE_GROUPS = {**CUDA_RULE, "occ": 3}


def cuda_rule(M: int, K: int, N: int, sms: int, clusters: bool, group: int = 128) -> dict:
    """The CUDA kernel's tile for an untabled shape at M <= 16 (K >= 1024, N >= 2048, :func:`cuda_takes`): the one
    whose blocks fill the largest part of one wave on ``sms`` SMs without needing a second (none fits: the best-filled
    last wave). At M <= 4 :data:`CUDA_RULE` while its blocks fit one wave, at M=5-8 the cluster tile first where K
    is 5120 or more; the cluster tile only with ``clusters`` and within one wave. H200, 2026-12-04
    (``results/awq-cuda-probe_*_cluster-rules2.json``, nine untabled shapes at M=1/8/16, each tile timed in one
    process): the tile this picks is within 1% of the fastest of the five at 24 of 27 points and within 3.6% at all,
    and takes 0.51-0.97x the Triton rule's time; M=5 and 8 again in ``…_cluster-rules-m5-8.json``;
    ``benchmarks/awq_notes.md``, sixteenth session. Groups of 64 / 32 (``group``): :data:`CUDA_RULE_GROUPS` at
    M <= 8, else as for group 128 with the blocks an SM their registers allow (fewer for one tile with groups of 32:
    at 3072x12288 M=16 the 64-feature tile it then picks ran 27.4 µs where the 32-feature tile, which needs 1.45 waves
    there, ran 29.5; H100, ``results/awq-cuda-groups_nvidia-h100-80gb-hbm3_2026-12-06.json``)."""
    mt2 = M > 8
    if group < 128 and not mt2:
        return dict(CUDA_RULE_GROUPS)
    # M=5-8: the cluster tile led CUDA_RULE by 5-12% at K=5120-14336 (four shapes), trailed by 2.5-6% at 4096x4096
    # (a third of K=4096 leaves each warp under 3 blocks) and tied at 3072x3072
    if 4 < M <= 8 and clusters and K >= 5120 and -(-N // 32) * 3 <= 4 * sms:
        return dict(CUDA_CLUSTER_TILE)
    if not mt2 and -(-N // 16) <= 3 * sms:  # CUDA_RULE: 16 features a block of 8 warps, 3 blocks an SM
        return dict(CUDA_RULE)
    best, best_key = None, None
    for tile, per_sm in RULE_TILES:
        if tile.get("cluster") and not (mt2 and clusters):
            continue
        blocks = -(-N // (16 * tile["ft"] * tile["rowt"])) * (tile["split_k"] if tile.get("cluster") else 1)
        fill = blocks / (per_sm[2 if mt2 and group == 32 else int(mt2)] * sms)
        if tile.get("cluster") and fill > 1:
            continue  # (the cluster split is for N too small to fill the SMs)
        key = (fill <= 1, fill if fill <= 1 else fill / -(-fill // 1))
        if best_key is None or key > best_key:
            best, best_key = tile, key
    return dict(best)


def cuda_takes(K: int, group: int) -> bool:
    """Whether the CUDA small-M kernel takes a layer of ``K`` inputs in groups of ``group``: inputs in whole 128s,
    groups of 32, 64 or a multiple of 128 (``small_m_cuda.groups_per_block``)."""
    return K % 128 == 0 and groups_per_block(group) > 0


def packed_steps(K: int, group: int) -> bool:
    """Whether ``gemm_t`` at ``r=1`` runs on the tensor cores (dot K-extent ``bk8 >= 16``) with its steps scaled after
    the dot in packed 16-bit math (``common.step_group_count``): groups of 128 or more (one group a step), or of
    64 / 32 on inputs in whole 128s (2 or 4 groups a step). Otherwise the steps de-quantize per element in float32 —
    several times slower."""
    layout = KernelLayout(K, 1, group, choose_bk8(K, group))
    return layout.bk8 >= 16 and step_group_count(layout, 1) > 0


def _default_small(M: int, K: int, N: int, group: int, sms: int, packed: bool) -> dict:
    """M <= 16 on untabled shapes the CUDA rule does not take, and the CUDA kernel's fallback. Where a 128-input
    step lies in one group: the packed ``gemm_t`` (x padded to 16 rows), 64-row tiles of 2 warps, 3 stages, scales
    prefetched, and the split giving about 5 programs per multiprocessor. H200, 2026-12-03: re-measured against the
    sweeps' picks in one run (``results/awq-sweep-default-check_*``), it was the fastest or within 3% at M=1 and 16
    on all four DiT shapes (the sweeps' own picks differed by up to 10% between runs, which is their noise), and at
    M=1 it beat the best GEMV by 7-22% (``results/awq-sweep-packed_*``). Groups of 64 / 32 take the same rule
    (``packed``: ``packed_steps``). Otherwise (``gemm_t`` de-quantizes per element in float32 there) the earlier
    defaults: the GEMV up to M=4, ``gemm_t`` above."""
    if packed:
        # (gemm_t strides its K steps over the splits, so a split need not divide them: at K=13824, 108 steps, split
        # 8 (13-14 steps a program) was the sweeps' pick; requiring a divisor (split 4) read 1.18x against 1.56x, graphs)
        splits = [s for s in (1, 2, 4, 8, 16) if s <= K // 128]
        split = split_for_occupancy(cdiv(N, 64), sms, splits)
        # groups of 32 (four scale / zero pairs and partial sums a step) spill at 2 warps: 4 warps ran 1.10-1.24x bf16
        # at M=1 where 2 warps ran 0.91-1.10x (H200, results/awq-groups-after_*)
        return {"kind": "gemm_t", "block_m": 16, "block_n": 64, "split_k": split, "r": 1,
                "num_warps": 2 if group % 64 == 0 else 4, "num_stages": 3, "prefetch": 1}
    if M <= 4:
        return _default_gemv()
    return {"kind": "gemm_t", "block_m": 16, "block_n": 64, "split_k": 2, "r": 1, "num_warps": 4, "num_stages": 3}


def _default_mid(M: int, K: int, N: int, sms: int) -> dict:
    """16 < M <= 128 on untabled shapes, 128-input steps in one group: ``gemm_t`` with one partial sum per step
    (``chains=1``; two spill at these tiles). Up to M=64, 64x64 tiles of 4 warps split for about two programs per
    multiprocessor; above, 128x128 tiles of 8 warps (178 registers a thread: one program per multiprocessor) split
    for about one. H200, 2026-12-03 (``results/awq-sweep-midm*``): at M=128 this was the sweeps' pick on all four
    DiT shapes; at M=32/64 within 4-25% of the pick (the table holds the picks for those shapes). De-quantize +
    cuBLAS was 1.4-2.7x slower at all of those points: it writes the whole bf16 weight first."""
    if M <= 64:
        bm, bn, warps, per_sm = 64, 64, 4, 2
    else:
        bm, bn, warps, per_sm = 128, 128, 8, 1
    tiles = cdiv(N, bn) * cdiv(M, bm)
    splits = [s for s in (1, 2, 3, 4, 6, 8) if s <= K // 128]
    split = min(splits or [1], key=lambda s: (abs(tiles * s - per_sm * sms), s))
    return {"kind": "gemm_t", "block_m": bm, "block_n": bn, "split_k": split, "r": 1, "num_warps": warps,
            "num_stages": 3, "chains": 1}


def _default_gemv() -> dict:
    """The GEMV tile for untabled shapes: 4 rows a program — in the H200 M=1 sweep (2026-12-03, ``benchmarks/
    awq_notes.md``) the winner at 5120x5120, within 1% of the winner at 13824x5120 and ahead of round 2's 8-row tile on
    all four DiT shapes. No split-K: splitting was slower there for every tile this fine (the reduction costs more
    than the extra programs gain)."""
    return {"kind": "gemv", "block_n": 4, "r": 4, "num_warps": 4, "num_stages": 3}


@functools.lru_cache(maxsize=1024)
def _route(M: int, layout, fp32: bool, path: str, index: int) -> tuple[Callable, dict]:
    """``(kernel wrapper, its kwargs)`` for one layer, M, activation kind and CUDA device ``index`` (-1: no CUDA
    device, the Triton interpreter's CPU tensors): a cached lookup per call. Keyed by device because the pick
    depends on it — its SM count, whether the CUDA kernel and its cluster split run there: a machine with a Hopper
    beside an older GPU must not route the older one's calls to a cluster tile."""
    from fvq_awq.kernels.gemm import awq_gemm, awq_gemm_t
    from fvq_awq.kernels.gemv import awq_gemv

    sms = sm_count(index) if index >= 0 else 132
    cfg = dict(_choose(M, layout.in_features, layout.out_features, path, layout.group, sms))
    if cfg.get("cluster") and not fp32 and not cuda_clusters_available(index):  # (asked only where a pick needs it)
        cfg = dict(_choose(M, layout.in_features, layout.out_features, path, layout.group, sms, False))
    kind = cfg.pop("kind")
    if fp32:  # float32 activations: float32 math throughout — the GEMV's FMAs at small M, else a float32 GEMM
        if M <= 16:  # (the GEMV's grid puts M on axis 1, which CUDA caps at 65535 rows)
            return awq_gemv, {k: v for k, v in _default_gemv().items() if k != "kind"}
        return _dequant_linear, {}
    if kind in ("gemm", "gemm_t") and blocks_per_step(layout, cfg.get("r", 1)) * layout.bk8 < 16:
        kind, cfg = ("gemv", {}) if M <= 16 else ("dequant", {})
    if kind == "gemv":
        return awq_gemv, cfg
    if kind == "gemm":
        return awq_gemm, cfg
    if kind == "gemm_t":
        return awq_gemm_t, cfg
    if kind == "cuda":
        rule = _default_small(M, layout.in_features, layout.out_features, layout.group, sms, True)
        rule.pop("kind")  # (gemm_t's keywords)
        if cuda_small_m_available(index):
            return _cuda_small_m, {**cfg, "fallback": rule}
        return awq_gemm_t, rule
    return _dequant_linear, cfg


#: ``FVQ_AWQ_CUDA=0`` keeps the ``"cuda"`` picks (the table's and :data:`CUDA_RULE`) on the Triton kernels (for A/B
#: timing, or a machine whose NVRTC misbehaves).
CUDA_ENABLED = os.environ.get("FVQ_AWQ_CUDA", "1") != "0"


@functools.cache
def cuda_small_m_available(index: int) -> bool:
    """Whether the CUDA C++ small-M kernel (``small_m_cuda``) compiles and loads on CUDA device ``index``; checked
    once per device (-1, no device: False). Where it does not, the ``"cuda"`` picks run the Triton rule instead, with
    one warning saying why."""
    if not CUDA_ENABLED or index < 0:
        return False
    from fastvideo_quant.kernels.cuda_rtc import CudaRtcError
    from fvq_awq.kernels.small_m_cuda import _launcher

    try:
        rule = CUDA_RULE  # (the variant most calls run: compiling it here is not wasted)
        _launcher(index, True, 1, rule["rowt"], rule["u"], True, rule["kw"], rule["ft"],
                  pdl=supports_pdl(index))  # (as the layers launch it)
    except CudaRtcError as e:
        warn_at_caller(f"fvq_awq: the CUDA C++ small-M kernel is unavailable ({e}); the AWQ layers use the Triton "
                      "kernels at those points instead (set FVQ_AWQ_CUDA=0 to silence this)")
        return False
    return True


@functools.cache
def cuda_clusters_available(index: int) -> bool:
    """Whether the CUDA kernel's cluster split (``small_m_cuda``'s ``cluster``) runs on CUDA device ``index``:
    compute capability 9.0 or newer and the table's cluster variant compiles (checked once per device, with
    :func:`cuda_small_m_available`). Without it the table's cluster picks give way to the rules."""
    if not cuda_small_m_available(index) or torch.cuda.get_device_capability(index) < (9, 0):
        return False
    from fastvideo_quant.kernels.cuda_rtc import CudaRtcError
    from fvq_awq.kernels.small_m_cuda import _launcher

    try:
        t = CUDA_CLUSTER_TILE  # (the table's tile at the N=5120 shapes, and cuda_rule's)
        _launcher(index, True, 1, t["rowt"], t["u"], True, t["kw"], t["ft"], t["split_k"], t["occ"],
                  pdl=supports_pdl(index))  # (as the layers launch it)
    except CudaRtcError as e:
        warn_at_caller(f"fvq_awq: the CUDA small-M kernel's cluster split does not compile here ({e}); the AWQ layers "
                      "use the rules at the points the table measured with it")
        return False
    return True


def _cuda_small_m(x, qweight_k, zeros_k, scales_k, layout, bias, fallback: dict, rowt: int, u: int,
                  split_k: int, kw: int = 1, ft: int = 1, cluster: bool = False, occ: int = 1) -> torch.Tensor:
    """The ``"cuda"`` pick (the table's or :data:`CUDA_RULE`; with programmatic dependent launch where ``x``'s device
    runs it — asked per call, as routes are cached per layer and M, not per device), or — for a call the kernel does
    not take (``x`` rows not 8-byte aligned, weights not in the contiguous kernel layout) — the Triton rule's
    ``gemm_t`` (``fallback``: its keywords)."""
    from fvq_awq.kernels import small_m_cuda

    if small_m_cuda.supports(x, layout, qweight_k, zeros_k, scales_k):
        return small_m_cuda.run(x, qweight_k, zeros_k, scales_k, layout, bias, rowt, u, split_k, kw, ft, cluster, occ,
                                supports_pdl(x.device.index))
    return _gemm_t()(x, qweight_k, zeros_k, scales_k, layout, bias, **fallback)


def _dequant_linear(x, qweight_k, zeros_k, scales_k, layout, bias, **cfg) -> torch.Tensor:
    from fvq_awq.kernels.gemm import awq_dequantize

    w = awq_dequantize(qweight_k, zeros_k, scales_k, layout, x.dtype, **cfg)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))  # (the kernels accept any bias dtype too)


_TABLE_PATH = os.environ.get("FVQ_AWQ_TUNING", str(_DEFAULT_TABLE))
_ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_input(x: torch.Tensor, layout) -> None:
    """The kernels index ``x`` by the layer's K and launch on the current device: refuse what would read wrong."""
    if x.shape[-1] != layout.in_features or x.dtype not in _ACT_DTYPES:
        raise ValueError(f"AWQ layer ({layout.in_features} -> {layout.out_features}): expected x [..., "
                         f"{layout.in_features}] in float16/bfloat16/float32; found {tuple(x.shape)} {x.dtype}")
    check_current_device(x, "AWQ layer")


#: gemm_t launch plans by call key (see :func:`awq_linear_cuda`).
_PLANS = PlanCache()


def awq_linear_cuda(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                    layout, bias: torch.Tensor | None = None, fp8_scale: torch.Tensor | None = None,
                    fp8_min_m: int = 0, order: torch.Tensor | None = None, x_features: int = 0) -> torch.Tensor:
    """``x @ W.T (+ bias)`` on CUDA through the Triton kernels; ``x`` is ``[..., K]``. With ``fp8_scale`` (the layer's
    ``fp8_scale_k``), calls of ``fp8_min_m`` rows or more take the fp8 route (``fvq_awq.fp8_compute``) instead.

    With ``order`` (activation ordering, ``fvq_awq.act_order``: int64 or int32 ``[K]``, every value below
    ``x_features``): ``x`` is ``[..., x_features]``, the layer's own inputs, and the product is ``x[..., order] @
    W.T``, the activations gathered first (``act_order.gather_inputs``) — in eager and compiled code alike.

    Per call: one cached route lookup by (M, layer, fp32?, device) and the kernel's direct launch. Where the route is the
    fused ``gemm_t`` (16-bit activations, M <= 128 on the DiT shapes: where eager calls wait on the host), the first
    call per *call key* — shape, strides, dtype, 16-byte alignment and device of ``x`` and of every weight tensor
    and the bias, the layer's layout, the current device — runs the checked path and records its launch; later
    calls with that key allocate the output and launch (a key that differs in anything gets, or builds, its own).
    """
    if order is not None:
        return _ordered_linear(x, qweight_k, zeros_k, scales_k, layout, bias, fp8_scale, fp8_min_m, order, x_features)
    if fp8_scale is not None and fp8_compute.takes(x, layout.in_features, fp8_min_m):
        _check_input(x, layout)
        return fp8_compute.linear(x, qweight_k, zeros_k, scales_k, layout, fp8_scale, bias)
    index = torch.cuda.current_device() if x.is_cuda else -1
    key = (x.shape, x.stride(), x.dtype, x.data_ptr() % 16, x.get_device(), index, layout,
           qweight_k.shape, qweight_k.stride(), qweight_k.dtype, qweight_k.data_ptr() % 16, qweight_k.get_device(),
           zeros_k.shape, zeros_k.stride(), zeros_k.dtype, zeros_k.data_ptr() % 16, zeros_k.get_device(),
           scales_k.shape, scales_k.stride(), scales_k.dtype, scales_k.data_ptr() % 16, scales_k.get_device(),
           None if bias is None else (bias.shape, bias.stride(), bias.dtype, bias.data_ptr() % 16,
                                      bias.get_device()))
    plan = _PLANS.get(key)
    if plan is not None:
        x2 = x if x.dim() == 2 else x.view(-1, layout.in_features)
        out = plan(x2, qweight_k, zeros_k, scales_k, bias,
                   torch._C._cuda_getCurrentRawStream(index) if index >= 0 else None)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], layout.out_features)
    return _checked_linear(x, qweight_k, zeros_k, scales_k, layout, bias, key)


def _ordered_linear(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
                    bias: torch.Tensor | None, fp8_scale: torch.Tensor | None, fp8_min_m: int, order: torch.Tensor,
                    x_features: int) -> torch.Tensor:
    """:func:`awq_linear_cuda` with ``order``: the inputs checked, gathered into the kernel's order
    (``act_order.gather_inputs``: the Triton gather), then the plain call.

    (A gather fused into the CUDA small-M kernel — each warp gathering its x rows into shared memory per 128-input
    block — was built and measured on an H100, bit for bit the plain kernel on gathered rows, and lost: within 0.3-0.9
    µs of the separate gather at M=1 on three DiT shapes, 6.5 µs behind on the fourth, and 1.3-7.6x slower at M=4-16,
    where each block's rows came through a dependent load chain in the weight stream's path:
    ``benchmarks/awq_notes.md``, forty-second session.)"""
    if x.shape[-1] != x_features or x.dtype not in _ACT_DTYPES:
        raise ValueError(f"AWQ layer ({x_features} -> {layout.out_features}, inputs in activation order): expected x "
                         f"[..., {x_features}] in float16/bfloat16/float32; found {tuple(x.shape)} {x.dtype}")
    if order.shape != (layout.in_features,) or order.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"AWQ layer ({x_features} -> {layout.out_features}): the input order must be int32 or int64 "
                         f"[{layout.in_features}] (one source input per kernel input); found {tuple(order.shape)} "
                         f"{order.dtype}")
    check_current_device(x, "AWQ layer")
    from fvq_awq.act_order import gather_inputs

    return awq_linear_cuda(gather_inputs(x, order), qweight_k, zeros_k, scales_k, layout, bias, fp8_scale, fp8_min_m)


def _checked_linear(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                    layout, bias: torch.Tensor | None, plan_key: tuple | None = None) -> torch.Tensor:
    """The checked call (input checks, route, launch); with ``plan_key``, a ``gemm_t`` launch is recorded for it."""
    _check_input(x, layout)
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], layout.out_features)
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    fn, cfg = _route(x2.shape[0], layout, x.dtype == torch.float32, _TABLE_PATH, x.device.index if x.is_cuda else -1)
    # (bind_gemm_t makes no plan for a 2-D x whose columns are strided; a 3-D x must reshape as the plan's view)
    if plan_key is not None and fn is _gemm_t() and (x.dim() == 2 or x.is_contiguous()):
        from fvq_awq.kernels.gemm import bind_gemm_t

        out, plan = bind_gemm_t(x2, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
        if plan is not None:
            _PLANS.put(plan_key, plan)
    else:
        out = fn(x2, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], layout.out_features)


@functools.cache
def _gemm_t() -> Callable:
    from fvq_awq.kernels.gemm import awq_gemm_t

    return awq_gemm_t
