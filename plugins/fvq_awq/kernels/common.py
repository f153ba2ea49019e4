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
def zero_as_float(z):
    """int32 zero points as the float32 ``2**23 + z`` that :func:`code_as_float` values subtract (no conversion)."""
    return (z | MAGIC).to(tl.float32, bitcast=True)


@triton.jit
def group_params(s_ptr, z_ptr, kpos, offs_n, mask_n, K, GROUP: tl.constexpr):
    """Scales and ``2**23 + zero`` as float32 ``[BLOCK_N, W]`` for inputs ``kpos`` (``[W]``).

    ``scales_k``/``zeros_k`` are ``[N, K / GROUP]``, row-major like the words.
    """
    idx = offs_n[:, None] * (K // GROUP) + (kpos // GROUP)[None, :]
    s = tl.load(s_ptr + idx, mask=mask_n[:, None], other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=mask_n[:, None], other=0).to(tl.int32)
    return s, zero_as_float(z)


@triton.jit
def group_params_3d(s_ptr, z_ptr, kpos, n3, mask_n, G, GROUP: tl.constexpr):
    """Scales and ``2**23 + zero`` as float32 ``[BLOCK_N, R, 1]`` for 3-D word tiles.

    ``kpos`` is ``[1, R, 1]`` (first input of each slab), ``n3`` is ``[BLOCK_N, 1, 1]``; ``G = K / GROUP``
    is passed in so the row stride keeps its divisibility.
    """
    idx = n3 * G + kpos // GROUP
    s = tl.load(s_ptr + idx, mask=mask_n[:, None, None], other=0).to(tl.float32)
    z = tl.load(z_ptr + idx, mask=mask_n[:, None, None], other=0).to(tl.int32)
    return s, zero_as_float(z)


def blocks_per_step(layout, want: int) -> int:
    """The largest power of two ``R <= want`` whose ``R`` pack blocks divide the input (no K masks)."""
    blocks = layout.in_features // layout.pack_block
    r = 1
    while r * 2 <= want and blocks % (r * 2) == 0:
        r *= 2
    return r


def step_group_count(layout, rr: int) -> int:
    """How many quantization groups one ``gemm_t`` step (``8 * rr * bk8`` inputs) spans, where the kernel's per-group
    paths serve it: 1 (the step lies in one group), 2 or 4 (one pack block, ``rr == 1``, with groups of 64 or 32 —
    each nibble slab still in one group); 0 otherwise (per-element scales and zeros, the slow path)."""
    step = 8 * rr * layout.bk8
    if layout.group % step == 0:
        return 1
    if rr == 1 and step % layout.group == 0 and layout.group % layout.bk8 == 0 and step // layout.group in (2, 4):
        return step // layout.group
    return 0


def _packed_asm(magic: int, one: int, fma: str, zero_per_byte: bool = False) -> str:
    """PTX for :func:`dequant8_packed`: two words in, ``q - z`` for each of their 8 nibbles as 16-bit float pairs.

    Operands (``pack=2``): ``$0..$7`` the outputs (nibble ``i`` of both words, one 16-bit float each), ``$8``/``$9``
    the two words, ``$10``/``$11`` ``-(magic + z)`` of each word's row in both halves. ``prmt`` puts byte ``b`` of
    the first word in the low half and of the second in the high half; ``lop3`` (``(t & 0x000F000F) | magic``,
    LUT ``0xEA``) makes each half the float ``magic + q`` (``q`` in the low mantissa bits, exact); one packed FMA
    ``* 1 - (magic + z)`` leaves ``q - z`` exactly (|q - z| <= 15 fits both mantissas). Odd nibbles shift by 4 first.
    Three instructions per two weights, where the float32 path took five per weight (Hopper SASS, Triton 3.9).

    ``zero_per_byte`` (:func:`dequant8_packed4`, groups smaller than a 128-input step): byte ``b`` (nibbles ``2b``,
    ``2b + 1``) takes its own zero points from ``$(10 + 2b)``/``$(11 + 2b)`` — one more ``prmt`` per byte.
    """
    lines = ["{", ".reg .b32 t, u, one, mask, magic, nz;", f"mov.b32 one, {one * 0x10001:#010x};",
             "mov.b32 mask, 0x000F000F;", f"mov.b32 magic, {magic * 0x10001:#010x};"]
    if not zero_per_byte:
        lines.append("prmt.b32 nz, $10, $11, 0x7610;")
    for b in range(4):
        if zero_per_byte:
            lines.append(f"prmt.b32 nz, ${10 + 2 * b}, ${11 + 2 * b}, 0x7610;")
        lines.append(f"prmt.b32 t, $8, $9, {0x0400 + 0x0101 * b:#06x};")
        for odd in (0, 1):
            if odd:
                lines.append("shr.b32 t, t, 4;")
            lines += ["lop3.b32 u, t, mask, magic, 0xEA;", f"fma.rn.{fma} ${2 * b + odd}, u, one, nz;"]
    return "\n".join([*lines, "}"])


# 16-bit float bits of the magic numbers: bf16 0x4300 = 128 (ulp 1), fp16 0x6400 = 1024 (ulp 1); the sign bit
# added gives -(magic + z) with the zero in the same low mantissa bits.
PACKED_ASM_BF16 = tl.constexpr(_packed_asm(0x4300, 0x3F80, "bf16x2"))
PACKED_ASM_F16 = tl.constexpr(_packed_asm(0x6400, 0x3C00, "f16x2"))
PACKED_ASM_BF16_4Z = tl.constexpr(_packed_asm(0x4300, 0x3F80, "bf16x2", zero_per_byte=True))
PACKED_ASM_F16_4Z = tl.constexpr(_packed_asm(0x6400, 0x3C00, "f16x2", zero_per_byte=True))


@triton.jit
def packed_neg_zero(z, IS_BF16: tl.constexpr):
    """int32 zero points → ``-(magic + z)`` as 16-bit float bits in both halves of an int32 (operand of the asm)."""
    return (z | (0xC300 if IS_BF16 else 0xE400)) * 0x10001


@triton.jit
def dequant8_packed(w, nz, IS_BF16: tl.constexpr):
    """``q - z`` of nibbles 0..7 of int32 words ``w`` as eight bf16 (or fp16) tensors shaped like ``w``, exact.

    ``nz`` (``packed_neg_zero``, broadcast to ``w``'s shape) holds each word's zero point. Packed 16-bit math
    (``_packed_asm``); GPU only — the Triton interpreter cannot run inline PTX (the kernels take the float32
    path there, and ``tests/plugins/awq/test_packed_dequant.py`` runs this PTX through an emulator).
    """
    return tl.inline_asm_elementwise(PACKED_ASM_BF16 if IS_BF16 else PACKED_ASM_F16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r",
                                     [w, nz], dtype=((tl.bfloat16 if IS_BF16 else tl.float16),) * 8, is_pure=True,
                                     pack=2)


@triton.jit
def dequant8_float(w, zb, dtype: tl.constexpr):
    """The float32 path of :func:`dequant8_packed` (portable, and what the interpreter runs): ``q - z`` of nibbles
    0..7 as eight ``dtype`` tensors, from ``zb = 2**23 + z`` (float32, broadcastable to ``w``)."""
    return dequant8_float4(w, zb, zb, zb, zb, dtype)


@triton.jit
def dequant8_packed4(w, nz0, nz1, nz2, nz3, IS_BF16: tl.constexpr):
    """:func:`dequant8_packed` with a zero point per byte of the word: nibbles ``2b`` and ``2b + 1`` subtract the
    zero in ``nz<b>`` (groups of 32 or 64 inputs inside a step of 128: a word's nibbles span 4 or 2 groups)."""
    return tl.inline_asm_elementwise(PACKED_ASM_BF16_4Z if IS_BF16 else PACKED_ASM_F16_4Z,
                                     "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r", [w, nz0, nz1, nz2, nz3],
                                     dtype=((tl.bfloat16 if IS_BF16 else tl.float16),) * 8, is_pure=True, pack=2)


@triton.jit
def dequant8_float4(w, zb0, zb1, zb2, zb3, dtype: tl.constexpr):
    """The float32 path of :func:`dequant8_packed4`: nibbles ``2b``, ``2b + 1`` subtract ``zb<b>`` (``2**23 + z``)."""
    return ((code_as_float(w, 0) - zb0).to(dtype), (code_as_float(w, 1) - zb0).to(dtype),
            (code_as_float(w, 2) - zb1).to(dtype), (code_as_float(w, 3) - zb1).to(dtype),
            (code_as_float(w, 4) - zb2).to(dtype), (code_as_float(w, 5) - zb2).to(dtype),
            (code_as_float(w, 6) - zb3).to(dtype), (code_as_float(w, 7) - zb3).to(dtype))


@triton.jit
def step_groups(s_ptr, z_ptr, gidx, mask_n, GPS: tl.constexpr):
    """Scales (float32) and zero points (int32) of the ``GPS`` (2 or 4) groups a 128-input step spans, one per byte
    of its words (nibbles ``2b``, ``2b + 1`` lie in group ``2b * GPS // 8``): ``(s0, s1, s2, s3, z0, z1, z2, z3)``.
    ``gidx`` ``[BLOCK_N]`` indexes the step's first group in ``scales_k``/``zeros_k``."""
    s0 = tl.load(s_ptr + gidx, mask=mask_n, other=0).to(tl.float32)
    z0 = tl.load(z_ptr + gidx, mask=mask_n, other=0).to(tl.int32)
    s1 = tl.load(s_ptr + gidx + 1, mask=mask_n, other=0).to(tl.float32)
    z1 = tl.load(z_ptr + gidx + 1, mask=mask_n, other=0).to(tl.int32)
    if GPS == 2:  # bytes 0, 1 in the first group, 2, 3 in the second
        s2, s3, z2, z3 = s1, s1, z1, z1
        s1, z1 = s0, z0
    else:
        s2 = tl.load(s_ptr + gidx + 2, mask=mask_n, other=0).to(tl.float32)
        z2 = tl.load(z_ptr + gidx + 2, mask=mask_n, other=0).to(tl.int32)
        s3 = tl.load(s_ptr + gidx + 3, mask=mask_n, other=0).to(tl.float32)
        z3 = tl.load(z_ptr + gidx + 3, mask=mask_n, other=0).to(tl.int32)
    return s0, s1, s2, s3, z0, z1, z2, z3
