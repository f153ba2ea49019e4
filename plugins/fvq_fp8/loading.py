"""Loading fp8 scales: which entries a checkpoint provided, block grids per fused shard, and the checks run on a
layer's loaded tensors before any layer is processed (``validate_loaded_weights``).

*Loaded* is tracked, not read from the data: every load into a scale parameter is replayed, through the same
sharding code, into a ``loaded_mask`` of ones. A scale the checkpoint never provided is then told apart from
one stored as NaN (both used to read "never loaded").
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.parameter import BlockQuantScaleParameter, ChannelQuantScaleParameter, PerTensorScaleParameter
from fastvideo_quant.quantization.base import check_entries, check_finite


class TracksLoads:
    """Mixin for a scale parameter: each load also writes ones into ``loaded_mask`` (same shape) where it wrote."""

    _untracked: type  # the parameter class whose load methods the replay runs

    def load_replicated_weight(self, loaded_weight: TensorLike, what: str) -> None:
        """The parameter class's load_replicated_weight (a whole copy), then the same load replayed into
        ``loaded_mask``."""
        super().load_replicated_weight(loaded_weight, what)
        self._mark("load_replicated_weight", loaded_weight, {"what": what})

    def load_column_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """The parameter class's load_column_parallel_weight, then the same load replayed into ``loaded_mask``."""
        super().load_column_parallel_weight(loaded_weight)
        self._mark("load_column_parallel_weight", loaded_weight, {})

    def load_row_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """The parameter class's load_row_parallel_weight, then the same load replayed into ``loaded_mask``."""
        super().load_row_parallel_weight(loaded_weight)
        self._mark("load_row_parallel_weight", loaded_weight, {})

    def load_merged_column_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """The parameter class's load_merged_column_weight, then the same load replayed into ``loaded_mask``."""
        super().load_merged_column_weight(loaded_weight, **kwargs)
        self._mark("load_merged_column_weight", loaded_weight, kwargs)

    def load_qkv_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """The parameter class's load_qkv_weight, then the same load replayed into ``loaded_mask``."""
        super().load_qkv_weight(loaded_weight, **kwargs)
        self._mark("load_qkv_weight", loaded_weight, kwargs)

    def _mark(self, method: str, loaded_weight: TensorLike, kwargs: dict[str, Any]) -> None:
        mask = self.__dict__.get("loaded_mask")
        if mask is None or self.is_meta:  # the loader's rehearsal loads into meta copies: nothing was loaded
            return
        base = self._untracked
        twin = base.__new__(base, mask)
        twin.__dict__.update(self.__dict__)
        getattr(base, method)(twin, torch.ones(tuple(loaded_weight.shape), device=mask.device), **kwargs)


