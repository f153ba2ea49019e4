"""The kernel layout the GPU kernels read, made from the AutoAWQ tensors after loading.

``qweight_k`` int32 ``[out, in/8]``: K-major so one output row's weights are contiguous (the M=1
GEMV reads each row as a coalesced stream). Within a *pack block* of ``8 * bk8`` input values
starting at ``k0``, word ``k0/8 + j`` nibble ``i`` holds input ``k0 + i * bk8 + j``: nibble slab
``i`` of a block lines up with the contiguous activation slice ``x[k0 + i*bk8 : k0 + (i+1)*bk8]``,
and (since ``bk8`` divides the group size) one slab never straddles a group.
``scales_k`` fp16 ``[out, in/group]`` and ``zeros_k`` uint8 ``[out, in/group]`` (unpacked: the kernels
add ``0x4B000000`` to turn it into the float ``2**23 + z`` without a conversion instruction). Row-major
per output row like the words, so Triton gives the scale gather the weight tile's register layout
(a column-major gather got a transposed layout and a shared-memory conversion per nibble).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fvq_awq import format as awq_format
from fvq_awq.act_order import Regroup, regrouped_codes
from fvq_awq.ct_format import unpack_rows
from fvq_awq.format import _to_int32, unpack_awq

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64, device="cpu")  # not the device context the plugin is imported in


@dataclass(frozen=True)
class KernelLayout:
    """Geometry of one layer's kernel-format weights."""

    in_features: int
    out_features: int
    group: int
    bk8: int  # words per row in one pack block; pack block = 8 * bk8 inputs
    #: ``qweight_k``'s shape: ``[out, in / 8]`` int32 words (what every call checks it against). Made with the layout,
    #: not on first use: a functools.cached_property takes an RLock then (Python 3.11), which dynamo cannot trace — a
    #: model compiled before its first eager call broke its graph in every AWQ layer (fullgraph=True failed).
    words_shape: torch.Size = field(init=False, repr=False, compare=False)

    @property
    def pack_block(self) -> int:
        return 8 * self.bk8

    def __post_init__(self) -> None:
        object.__setattr__(self, "words_shape", torch.Size((self.out_features, self.in_features // 8)))


def choose_bk8(in_features: int, group: int) -> int:
    """Largest pack-block width (in words) that divides the input and keeps slabs inside a group."""
    for bk8 in (16, 8, 4, 2, 1):
        if in_features % (8 * bk8) == 0 and group % bk8 == 0:
            return bk8
    raise ValueError(f"input size {in_features} is not a multiple of 8; AWQ needs whole int32 words")


def repack_to_kernel(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int):
    """AutoAWQ ``qweight/qzeros/scales`` → (``qweight_k``, ``zeros_k``, ``scales_k``, layout), in chunks of output
    rows (whole packed words of ``qweight``) so that loading a large layer needs little memory beyond its result."""
    in_features, out = qweight.shape[0], qweight.shape[1] * 8
    layout = KernelLayout(in_features, out, group, choose_bk8(in_features, group))
    words = kernel_words(layout, lambda start, stop: unpack_awq(qweight[:, start // 8:stop // 8]).t(), qweight.device)
    zeros = unpack_awq(qzeros).t().contiguous()
    return words, zeros, scales.to(torch.float16).t().contiguous(), layout


def ct_to_kernel(weight_packed: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int,
                 regroup: Regroup | None = None):
    """compressed-tensors ``weight_packed`` int32 ``[out, in/8]``, stored zero points uint8 ``[out, G]`` and scales
    ``[out, G]`` (``fvq_awq.ct_format``) → (``qweight_k``, ``zeros_k``, ``scales_k``, layout), in chunks of output rows.
    The zero points and scales are already the kernel's ``[out, G]``; the scales become fp16. With ``regroup``
    (``actorder: group``, ``fvq_awq.act_order``) the inputs go into its order and its kernel groups, each kernel group
    taking its checkpoint group's zero point and scale."""
    out, in_features = weight_packed.shape[0], weight_packed.shape[1] * 8
    if regroup is None:
        layout = KernelLayout(in_features, out, group, choose_bk8(in_features, group))
        words = kernel_words(layout, lambda start, stop: unpack_rows(weight_packed[start:stop]), weight_packed.device)
        return words, zeros.to(torch.uint8).contiguous(), scales.to(torch.float16).contiguous(), layout
    source = regroup.source.to(weight_packed.device)
    zeros_k = zeros.to(torch.uint8).index_select(1, source).contiguous()
    k = regroup.in_features
    layout = KernelLayout(k, out, regroup.group, choose_bk8(k, regroup.group))
    words = kernel_words(layout, lambda start, stop: regrouped_codes(unpack_rows(weight_packed[start:stop]),
                                                                     zeros_k[start:stop], regroup), weight_packed.device)
    return words, zeros_k, scales.index_select(1, source).to(torch.float16).contiguous(), layout


def kernel_words(layout: KernelLayout, codes_of, device: torch.device) -> torch.Tensor:
    """``qweight_k`` of ``layout`` from ``codes_of(start, stop)``: the codes ``[stop - start, in]`` (uint8, natural
    input order) of output rows ``start .. stop-1``, asked for in chunks of whole words."""
    out, in_features = layout.out_features, layout.in_features
    blocks, bk8 = in_features // layout.pack_block, layout.bk8
    words = torch.empty(out, in_features // 8, dtype=torch.int32, device=device)
    shifts = _SHIFTS.to(device)
    # as many output rows as format.PACK_CHUNK_NUMEL codes (whole words): the int64 temporaries stay near 32 MiB
    # whatever the layer's size (a whole fused 22016 x 4096 layer at once took ~1.5 GiB above its packed size)
    rows = max(8, awq_format.PACK_CHUNK_NUMEL // in_features // 8 * 8)
    for start in range(0, out, rows):
        q = codes_of(start, min(start + rows, out))  # [rows, in] uint8 codes
        v = q.to(torch.int64).reshape(q.shape[0], blocks, 8, bk8).transpose(2, 3)
        words[start:start + q.shape[0]] = _to_int32((v << shifts).sum(-1)).reshape(q.shape[0], in_features // 8)
    return words


def unpack_kernel(qweight_k: torch.Tensor, layout: KernelLayout) -> torch.Tensor:
    """Kernel-layout words → int64 ``[out, in]`` codes in natural input order (vectorised)."""
    out, k, bk8 = layout.out_features, layout.in_features, layout.bk8
    # (shifts made here, not the module's constant: the op's backward is traced with fake tensors, no real constants)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=qweight_k.device)
    nib = (qweight_k.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF  # [out, in/8, 8]
    return nib.reshape(out, k // layout.pack_block, bk8, 8).transpose(2, 3).reshape(out, k)


def dequantize_kernel(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                      layout: KernelLayout) -> torch.Tensor:
    """Kernel-layout tensors → float32 ``W[out, in]`` (the CPU path and the reference)."""
    q = unpack_kernel(qweight_k, layout).to(torch.float32)
    z = zeros_k.to(torch.float32).repeat_interleave(layout.group, dim=1)
    s = scales_k.to(torch.float32).repeat_interleave(layout.group, dim=1)
    return (q - z) * s
