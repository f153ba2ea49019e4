"""The loader for AWQ's ``qzeros`` and ``scales``: a row count that is not the config's says the group size it means.

Both are ``[in_features / group_size, ...]`` (format.py); a checkpoint quantized with another group size has
another row count, which the parameter's shape check reports as bare shapes. This wrapper adds, in a few words, the
group size (or the layer's size) those rows mean; what that implies for the whole checkpoint, and which config key to
set, is said once, by the config's ``stored_tensor_hints`` (a group size every layer's tensors imply). A tensor stored
with its two dims swapped is said to be so, first, in place of group-size guesses.
compressed-tensors' ``weight_scale`` and ``weight_zero_point`` hold the groups along dim 1 (``dim=1``, "columns").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fastvideo_quant.errors import CheckpointShapeError, CheckpointValueError, WeightLoadError
from fastvideo_quant.lazy import TensorLike

Loader = Callable[..., None]


def group_rows_note(in_features: int, group_size: int, found_rows: int, unit: str = "rows",
                    assumed: bool = False) -> str:
    """In a few words, what a ``qzeros``/``scales`` tensor of ``found_rows`` groups (``unit``: rows or columns) says
    about the group size it was written with, against the config's ``group_size`` (``assumed``: the config gave
    none, so AutoAWQ's default was taken). The whole explanation, with the config key to set, is the config's
    summary hint (``AWQConfig.stored_tensor_hints``), said once for a checkpoint."""
    expected = ("expected 1: group_size -1 is one group" if group_size == -1 else
                f"expected in_features / group_size = {in_features} / {group_size} = {in_features // group_size}")
    config = f"the {group_size} assumed: the config gives no group_size" if assumed else f"the config's {group_size}"
    causes = []
    if found_rows > 0 and in_features % found_rows == 0:
        causes.append(f"group_size {in_features // found_rows} (not {config})")
    if group_size != -1 and found_rows > 0:
        causes.append(f"in_features {found_rows * group_size} (not the layer's {in_features})")
    if not causes:
        return f"{found_rows} {unit} ({expected}) divide in_features {in_features} into no whole groups"
    return f"{found_rows} {unit} ({expected}) mean " + " or ".join(causes)


def group_rows_loader(loader: Loader, in_features: int, group_size: int, note: str = "", dim: int = 0) -> Loader:
    """``loader`` with a WeightLoadError on a checkpoint tensor of the wrong group count along ``dim`` (0: AutoAWQ's
    rows; 1: compressed-tensors' columns) saying the group size it means (:func:`group_rows_note`), and a
    CheckpointValueError on one stored transposed. ``note``: the config's ``group_size_note()``, non-empty where the
    config gave no group_size — a line then says in a few words that the size was assumed; the note itself is the
    config's summary hint's (said once, not on every tensor's line).

    A ``functools.partial``, not a closure: ``copy.deepcopy`` of the layer copies it with the layer's loader bound to
    the copy (as int8's checking loaders).
    """
    return functools.partial(_load_group_rows, loader, in_features, group_size, note, dim)


def _load_group_rows(loader: Loader, in_features: int, group_size: int, note: str, dim: int, param: torch.nn.Parameter,
                     loaded_weight: TensorLike, *args: Any, **kwargs: Any) -> None:
    expected = 1 if group_size == -1 else in_features // group_size
    try:
        loader(param, loaded_weight, *args, **kwargs)
    except WeightLoadError as exc:
        if loaded_weight.dim() != 2:
            raise
        found = tuple(loaded_weight.shape)
        shard = args[0] if args else kwargs.get("loaded_shard_id")
        whole = _whole_shape(loader, param, expected, dim, shard)  # (a shape refused, not a dtype: its own message)
        if isinstance(exc, CheckpointShapeError) and whole is not None and found == whole[::-1] != whole:
            raise CheckpointValueError(_transposed(loader, param, shard, whole, found, dim)) from exc
        if found[dim] == expected:
            raise
        explained = group_rows_note(in_features, group_size, found[dim], "rows" if dim == 0 else "columns", bool(note))
        raise WeightLoadError(f"{exc}; {explained}") from exc


#: How each layout names its dims: (groups along dim 0: AutoAWQ's; groups along dim 1: compressed-tensors'), for a
#: tensor of values and one of values packed eight to an int32 along the output dim.
_LAYOUTS = {(0, False): "[in_features / group_size, out_features]",
            (0, True): "[in_features / group_size, out_features / 8]",
            (1, False): "[out_features, in_features / group_size]",
            (1, True): "[out_features / 8, in_features / group_size]"}


def _whole_shape(loader: Loader, param: torch.nn.Parameter, groups: int, dim: int, shard: Any) -> tuple[int, int] | None:
    """The whole checkpoint tensor's shape this parameter takes for ``shard`` (a fused part's, before tensor-parallel
    sharding): ``groups`` along ``dim``, the part's outputs (``packed_factor`` to a word where packed along them)
    along the other. None where the layer cannot be told (``loader`` is not a linear layer's bound method)."""
    from fastvideo_quant.layers.base import LinearBase
    from fvq_awq.ct_method import expected_shapes

    layer = getattr(loader, "__self__", None)
    if not isinstance(layer, LinearBase):
        return None
    part = expected_shapes(layer).get(shard)
    if part is None:
        return None
    out = part[0]
    if getattr(param, "packed_dim", None) == 1 - dim:
        out = -(-out // param.packed_factor)
    return (groups, out) if dim == 0 else (out, groups)


def _transposed(loader: Loader, param: torch.nn.Parameter, shard: Any, whole: tuple[int, int],
                found: tuple[int, ...], dim: int) -> str:
    layer = loader.__self__
    name = next((n for n, p in layer.named_parameters(recurse=False) if p is param), "parameter")
    where = (f"{layer.prefix}.{name}" if layer.prefix else f"{type(layer).__name__}.{name}") + (
        "" if shard is None else f" shard {shard!r}")
    layout = _LAYOUTS[dim, getattr(param, "packed_dim", None) == 1 - dim]
    return (f"{where}: stored transposed: expected {layout} = {whole}, found {found}: store the tensor transposed "
            "back (tensor.t().contiguous())")


#: A checkpoint tensor as a config's ``stored_tensor_hints`` reads it: dtype (None when unknown) and shape.
Stored = tuple[torch.dtype | None, tuple[int, ...]]


def stored_group_sizes(stored: Mapping[str, Stored], compressed_tensors: bool,
                       ) -> tuple[set[int], tuple[str, tuple[int, ...], int], int] | None:
    """The group sizes that every quantized module's stored scales and zero points fit, with the input size its
    packed weight gives (AutoAWQ: ``qweight`` ``[in, out/8]``, its ``scales`` ``[in/group, out]`` and ``qzeros``
    ``[in/group, out/8]``; compressed-tensors: ``weight_packed`` ``[out, in/8]``, ``weight_scale`` ``[out, in/group]``
    and ``weight_zero_point`` ``[out/8, in/group]``) — -1 too where each has one group — as ``(sizes, example,
    modules)``: ``example`` one such tensor's name, shape and module's in_features, ``modules`` how many modules
    gave them. None where none is stored so, or where no one group size fits them all. A tensor whose output dim is
    not its weight's (transposed, or corrupt) says nothing of the group size and is passed over."""
    weight, group_dim = ("weight_packed", 1) if compressed_tensors else ("qweight", 0)
    sizes: set[int] | None = None
    example: tuple[str, tuple[int, ...], int] | None = None
    modules = 0
    for name, (_, shape) in sorted(stored.items()):
        module, _, leaf = name.rpartition(".")
        if leaf != weight or len(shape) != 2:
            continue
        in_features = shape[1] * 8 if compressed_tensors else shape[0]
        out = shape[0] if compressed_tensors else shape[1] * 8
        outs = ({"weight_scale": out, "weight_zero_point": -(-out // 8)} if compressed_tensors else
                {"scales": out, "qzeros": out // 8})
        seen = False
        for leaf_name, out_size in outs.items():
            found = stored.get(f"{module}.{leaf_name}", (None, ()))[1]
            if len(found) != 2 or found[1 - group_dim] != out_size or found[group_dim] < 1:
                continue
            groups = found[group_dim]
            fits = ({in_features // groups} if in_features % groups == 0 else set()) | ({-1} if groups == 1 else set())
            sizes = fits if sizes is None else sizes & fits
            if not sizes:
                return None
            example = example or (f"{module}.{leaf_name}", tuple(found), in_features)
            seen = True
        modules += seen
    return None if sizes is None or example is None else (sizes, example, modules)