def tracked(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """``param`` with an all-zero ``loaded_mask`` (float32, its shape) that its loads fill with ones."""
    param.loaded_mask = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
    return param


class ShardBlockScaleParameter(BlockQuantScaleParameter):
    """Block scales of a fused layer as one grid per shard, stacked: ``[sum(ceil(part / bn)), ceil(in / bk)]``.

    A checkpoint stores each shard (q, k, v / gate, up) with its own grid, partial last block included (the
    DeepSeek-V3 / vLLM block format); when the shard sizes are multiples of ``bn`` this is the core's grid.
    """

    def __init__(self, part_sizes: list[int], **kwargs: Any) -> None:
        self.part_sizes = list(part_sizes)
        super().__init__(**kwargs)

    def shard_units(self, shard_offset: int, shard_size: int) -> tuple[int, int]:
        bn = self.block_size[0]
        if all(p % bn == 0 for p in self.part_sizes):
            return super().shard_units(shard_offset, shard_size)
        start = 0
        for i, part in enumerate(self.part_sizes):
            if (start, part) == (shard_offset, shard_size):
                return sum(math.ceil(p / bn) for p in self.part_sizes[:i]), math.ceil(part / bn)
            start += part
        raise WeightLoadError(
            f"block scales: rows {shard_offset}..{shard_offset + shard_size} are not one of the shards "
            f"{self.part_sizes}; a block-scale tensor fused on disk cannot be split into shards that are not "
            f"multiples of the block height bn={bn}. Store each shard's weight_scale_inv separately "
            "(q_proj/k_proj/v_proj, gate_proj/up_proj)"
        )


class TrackedPerTensorScaleParameter(TracksLoads, PerTensorScaleParameter):
    _untracked = PerTensorScaleParameter


class TrackedChannelQuantScaleParameter(TracksLoads, ChannelQuantScaleParameter):
    _untracked = ChannelQuantScaleParameter


class TrackedBlockScaleParameter(TracksLoads, ShardBlockScaleParameter):
    _untracked = ShardBlockScaleParameter


def block_rows(part_sizes: list[int], bn: int, device: torch.device | None = None) -> torch.Tensor:
    """For each output row, the row of its block in a per-shard stacked grid (``ShardBlockScaleParameter``)."""
    rows, first = [], 0
    for part in part_sizes:
        rows.append(first + torch.arange(part, device=device) // bn)
        first += math.ceil(part / bn)
    return torch.cat(rows)


# --- checks on loaded tensors -------------------------------------------------------------------------------
def layer_name(layer: torch.nn.Module) -> str:
    return getattr(layer, "prefix", "") or type(layer).__name__


def check_scale(layer: torch.nn.Module, name: str) -> None:
    """WeightLoadError when scale ``name`` has entries never loaded, or not finite and > 0 (the core's
    ``check_entries`` names the entry and where it is in the checkpoint)."""
    param = getattr(layer, name)
    data = param.data.float()
    mask = getattr(param, "loaded_mask", None)
    if mask is not None:
        mask = mask.to(data.device)  # a plain attribute: layer.to("cuda") moves the scale, not its mask
        check_entries(layer, name, "fp8", (mask == 0) & torch.isnan(data), expected="loaded from the checkpoint",
                      found="that were never loaded", show_value=False,
                      fix="The checkpoint lacks it: check its scale tensors and the config's weight_scale_strategy / "
                          "activation_scheme")
    check_entries(layer, name, "fp8", ~torch.isfinite(data) | (data <= 0),
                  expected="finite and > 0 (a scale is the de-quantization multiplier amax / 448)",
                  found="entries that are not",
                  fix="The checkpoint is corrupt or was written by a broken export; re-quantize the layer")
    if name != "input_scale":  # (a weight's: 448 x scale is its largest de-quantized entry)
        dtype = getattr(layer, "params_dtype", torch.float32)
        limit = torch.finfo(dtype).max / 448
        check_entries(layer, name, "fp8", torch.isfinite(data) & (data > limit),
                      expected=f"at most {limit:.4g} (448 x scale, the largest de-quantized weight, must fit the "
                               f"layer's {dtype})",
                      found="entries above it",
                      fix="Such a scale is corrupt (a flipped exponent bit) or meant for another dtype: the output "
                          "would be inf/NaN. Re-export the checkpoint")
    else:  # (the static activation path multiplies by 1 / scale in float32: 0 x inf = NaN in any zero entry of x)
        floor = 1 / torch.finfo(torch.float32).max
        check_entries(layer, name, "fp8", torch.isfinite(data) & (data > 0) & (data.reciprocal() == math.inf),
                      expected=f"at least {floor:.4g} (the activations are multiplied by 1 / scale in float32, which "
                               "is inf below it)",
                      found="entries below it",
                      fix="Such a scale is corrupt (a denormal left by a broken export; fvq quantize floors it at "
                          "2.2e-15): the output would be NaN wherever an activation is 0. Re-calibrate the layer")


def check_weight(layer: torch.nn.Module, fp8_dtype: torch.dtype) -> None:
    """WeightLoadError when the weight holds NaN (float8_e4m3fn has NaN, no inf) or, for a float weight, inf."""
    w = layer.weight.data
    bad = (w.view(torch.uint8) & 0x7F) == 0x7F if w.dtype == fp8_dtype else None  # e4m3fn NaN: S.1111.111
    check_finite(layer, "weight", "fp8", bad)
