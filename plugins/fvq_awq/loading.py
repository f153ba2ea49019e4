"""The loader for AWQ's ``qzeros`` and ``scales``: a row count that is not the config's explains the group size.

Both are ``[in_features / group_size, ...]`` (format.py); a checkpoint quantized with another group size has
another row count, which the parameter's shape check reports as bare shapes. This wrapper adds what they mean.
compressed-tensors' ``weight_scale`` and ``weight_zero_point`` hold the groups along dim 1 (``dim=1``, "columns").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.lazy import TensorLike

Loader = Callable[..., None]


def group_rows_note(in_features: int, group_size: int, found_rows: int, unit: str = "rows",
                    source: str = "its quantization_config or AutoAWQ's quant_config.json") -> str:
    """What a ``qzeros``/``scales`` tensor of ``found_rows`` rows (``unit``: what its groups are) says about the group
    size it was written with (``source``: where the checkpoint says its group size)."""
    one = unit[:-1]
    if group_size == -1:
        expected = f"group_size -1 (one group over the whole input) gives 1 {one}"
    else:
        expected = (f"the {unit} are in_features / group_size = {in_features} / {group_size} = "
                    f"{in_features // group_size}")
    causes = []
    if found_rows > 0 and in_features % found_rows == 0:
        causes.append(f"group_size {in_features // found_rows} at this layer's in_features {in_features} (the config's "
                      f"group_size, {group_size}, is not the checkpoint's: use the one it was quantized with, from "
                      f"{source})")
    if group_size != -1 and found_rows > 0:
        causes.append(f"in_features {found_rows * group_size} at group_size {group_size} (the layer was built for "
                      f"{in_features} inputs: the model's size is not the checkpoint's — then its "
                      + (f"qweight has {found_rows * group_size} rows" if unit == "rows" else
                         f"weight_packed holds {found_rows * group_size} inputs")
                      + " too, and its own error says so)")
    if not causes:
        return (f"{expected}; the checkpoint's {found_rows} {unit} divide in_features {in_features} into no whole "
                "groups" + ("" if group_size == -1 else f" of {group_size}"))
    return f"{expected}; the checkpoint's {found_rows} {unit} mean " + ", or ".join(causes)


def group_rows_loader(loader: Loader, in_features: int, group_size: int, note: str = "", dim: int = 0) -> Loader:
    """``loader`` with a WeightLoadError on a checkpoint tensor of the wrong group count along ``dim`` (0: AutoAWQ's
    rows; 1: compressed-tensors' columns) explained by the group size (``note`` appended: that the config did not
    give it).

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
        if loaded_weight.dim() != 2 or loaded_weight.shape[dim] == expected:
            raise
        explained = (group_rows_note(in_features, group_size, loaded_weight.shape[0]) if dim == 0 else
                     group_rows_note(in_features, group_size, loaded_weight.shape[dim], "columns",
                                     "its quantization_config's config_groups weights.group_size"))
        raise WeightLoadError(f"{exc}; {explained}{note}") from exc
