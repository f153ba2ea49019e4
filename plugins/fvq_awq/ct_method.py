"""Linear layers loaded from compressed-tensors W4A16 checkpoints: compressed-tensors' parameters, converted after
loading into the kernel layout the AWQ method runs (``fvq_awq.layout``), so apply, dequantize_weight, the GPU kernels
and fp8_compute are AWQ's unchanged.

Parameters (vLLM ``compressed_tensors_wNa16.py`` names, dims and sharding; ``fvq_awq.ct_format`` for the format):

- ``weight_packed`` int32 ``[out, in/8]``: PackedvLLMParameter packed along the input dim; column / merged / QKV
  layers shard its rows, row layers its words (whole groups, so whole words).
- ``weight_scale`` ``[out, in/group]``: GroupQuantScaleParameter, sharded like the weight; strategy ``channel``
  (``[out, 1]``): ChannelQuantScaleParameter, sharded along the output and replicated in row layers. Held in float32
  (bf16, fp16 and float32 scales load exactly) until converted to the kernels' fp16.
- ``weight_zero_point`` (asymmetric only) int32 ``[out/8, in/group]``: packed along the output dim, so fused parts
  and column shards move in words of 8 rows; row layers shard its groups (channel: replicated).
- ``weight_shape`` int64 ``[2]``: checked on load against the layer (each fused part's ``[out, in]`` before TP
  sharding), then dropped.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.linear import rank_sizes
from fastvideo_quant.lazy import TensorLike, materialize
from fastvideo_quant.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
)
from fastvideo_quant.quantization.base import check_entries, check_finite
from fvq_awq.ct_format import SYMMETRIC_ZERO, unpack_zero_points
from fvq_awq.format import PACK_FACTOR
from fvq_awq.layout import ct_to_kernel
from fvq_awq.loading import Loader, group_rows_loader
from fvq_awq.method import AWQLinearMethod

#: A scale converts to the kernels' fp16 when it changes by at most fp16's rounding: half a unit in the last place,
#: 2^-11 of the value in fp16's normal range, and below it half the subnormal step, 2^-25 (a group's weights then move
#: by at most 7.5 x 2^-25 = 2.2e-7: a near-dead group, not a reason to refuse the checkpoint). bf16 scales down to 2^-17
#: convert exactly; beyond 65504 fp16 overflows, and that is refused.
FP16_ROUNDING = 2.0**-11
FP16_HALF_SUBNORMAL_STEP = 2.0**-25


class CompressedTensorsW4A16Method(AWQLinearMethod):
    """AWQ's int4 linear method for layers whose checkpoint is compressed-tensors ``pack-quantized`` (W4A16)."""

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        self.check_shard(layer, input_size_per_partition, output_partition_sizes, input_size)
        loader = extra_weight_attrs["weight_loader"]
        group_size, out = self.quant_config.group_size, sum(output_partition_sizes)
        groups_loader = group_rows_loader(loader, input_size, group_size, dim=1)
        weight = PackedvLLMParameter(data=torch.empty(out, input_size_per_partition // PACK_FACTOR, dtype=torch.int32),
                                     input_dim=1, output_dim=0, packed_dim=1, packed_factor=PACK_FACTOR,
                                     weight_loader=loader)
        nan = float("nan")  # (scales start as NaN: one a non-strict load never wrote is refused on validation)
        if group_size == -1:
            scale = ChannelQuantScaleParameter(data=torch.full((out, 1), nan), output_dim=0, weight_loader=groups_loader)
            zeros = PackedColumnParameter(data=torch.empty(out // PACK_FACTOR, 1, dtype=torch.int32), output_dim=0,
                                          packed_dim=0, packed_factor=PACK_FACTOR, weight_loader=groups_loader)
        else:
            groups = input_size_per_partition // group_size
            scale = GroupQuantScaleParameter(data=torch.full((out, groups), nan), output_dim=0, input_dim=1,
                                             weight_loader=groups_loader)
            zeros = PackedvLLMParameter(data=torch.empty(out // PACK_FACTOR, groups, dtype=torch.int32), output_dim=0,
                                        input_dim=1, packed_dim=0, packed_factor=PACK_FACTOR,
                                        weight_loader=groups_loader)
        shape = BasevLLMParameter(data=torch.full((2,), -1, dtype=torch.int64),
                                  weight_loader=weight_shape_loader(loader, expected_shapes(layer)))
        layer.register_parameter("weight_packed", weight)
        layer.register_parameter("weight_scale", scale)
        if self.quant_config.zero_point:
            layer.register_parameter("weight_zero_point", zeros)
        layer.register_parameter("weight_shape", shape)
        layer.awq_in_features = input_size_per_partition
        layer.awq_out_features = out

    def validate_loaded_weights(self, layer: torch.nn.Module) -> None:
        """WeightLoadError unless every ``weight_scale`` entry is finite, > 0 and held by fp16 to its rounding (the
        kernels' scales are fp16), and the bias is finite (reads the layer only)."""
        if hasattr(layer, "awq_layout"):
            return  # already in the kernel format (checked on the way there)
        check_finite(layer, "bias", "AWQ")
        s = layer.weight_scale.data.float()
        check_entries(layer, "weight_scale", "AWQ", ~torch.isfinite(s) | (s <= 0),
                      expected="finite and > 0 (compressed-tensors' max|w| / 7.5, or (max - min) / 15 asymmetric)",
                      found="entries that are not",
                      fix="The checkpoint is corrupt or was written by a broken export; re-quantize the layer")
        changed = (s.to(torch.float16).float() - s).abs() > (s * FP16_ROUNDING).clamp(min=FP16_HALF_SUBNORMAL_STEP)
        check_entries(layer, "weight_scale", "AWQ", changed,
                      expected="held by float16 to its rounding (2^-11 relative, 2^-25 absolute below its normal "
                               "range; the AWQ kernels read fp16 scales, up to 65504)",
                      found="that float16 would change beyond that (beyond its range)",
                      fix="Re-quantize with scale_dtype float16 (or weights of a usual size), or leave the layer "
                          f"unquantized: list it in {self.quant_config.skip_list_key()}")

    def kernel_tensors(self, layer: torch.nn.Module):
        """compressed-tensors' tensors in the kernel format; symmetric weights take the stored zero point 8."""
        scales = layer.weight_scale.data
        if self.quant_config.zero_point:
            zeros = unpack_zero_points(layer.weight_zero_point.data)
        else:
            zeros = torch.full(scales.shape, SYMMETRIC_ZERO, dtype=torch.uint8, device=scales.device)
        return ct_to_kernel(layer.weight_packed.data, zeros, scales, self.group(layer))

    def checkpoint_tensor_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        return ("weight_packed", "weight_scale", "weight_shape") + (
            ("weight_zero_point",) if self.quant_config.zero_point else ())


def expected_shapes(layer: torch.nn.Module) -> dict[Any, tuple[int, int]]:
    """``weight_shape`` as each checkpoint tensor of ``layer`` must give it, by the shard id it is loaded with: the
    whole ``[out, in]`` (no shard id: an unfused layer, or a fused layer's tensor fused on disk) and each fused part's
    ``[part's out, in]``, all before TP sharding."""
    whole = rank_sizes(layer, 1)
    parts, inputs = (whole[1], whole[3]) if whole is not None else ([layer.output_size], layer.input_size)
    expected: dict[Any, tuple[int, int]] = {None: (sum(parts), inputs)}
    if len(parts) > 1:
        expected.update({layer.checkpoint_shard_id(i): (size, inputs) for i, size in enumerate(parts)})
    return expected


def weight_shape_loader(loader: Loader, expected: dict[Any, tuple[int, int]]) -> Loader:
    """``loader`` for ``weight_shape``, refusing a value that is not ``expected`` for the part loaded. A
    ``functools.partial`` (a deep copy of the layer binds the copy's loader, as ``group_rows_loader``)."""
    return functools.partial(_load_weight_shape, loader, expected)


def _load_weight_shape(loader: Loader, expected: dict[Any, tuple[int, int]], param: torch.nn.Parameter,
                       loaded_weight: TensorLike, *args: Any, **kwargs: Any) -> None:
    shard = args[0] if args else kwargs.get("loaded_shard_id")
    found = materialize(loaded_weight)
    if found.dim() != 1 or found.numel() != 2 or found.is_floating_point():
        raise WeightLoadError(f"weight_shape must be compressed-tensors' integer [out_features, in_features] of the "
                              f"weight before packing (2 entries), found {found.dtype} of shape {tuple(found.shape)}")
    want = expected.get(shard)
    if want is not None and not found.is_meta and tuple(int(v) for v in found.tolist()) != want:
        part = "the layer" if shard is None else f"part {shard!r} of the fused layer"
        raise WeightLoadError(
            f"weight_shape {found.tolist()} ([out_features, in_features] of the checkpoint's weight before packing) "
            f"is not {part}'s {list(want)} (before tensor-parallel sharding): the checkpoint's module has other sizes "
            "than the model's. Build the model with the checkpoint's sizes (its config.json), or load the checkpoint "
            "of this model")
    loader(param, loaded_weight, *args, **kwargs)
