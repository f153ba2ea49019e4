"""compressed-tensors ``pack-quantized`` int4 tensors (llm-compressor W4A16 / W4A16_ASYM): packing and unpacking.

Format facts, from compressed-tensors ``compressors/quantized_compressors/pack_quantized.py`` (``pack_to_int32``,
``unpack_from_int32``, ``compress_weight``), ``quantization/utils/helpers.py`` (``calculate_range``,
``calculate_qparams``), ``compressors/quantized_compressors/base.py`` (``_skip_zp``) and vLLM's reader
``model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_wNa16.py`` (``create_weights``):

- Codes are signed: ``q = clamp(round(w / s) + z, -8, 7)`` (``calculate_range``: ``[-2^(b-1), 2^(b-1) - 1]``), and
  ``W = (q - z) * s``. Packing adds ``2^(b-1) = 8`` to every code, so a stored nibble is ``u = q + 8`` in ``[0, 15]``
  (vLLM reads the symmetric type as ``uint4b8``: unsigned 4-bit with a bias of 8).
- ``weight_packed`` int32 ``[out, ceil(in / 8)]``: packed along the **input** dim (dim 1): word ``j`` of row ``n``
  holds inputs ``8j .. 8j+7``, input ``8j + i`` in bits ``4i .. 4i+3`` (natural order, no interleave).
- ``weight_scale`` ``[out, ceil(in / group)]`` (``[out, 1]`` for strategy ``channel``; AWQ's layers need ``in`` a
  multiple of the group, so a partial last group is refused by shape) in the model's dtype (bf16 or fp16;
  ``scale_dtype`` may set another). Symmetric: ``max|w| / 7.5``; asymmetric: ``(max - min) / 15``.
- ``weight_zero_point``: asymmetric only (symmetric checkpoints omit it: ``_skip_zp``; their ``z`` is 0). A signed
  int8 ``z`` in ``[-8, 7]`` per (output row, group), stored with the same ``+8`` offset and packed along the
  **output** dim (``packed_dim=0``): int32 ``[ceil(out / 8), in / group]``, word ``r`` nibble ``i`` = row ``8r + i``.
- ``weight_shape`` int ``[2]``: the unpacked weight's ``[out, in]`` (written as ``torch.tensor(weight.shape)``, int64;
  ``compression_param_info`` declares int32).
- ``weight_g_idx`` int32 ``[in]``: only with ``actorder: group`` (vLLM ``has_g_idx``); ``actorder: weight`` changes
  calibration only and stores contiguous groups (compressed-tensors ``quant_args.py``, ``ActivationOrdering``).

So with stored nibbles ``u`` (weight) and ``v`` (zero point), ``W = (u - v) * s``: the same arithmetic as AutoAWQ's
GEMM format with zero point ``v`` — symmetric checkpoints take ``v = 8`` (``z = 0`` stored ``+8``).
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import WeightLoadError
from fvq_awq.format import PACK_CHUNK_NUMEL, PACK_FACTOR, _to_int32

#: The stored zero point of a symmetric checkpoint: its signed zero point 0 plus the packing offset 8.
SYMMETRIC_ZERO = 8
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64, device="cpu")  # not the device context the plugin is imported in


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """Stored nibbles ``[rows, cols]`` in ``[0, 15]`` → int32 ``[rows, cols/8]`` packed along dim 1 in natural order
    (how compressed-tensors packs ``weight_packed``), in row chunks of about ``PACK_CHUNK_NUMEL`` values."""
    rows, cols = values.shape
    if cols % PACK_FACTOR:
        raise WeightLoadError(f"pack_rows: columns must be a multiple of {PACK_FACTOR}, found {cols}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise WeightLoadError(f"pack_rows: values must lie in [0, 15], found [{int(values.min())}, {int(values.max())}]")
    packed = torch.empty(rows, cols // PACK_FACTOR, dtype=torch.int32, device=values.device)
    step = max(1, PACK_CHUNK_NUMEL // max(cols, 1))
    shifts = _SHIFTS.to(values.device)
    for start in range(0, rows, step):
        v = values[start:start + step].to(torch.int64).reshape(-1, cols // PACK_FACTOR, PACK_FACTOR)
        packed[start:start + step] = _to_int32((v << shifts).sum(-1))  # disjoint bits: sum == or
    return packed


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[rows, cols/8]`` packed along dim 1 in natural order → uint8 ``[rows, cols]`` stored nibbles."""
    if packed.dtype != torch.int32:
        raise WeightLoadError(f"unpack_rows: expected an int32 tensor, found {packed.dtype}")
    nib = (packed.to(torch.int64).unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 0xF
    return nib.reshape(packed.shape[0], -1).to(torch.uint8)


def unpack_zero_points(packed: torch.Tensor) -> torch.Tensor:
    """``weight_zero_point`` int32 ``[out/8, groups]`` (packed along the output dim) → uint8 ``[out, groups]``."""
    return unpack_rows(packed.t().contiguous()).t().contiguous()


def checkpoint_tensors(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Stored nibbles ``[out, in]``, float scales ``[out, G]`` and stored zero points ``[out, G]`` (None: symmetric,
    no tensor) → the checkpoint tensors of one module, named as compressed-tensors names them. Scales are written in
    fp16, the values the codes were chosen for."""
    out, k = codes.shape
    tensors = {"weight_packed": pack_rows(codes).cpu(),
               "weight_scale": scales.to(torch.float16).contiguous().cpu(),
               "weight_shape": torch.tensor([out, k], dtype=torch.int64)}
    if zeros is not None:
        tensors["weight_zero_point"] = pack_rows(zeros.t()).t().contiguous().cpu()
    return tensors
