"""Pieces shared by the AWQ Triton kernels: loading a word tile and turning nibbles into floats.

A program's tile is ``[BLOCK_N, W]`` int32 words, ``W = R * BK8``: ``R`` consecutive pack blocks of
one row band (``fvq_awq.layout``). Word ``jj`` of the tile belongs to pack block ``jj // BK8`` and
its nibble ``i`` holds input ``k0 + (jj // BK8) * 8 * BK8 + i * BK8 + jj % BK8`` — for a fixed ``i``
the tile's inputs are ``R`` contiguous runs of ``BK8``, so activations load as short vectors and
no reshape or permutation of the weight tile is ever needed (those cost shared-memory round trips).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAGIC = tl.constexpr(0x4B000000)  # float32 bits of 2**23: (MAGIC | q) read as float32 is 2**23 + q exactly


@triton.jit
def nibble_offsets(BK8: tl.constexpr, W: tl.constexpr):
    """``[W]`` offset (from ``k0``) of nibble 0 of each tile word; nibble ``i`` adds ``i * BK8``."""
    jj = tl.arange(0, W)
    return (jj // BK8) * (8 * BK8) + jj % BK8


@triton.jit
def code_as_float(w, i: tl.constexpr):
    """Nibble ``i`` of int32 words as float32 ``2**23 + q`` (no conversion instruction)."""
    return (((w >> (4 * i)) & 0xF) | MAGIC).to(tl.float32, bitcast=True)


@triton.jit
def group_params(s_ptr, z_ptr, kpos, offs_n, mask_n, K, GROUP: tl.constexpr):
    """Scales and ``2**23 + zero`` as float32 ``[BLOCK_N, W]`` for inputs ``kpos`` (``[W]``).

    ``scales_k``/``zeros_k`` are ``[N, K / GROUP]``, row-major like the words.
    """
    idx = offs_n[:, None] * (K // GROUP) + (kpos // GROUP)[None, :]
    s = tl.load(s_ptr + idx, mask=mask_n[:, None], other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=mask_n[:, None], other=0).to(tl.int32)
    return s, (z | MAGIC).to(tl.float32, bitcast=True)


@triton.jit
def group_params_3d(s_ptr, z_ptr, kpos, n3, mask_n, G, GROUP: tl.constexpr):
    """Scales and ``2**23 + zero`` as float32 ``[BLOCK_N, R, 1]`` for 3-D word tiles.

    ``kpos`` is ``[1, R, 1]`` (first input of each slab), ``n3`` is ``[BLOCK_N, 1, 1]``; ``G = K / GROUP``
    is passed in so the row stride keeps its divisibility.
    """
    idx = n3 * G + kpos // GROUP
    s = tl.load(s_ptr + idx, mask=mask_n[:, None, None], other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=mask_n[:, None, None], other=0).to(tl.int32)
    return s, (z | MAGIC).to(tl.float32, bitcast=True)


def blocks_per_step(layout, want: int) -> int:
    """The largest power of two ``R <= want`` whose ``R`` pack blocks divide the input (no K masks)."""
    blocks = layout.in_features // layout.pack_block
    r = 1
    while r * 2 <= want and blocks % (r * 2) == 0:
        r *= 2
    return r
