"""Autotuning configs of the W8A8 GEMM (``w8a8_gemm.py``) for Hopper (H100), chosen by the token count M.

Large M is compute-bound: big tiles (128x256 or 256x128, BLOCK_K 128 = one 128-byte row of 8-bit operands per
k-step) with 3-4 pipeline stages keep the 8-bit wgmma busy. Small M is bound by reading the weight: narrow N
tiles and long K steps give enough programs to cover the 132 SMs. ``prune`` keeps only configs whose BLOCK_M
fits the M bucket, so each bucket tunes over a handful. The same list serves int8 and float8_e4m3fn operands
(both 1 byte: the same shared-memory footprint).

Two configs come from ``benchmarks/w8a8_gemm_sweep.py`` (H100, 2026-11-25): 128x128x128 with 8 warps and 3
stages was the best config at M=1024 on all four int8 DiT shapes and on one fp8 shape; 64x128x256 with 4 warps
and 4 stages the best at fp8 M=128 (geomean over the four shapes, the fp8 plugin's Triton range). Two from
``benchmarks/fp8_path_sweep.py`` (H200, 2026-12-04, fp8): 32x64x512 with 4 stages and 64x64x512 with 3, within a
few percent of the best at 13824x5120 M=1-48 (the first the best there one call at a time, L2 emptied).
"""

from __future__ import annotations

import triton

from fastvideo_quant.kernels.triton_launch import next_pow2

M_BUCKET_MAX = 4096
#: Above 64 and up to this M the buckets are 64 rows wide, not powers of two.
M_BUCKET_FINE_MAX = 1024


def m_bucket(m: int) -> int:
    """The autotune key for M: a power of two in [16, 64] up to M=64, M rounded up to a multiple of 64 up to
    M=1024, then a power of two up to M_BUCKET_MAX.

    The autotuner picks once per bucket, at the first M it sees there, and that pick serves every M of the bucket. In
    a 64-row bucket every M has the same number of 64- and 128-row tiles, so the grid the pick was timed with is the
    grid it runs. Power-of-two buckets above 64 rows broke that: int8 on the H200 ran 5120x5120 M=256 at 0.87x bf16
    (GPU time) with the pick timed at M=192 — a 64-row tile makes 120 programs on 132 SMs there and 160 at M=256 — and
    M=512 at 0.90x with the pick timed at M=384 (``results/int8_nvidia-h200_2026-12-04_fine-m-pow2.md``). The cost:
    up to 15 buckets between 65 and 1024 instead of 4, each tuned once (~1-2 s at its first M; the compiled kernels
    are shared, M_BUCKET is not a constexpr). Above 1024 rows a tile more or less changes the run by little.
    """
    if m <= 64:
        return max(next_pow2(m), 16)
    if m <= M_BUCKET_FINE_MAX:
        return -(-m // 64) * 64
    return min(next_pow2(m), M_BUCKET_MAX)


def _cfg(bm: int, bn: int, bk: int, group: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                         num_warps=warps, num_stages=stages)


CONFIGS = [
    # large M (compute-bound)
    _cfg(128, 256, 128, 8, 8, 3),
    _cfg(256, 128, 128, 8, 8, 3),
    _cfg(128, 256, 64, 8, 8, 4),
    _cfg(128, 128, 128, 8, 8, 3),
    _cfg(128, 128, 128, 8, 8, 4),
    _cfg(128, 128, 128, 8, 4, 4),
    # medium M
    _cfg(64, 256, 128, 8, 4, 4),
    _cfg(64, 128, 256, 8, 4, 4),
    _cfg(64, 128, 128, 8, 4, 4),
    _cfg(64, 64, 256, 8, 4, 4),
    _cfg(64, 64, 128, 8, 4, 6),
    _cfg(64, 64, 512, 8, 4, 3),
    _cfg(128, 64, 128, 8, 4, 5),
    # small M (weight-read bound)
    _cfg(32, 128, 256, 1, 4, 4),
    _cfg(32, 64, 256, 1, 4, 4),
    _cfg(16, 64, 256, 1, 4, 4),
    _cfg(16, 32, 512, 1, 4, 3),
    _cfg(32, 64, 128, 1, 4, 8),
    _cfg(32, 64, 512, 1, 4, 4),
]


def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the configs whose BLOCK_M suits the M bucket (no 128-row tiles for 16 tokens, and back).

    Up to M=64 that is 16- to 64-row tiles: a 64-row tile at M <= 32 (its rows past M wrap onto real ones and are not
    stored) runs on Hopper's warpgroup MMA, and it was the fastest fp8 config at M=17-32 on all four DiT shapes on
    the H200 (5120x5120: 64x64x256 at 1.19-1.21x bf16 in a layer chain where the best 16- or 32-row tile ran
    1.05-1.07x; ``benchmarks/results/fp8-path-sweep_*_small-m-chain*.json``)."""
    bucket = named_args["M_BUCKET"]
    lo, hi = (64, 256) if bucket > 512 else ((32, 128) if bucket >= 128 else (16, 64))
    kept = [c for c in configs if lo <= c.kwargs["BLOCK_M"] <= hi]
    return kept or configs


#: The config the CPU interpreter runs (tests): small, to keep interpreted runs short.
INTERPRET_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4,
                                 num_stages=1)
