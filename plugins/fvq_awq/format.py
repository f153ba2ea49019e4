"""AutoAWQ GEMM checkpoint format: int4 packing, unpacking and de-quantization.

Format facts (AutoAWQ ``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear`` and
``awq/utils/packing_utils.py``; vLLM ``model_executor/layers/quantization/awq_triton.py``):

- ``qweight`` int32 ``[in, out/8]``: output columns ``8c .. 8c+7`` of one input row share word ``c``;
  nibble ``i`` (bits ``4i .. 4i+3``) holds column ``8c + AWQ_ORDER[i]`` with
  ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``. Unpacking the nibbles in bit order gives the columns in
  the permuted order, which ``AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]`` undoes
  (column ``8c + r`` is nibble ``AWQ_REVERSE_ORDER[r]``).
- ``qzeros`` int32 ``[in/group, out/8]``: packed the same way.
- ``scales`` fp16 ``[in/group, out]``.
- ``W[k, n] = (q[k, n] - z[k // group, n]) * s[k // group, n]``; ``group_size == -1`` means one group.
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import WeightLoadError

PACK_FACTOR = 8  # eight 4-bit values per int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32, device="cpu")  # not the device context the plugin is imported in


#: Values packed at once by :func:`pack_awq` (and codes repacked at once by ``layout.repack_to_kernel``): their int64
#: temporaries are 8 bytes per value (three of them), so a whole 11008x4096 weight at once took ~1 GiB on top of the
#: weight (``benchmarks/memory_peak.py``).
PACK_CHUNK_NUMEL = 1 << 22


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """Pack ``[rows, cols]`` integers in ``[0, 15]`` (any integer or float dtype holding them; a non-contiguous view
    is fine) into AutoAWQ int32 ``[rows, cols/8]``, in row chunks of about :data:`PACK_CHUNK_NUMEL` values."""
    rows, cols = values.shape
    if cols % PACK_FACTOR:
        raise WeightLoadError(f"pack_awq: columns must be a multiple of {PACK_FACTOR}, found {cols}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise WeightLoadError(f"pack_awq: values must lie in [0, 15], found [{int(values.min())}, {int(values.max())}]")
    packed = torch.empty(rows, cols // PACK_FACTOR, dtype=torch.int32, device=values.device)
    step = max(1, PACK_CHUNK_NUMEL // max(cols, 1))
    for start in range(0, rows, step):
        packed[start:start + step] = _pack_rows(values[start:start + step])
    return packed


def _pack_rows(values: torch.Tensor) -> torch.Tensor:
    v = values.to(torch.int64).reshape(values.shape[0], -1, PACK_FACTOR)[:, :, list(AWQ_ORDER)]
    return _to_int32((v << _SHIFTS.to(v.device, torch.int64)).sum(dim=-1))  # disjoint bits: sum == or


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """Unpack AutoAWQ int32 ``[rows, cols/8]`` into uint8 ``[rows, cols]`` in natural column order."""
    if packed.dtype != torch.int32:
        raise WeightLoadError(f"unpack_awq: expected an int32 tensor, found {packed.dtype}")
    nib = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 0xF  # nibble i in bit order
    nib = nib[:, :, list(AWQ_REVERSE_ORDER)]
    return nib.reshape(packed.shape[0], -1).to(torch.uint8)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret non-negative int64 values < 2**32 as int32 two's complement."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def group_size_for(group_size: int, in_features: int) -> int:
    """The effective group size: ``-1`` means the whole input."""
    return in_features if group_size == -1 else group_size


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM tensors → float32 ``W[in, out]`` (exact: ``(q - z) * s`` fits float32)."""
    q = unpack_awq(qweight).to(torch.float32)
    z = unpack_awq(qzeros).to(torch.float32)
    group = q.shape[0] // z.shape[0]
    if group * z.shape[0] != q.shape[0] or scales.shape != z.shape:
        raise WeightLoadError(
            f"dequantize_awq: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)} and scales "
            f"{tuple(scales.shape)} do not describe one [in, out] weight with whole groups"
        )
    z = z.repeat_interleave(group, dim=0)
    s = scales.to(torch.float32).repeat_interleave(group, dim=0)
    return (q - z) * s
