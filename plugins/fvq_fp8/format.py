"""The fp8 on-disk formats: float8 e4m3 weights and their float32 scales.

Scale convention (vLLM ``fp8.py``, Hugging Face ``FineGrainedFP8``, compressed-tensors
``float-quantized``): the scale is the *de-quantization multiplier*, ``w ≈ q * scale``,
with ``scale = amax / 448`` (448 = largest finite float8_e4m3fn). Layouts:

* per tensor: ``weight_scale`` one float32 (0-d or ``[1]``) per checkpoint tensor;
* per channel: ``weight_scale`` ``[out, 1]``;
* block: ``weight_scale_inv`` ``[ceil(out/bn), ceil(in/bk)]`` (DeepSeek-V3 / HF naming:
  "inv" because it is the inverse of the quantization multiplier, i.e. still ``w ≈ q * s``).
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.kernels import FP8_AMAX_EPS as AMAX_EPS
from fastvideo_quant.kernels import FP8_DTYPE, FP8_MAX  # noqa: F401  (float8_e4m3fn, 448.0; re-exported)


def cast_to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(x / scale, ±448)`` rounded to float8_e4m3fn; ``scale`` broadcasts against ``x``.

    The clamp matters: torch's float8 cast turns out-of-range values into NaN, not 448.
    """
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: ``(q, scale)`` with ``scale`` 0-d float32."""
    scale = w.detach().abs().amax().float().clamp(min=AMAX_EPS) / FP8_MAX
    return cast_to_fp8(w, scale), scale


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per output row: ``(q, scale)`` with ``scale`` ``[out, 1]`` float32."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=AMAX_EPS) / FP8_MAX
    return cast_to_fp8(w, scale), scale


def quantize_per_block(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per ``[bn, bk]`` tile (edge tiles partial): ``(q, scale_inv)``."""
    bn, bk = block
    out, inp = w.shape
    nb, kb = -(-out // bn), -(-inp // bk)
    padded = torch.zeros(nb * bn, kb * bk, dtype=torch.float32, device=w.device)
    padded[:out, :inp] = w.detach().float()
    tiles = padded.view(nb, bn, kb, bk)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=AMAX_EPS) / FP8_MAX
    q = cast_to_fp8(tiles, scale[:, None, :, None]).view(nb * bn, kb * bk)[:out, :inp]
    return q.contiguous(), scale


def expand_block_scale(scale: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Block scales ``[nb, kb]`` repeated to one per weight element ``shape`` ``[out, in]``."""
    bn, bk = block
    full = scale.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)
    return full[: shape[0], : shape[1]]


def expand_row_block_scale(row_scales: torch.Tensor, bk: int, in_features: int) -> torch.Tensor:
    """Per-row block scales ``[out, ceil(in/bk)]`` repeated to one per weight element ``[out, in]``."""
    return row_scales.float().repeat_interleave(bk, dim=1)[:, :in_features]


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None) -> torch.Tensor:
    """float32 ``q * scale`` for any of the three layouts (scale 0-d/[1], [out, 1], or block)."""
    if block is not None:
        return q.float() * expand_block_scale(scale.float(), block, tuple(q.shape))
    if scale.numel() == 1:
        return q.float() * scale.float().reshape(())
    if scale.numel() != q.shape[0]:
        raise WeightLoadError(
            f"fp8 weight_scale: expected 1 or {q.shape[0]} (one per output row) elements for weight "
            f"{tuple(q.shape)}, found shape {tuple(scale.shape)}"
        )
    return q.float() * scale.float().reshape(-1, 1)


def shard_scales_to_channels(scales: torch.Tensor, partition_sizes: list[int]) -> torch.Tensor:
    """Per-shard scalars (q, k, v / gate, up) expanded to one per output row, float32 ``[sum(sizes)]``.

    Exact: every stored fp8 value keeps the scale it was written with, unlike vLLM's
    re-quantization of all shards to the largest scale (which rounds the smaller shards again).
    """
    sizes = torch.tensor(partition_sizes, device=scales.device)
    return scales.float().reshape(-1).repeat_interleave(sizes)
