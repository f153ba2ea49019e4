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
- ``weight_g_idx`` int32 ``[in]`` (``actorder: group`` only): each input's group, sharded along the input in row
  layers (vLLM ``RowvLLMParameter``). The groups are then anywhere in the input, so ``weight_scale`` and
  ``weight_zero_point`` hold every group of the whole input on each rank (sharded along the output only, replicated in
  row layers, as vLLM keeps them for act-order row layers). A fused layer keeps each part's ``weight_g_idx`` (its
  parts share one input, so one order: they must be equal, checked after loading). After loading the inputs are put
  in group order (``fvq_awq.act_order``) and each call's activations gathered into it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from fastvideo_quant.errors import CheckpointValueError, ShardingError, WeightLoadError
from fastvideo_quant.layers.linear import rank_sizes
from fastvideo_quant.lazy import TensorLike, materialize
from fastvideo_quant.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
    RowvLLMParameter,
    copy_checked,
)
from fastvideo_quant.quantization.base import check_entries, check_finite
from fvq_awq import act_order
from fvq_awq.ct_format import SYMMETRIC_ZERO, pack_rows, unpack_zero_points
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

    def __init__(self, quant_config) -> None:  # noqa: ANN001 (an AWQConfig, as AWQLinearMethod's)
        super().__init__(quant_config)
        self._act_order = quant_config.act_order

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
        if group_size == -1 or self._act_order:  # (act order: every group of the whole input, on every rank)
            groups = 1 if group_size == -1 else input_size // group_size
            scale = ChannelQuantScaleParameter(data=torch.full((out, groups), nan), output_dim=0,
                                               weight_loader=groups_loader)
            zeros = PackedColumnParameter(data=torch.empty(out // PACK_FACTOR, groups, dtype=torch.int32), output_dim=0,
                                          packed_dim=0, packed_factor=PACK_FACTOR,
                                          weight_loader=unpacked_zero_points_loader(groups_loader))
        else:
            groups = input_size_per_partition // group_size
            scale = GroupQuantScaleParameter(data=torch.full((out, groups), nan), output_dim=0, input_dim=1,
                                             weight_loader=groups_loader)
            zeros = PackedvLLMParameter(data=torch.empty(out // PACK_FACTOR, groups, dtype=torch.int32), output_dim=0,
                                        input_dim=1, packed_dim=0, packed_factor=PACK_FACTOR,
                                        weight_loader=unpacked_zero_points_loader(groups_loader))
        shape = BasevLLMParameter(data=torch.full((2,), -1, dtype=torch.int64),
                                  weight_loader=weight_shape_loader(loader, expected_shapes(layer)))
        layer.register_parameter("weight_packed", weight)
        layer.register_parameter("weight_scale", scale)
        if self.quant_config.zero_point:
            zeros.rehearse_with_data = True  # (the loader checks the values of unpacked int8 zero points it packs)
            layer.register_parameter("weight_zero_point", zeros)
        layer.register_parameter("weight_shape", shape)
        if self._act_order:
            parts = list(expected_shapes(layer))[1:]  # (a fused layer's shard ids; none for an unfused layer)
            g_idx = GroupIndexParameter(
                data=torch.full((len(parts), input_size_per_partition) if parts else (input_size_per_partition,), -1,
                                dtype=torch.int32), parts=parts,
                weight_loader=functools.partial(_load_group_index, loader, input_size // group_size))
            g_idx.rehearse_with_data = True  # (its values are checked as it loads: before anything is written)
            layer.register_parameter("weight_g_idx", g_idx)
        layer.awq_in_features = input_size_per_partition
        layer.awq_out_features = out

    def check_shard(self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                    input_size: int) -> None:
        """AWQ's checks; with act order, whole groups over the whole input instead of on each rank (a rank's inputs
        are regrouped: ``fvq_awq.act_order``)."""
        group_size = self.quant_config.group_size
        if self._act_order and input_size % group_size:
            name = getattr(layer, "prefix", "") or type(layer).__name__
            raise ShardingError(f"AWQ layer {name!r} ({type(layer).__name__}): input size {input_size} is not a "
                                f"multiple of group_size {group_size} (the AWQ kernels hold whole groups; the "
                                f"checkpoint's weight_scale has a column per group of {group_size} inputs). Re-quantize "
                                f"the checkpoint with a group_size dividing {input_size}, or with this layer left "
                                f"unquantized (listed in ignore): a checkpoint that stores it quantized cannot load it "
                                "unquantized")
        super().check_shard(layer, input_size_per_partition, output_partition_sizes, input_size)

    def rank_group_size(self) -> int:
        return -1 if self._act_order else self.quant_config.group_size

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
        if self._act_order:
            check_group_index(layer, self.quant_config.group_size)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """AWQ's, and with act order the kernel's input order: buffers ``input_order_k`` (int64 ``[K']``, the input
        each kernel input reads) and ``input_position_k`` (``[K]``, where each input went), both None where the order
        is the inputs' own."""
        processed = hasattr(layer, "awq_layout")
        try:
            super().process_weights_after_loading(layer)  # (validates, then kernel_tensors plans the order)
            regroup = vars(layer).get("_awq_regroup")
        finally:
            vars(layer).pop("_awq_regroup", None)
        if not self._act_order or processed:
            return
        device = layer.qweight_k.device
        # (the inputs' own order: None buffers, so a state_dict of a layer with another order still follows,
        # LinearBase._follow_optional_buffers)
        layer.register_buffer("input_order_k", None if regroup.identity else regroup.order.to(device))
        layer.register_buffer("input_position_k", None if regroup.identity else regroup.position.to(device))

    def state_dict_problem(self, layer: torch.nn.Module, state_dict: dict, prefix: str) -> str | None:
        """With act order, the saved order buffers: the GPU gather reads the activations through ``input_order_k``
        with no bounds check, so its values must be the layer's inputs (and ``input_position_k`` its inverse)."""
        if not self._act_order:
            return None
        k, k_kernel = layer.awq_in_features, layer.awq_layout.in_features
        order, position = state_dict.get(prefix + "input_order_k"), state_dict.get(prefix + "input_position_k")
        if (order is None) != (position is None):
            have, lack = ("input_order_k", "input_position_k") if position is None else ("input_position_k",
                                                                                         "input_order_k")
            return (f"the state_dict holds {have} but not {lack}: a layer with act order keeps both (the kernel's "
                    "input order and its inverse) or neither (inputs in their own order). Save the whole state_dict "
                    "of a loaded layer")
        if order is None:
            return None
        if any(isinstance(t, torch.Tensor) and t.is_meta for t in (order, position)):
            return None  # (no values to check: torch refuses to copy out of a meta tensor, or assign=True keeps it)
        for name, t, n, bound in (("input_order_k", order, k_kernel, k), ("input_position_k", position, k, k_kernel)):
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.shape != (n,):
                found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                return (f"{name} must be an int64 (or int32) tensor of shape ({n},) for this layer's {k} inputs "
                        f"({k_kernel} kernel inputs); found {found}")
            bad = ((t < 0) | (t >= bound)).nonzero()
            if bad.numel():
                i = int(bad[0, 0])
                return (f"{name} must hold values in [0, {bound}) (the GPU kernels read memory through it); found "
                        f"{bad.shape[0]} outside, the first {int(t[i])} at index {i}. The state_dict was altered, or "
                        "saved from another layer")
        if not torch.equal(order.to(torch.int64).cpu()[position.to(torch.int64).cpu()], torch.arange(k)):
            return ("input_order_k and input_position_k must be inverses (input_order_k[input_position_k[i]] == i for "
                    "each input i); found they are not. The state_dict was altered, or saved from another layer")
        return None

    def kernel_tensors(self, layer: torch.nn.Module):
        """compressed-tensors' tensors in the kernel format; symmetric weights take the stored zero point 8. With act
        order (``weight_g_idx`` validated), in the order ``act_order.plan`` makes, which it leaves on the layer as
        ``_awq_regroup`` for :meth:`process_weights_after_loading`."""
        scales = layer.weight_scale.data
        if self.quant_config.zero_point:
            zeros = unpack_zero_points(layer.weight_zero_point.data)
        else:
            zeros = torch.full(scales.shape, SYMMETRIC_ZERO, dtype=torch.uint8, device=scales.device)
        regroup = None
        if self._act_order:
            regroup = act_order.plan(layer.weight_g_idx.data.reshape(-1, layer.awq_in_features)[0], scales.shape[1])
            layer._awq_regroup = regroup
        return ct_to_kernel(layer.weight_packed.data, zeros, scales, self.group(layer), regroup)

    def checkpoint_tensor_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        return ("weight_packed", "weight_scale", "weight_shape") + (
            ("weight_zero_point",) if self.quant_config.zero_point else ()) + (
            ("weight_g_idx",) if self._act_order else ())

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        """``W [out, in]`` in the layer's input order (with act order, the kernel's order undone)."""
        w = super().dequantize_weight(layer)
        position = layer._buffers.get("input_position_k") if self._act_order else None
        return w if position is None else w.index_select(1, position)

    def input_order(self, layer: torch.nn.Module) -> torch.Tensor | None:
        """With act order, the kernel's input order (``input_order_k``; None where it is the inputs' own): ``apply``
        gathers each call's activations into it."""
        return layer._buffers.get("input_order_k") if self._act_order else None


class GroupIndexParameter(RowvLLMParameter):
    """compressed-tensors' ``weight_g_idx``: ``[in]`` (sharded along the input in row layers), or ``[parts, in]`` in a
    fused layer, where each part's tensor (``parts``: the shard ids, in order) fills its row and a tensor fused on
    disk every row."""

    def __init__(self, data: torch.Tensor, parts: list[Any], weight_loader: Loader) -> None:
        self.parts = parts
        super().__init__(input_dim=data.dim() - 1, data=data, weight_loader=weight_loader)

    def _load_part(self, loaded_weight: TensorLike, shard_id: Any) -> None:
        if self.data.dim() == 1:
            copy_checked(self.data, loaded_weight, "weight_g_idx")
            return
        rows = range(len(self.parts)) if shard_id is None else [self.parts.index(shard_id)]
        for row in rows:
            copy_checked(self.data[row], loaded_weight, "weight_g_idx" + ("" if shard_id is None else
                                                                            f" of part {shard_id!r}"))

    def load_merged_column_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        self._load_part(loaded_weight, kwargs.get("shard_id"))

    def load_qkv_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        self._load_part(loaded_weight, kwargs.get("shard_id"))


def _load_group_index(loader: Loader, groups: int, param: torch.nn.Parameter, loaded_weight: TensorLike,
                       *args: Any, **kwargs: Any) -> None:
    """``loader`` for ``weight_g_idx``, refusing (CheckpointValueError) a checkpoint tensor with a group outside
    ``[0, groups)`` — the whole tensor, before a row layer takes its rank's share."""
    g = materialize(loaded_weight)
    if not g.is_meta and g.dim() == 1 and not g.is_floating_point():
        bad = ((g < 0) | (g >= groups)).nonzero()
        if bad.numel():
            k = int(bad[0])
            raise CheckpointValueError(
                f"weight_g_idx: expected a group in [0, {groups}) for each input (in_features / group_size: the "
                f"columns of weight_scale), found {bad.numel()} of {g.numel()} that are not, the first at input {k} = "
                f"{int(g[k])}. The checkpoint is corrupt, its weight_g_idx belongs to another layer, or its "
                "group_size is not the config's; re-export it")
    loader(param, loaded_weight, *args, **kwargs)


def check_group_index(layer: torch.nn.Module, group_size: int) -> None:
    """WeightLoadError unless ``layer.weight_g_idx`` gives every input a group of the checkpoint (``[0, groups)``;
    -1: never loaded — values outside are refused as they load, ``_load_group_index``, so here mostly that) and a fused
    layer's parts give them the same one (the order of one input)."""
    g = layer.weight_g_idx.data
    groups = layer.weight_scale.shape[1]
    name = getattr(layer, "prefix", "") or type(layer).__name__
    expected = (f"a group in [0, {groups}) for each input ({layer.input_size} inputs / group_size {group_size}, the "
                "columns of weight_scale)")
    fix = ("-1 is what an entry holds that no tensor was loaded into: load the checkpoint's weight_g_idx too (a load "
           "with strict=False, or of single tensors, can leave it out)" if bool((g == -1).any()) else
           "The checkpoint is corrupt, its weight_g_idx belongs to another layer, or its group_size is not the "
           "config's; re-export it")
    if g.dim() == 1:
        check_entries(layer, "weight_g_idx", "AWQ", (g < 0) | (g >= groups), expected=expected,
                      found="entries that are not", fix=fix)
        return
    for row, part in enumerate(layer.weight_g_idx.parts):
        bad = ((g[row] < 0) | (g[row] >= groups)).nonzero()
        if bad.numel():
            k = int(bad[0])
            raise WeightLoadError(f"AWQ layer {name!r}: weight_g_idx of part {part!r}: expected {expected}, found "
                                  f"{bad.numel()} of {g.shape[1]} that are not, the first at input {k} = {int(g[row, k])}"
                                  f". {fix}")
    differs = (g != g[0]).any(0).nonzero()
    if differs.numel():
        k, row = int(differs[0]), int((g[:, int(differs[0])] != g[0, int(differs[0])]).nonzero()[0])
        first, other = layer.weight_g_idx.parts[0], layer.weight_g_idx.parts[row]
        raise WeightLoadError(
            f"AWQ layer {name!r}: the fused parts' weight_g_idx differ: part {first!r} puts input {k} in group "
            f"{int(g[0, k])}, part {other!r} in group {int(g[row, k])} ({differs.numel()} of {g.shape[1]} inputs "
            "differ). The parts share one input, which can be put in one order only; GPTQ gives parts of one input "
            "the same order (it sorts the inputs by their activations). Load the parts as separate, unfused layers, "
            "or re-quantize them with actorder 'weight'")


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


def unpacked_zero_points_loader(loader: Loader) -> Loader:
    """``loader`` for ``weight_zero_point`` that also takes the unpacked zero points compressed-tensors wrote before it
    packed them (PR #296, April 2025; asymmetric pack-quantized checkpoints of December 2024 to April 2025): int8
    ``[out, groups]`` of signed ``z`` in ``[-8, 7]``, packed here as a later version packs them (``z + 8``, eight rows a
    word). A ``functools.partial``, as ``weight_shape_loader``."""
    return functools.partial(_load_zero_points, loader)


def _load_zero_points(loader: Loader, param: torch.nn.Parameter, loaded_weight: TensorLike, *args: Any,
                      **kwargs: Any) -> None:
    if loaded_weight.dtype != torch.int8:
        loader(param, loaded_weight, *args, **kwargs)
        return
    z = materialize(loaded_weight)  # (read in the rehearsal too: the parameter's rehearse_with_data)
    stored = f"weight_zero_point stored unpacked (int8 {tuple(z.shape)}: compressed-tensors before it packed zero points)"
    if z.dim() != 2 or z.shape[0] % PACK_FACTOR:
        raise CheckpointValueError(f"{stored}: expected [out_features, groups] with out_features a multiple of "
                                   f"{PACK_FACTOR} (eight rows a packed word), found shape {tuple(z.shape)}")
    if z.is_meta:  # (a loader called on a shape-only tensor)
        packed = torch.empty(z.shape[0] // PACK_FACTOR, z.shape[1], dtype=torch.int32, device="meta")
    else:
        if z.numel() and (int(z.min()) < -8 or int(z.max()) > 7):
            lo, hi = int(z.min()), int(z.max())
            unsigned = (" — values in [0, 15] look like zero points with the +8 offset already added (unsigned): "
                        "subtract 8 from the tensor, or store them packed") if 0 <= lo and hi <= 15 else ""
            raise CheckpointValueError(f"{stored}: unpacked int4 zero points must lie in [-8, 7] (signed, as "
                                       f"compressed-tensors stores them before packing), found [{lo}, {hi}]{unsigned}")
        packed = pack_rows((z.to(torch.int16) + SYMMETRIC_ZERO).t()).t().contiguous()
    try:
        loader(param, packed, *args, **kwargs)
    except WeightLoadError as exc:  # (in the stored tensor's terms: the packed shape alone would not say what is wrong)
        raise CheckpointValueError(f"{stored}, packed to int32 {tuple(packed.shape)}: {exc}") from exc


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
