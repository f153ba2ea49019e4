"""The loader for AWQ's ``qzeros`` and ``scales``: a row count that is not the config's explains the group size.

Both are ``[in_features / group_size, ...]`` (format.py); a checkpoint quantized with another group size has
another row count, which the parameter's shape check reports as bare shapes. This wrapper adds what they mean.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.lazy import TensorLike

Loader = Callable[..., None]


def group_rows_note(in_features: int, group_size: int, found_rows: int) -> str:
    """What a ``qzeros``/``scales`` tensor of ``found_rows`` rows says about the group size it was written with."""
    if group_size == -1:
        expected = "group_size -1 (one group over the whole input) gives 1 row"
    else:
        expected = f"the rows are in_features / group_size = {in_features} / {group_size} = {in_features // group_size}"
    causes = []
    if found_rows > 0 and in_features % found_rows == 0:
        causes.append(f"group_size {in_features // found_rows} at this layer's in_features {in_features} (the config's "
                      f"group_size, {group_size}, is not the checkpoint's: use the one it was quantized with, from its "
                      "quantization_config or AutoAWQ's quant_config.json)")
    if group_size != -1 and found_rows > 0:
        causes.append(f"in_features {found_rows * group_size} at group_size {group_size} (the layer was built for "
                      f"{in_features} inputs: the model's size is not the checkpoint's — then its qweight has "
                      f"{found_rows * group_size} rows too, and its own error says so)")
    if not causes:
        return (f"{expected}; the checkpoint's {found_rows} rows divide in_features {in_features} into no whole "
                "groups" + ("" if group_size == -1 else f" of {group_size}"))
    return f"{expected}; the checkpoint's {found_rows} rows mean " + ", or ".join(causes)


def group_rows_loader(loader: Loader, in_features: int, group_size: int, note: str = "") -> Loader:
    """``loader`` with a WeightLoadError on a checkpoint tensor of the wrong row count explained by the group size
    (``note`` appended: that the config did not give it).

    A ``functools.partial``, not a closure: ``copy.deepcopy`` of the layer copies it with the layer's loader bound to
    the copy (as int8's checking loaders).
    """
    return functools.partial(_load_group_rows, loader, in_features, group_size, note)


def _load_group_rows(loader: Loader, in_features: int, group_size: int, note: str, param: torch.nn.Parameter,
                     loaded_weight: TensorLike, *args: Any, **kwargs: Any) -> None:
    expected = 1 if group_size == -1 else in_features // group_size
    try:
        loader(param, loaded_weight, *args, **kwargs)
    except WeightLoadError as exc:
        if loaded_weight.dim() != 2 or loaded_weight.shape[0] == expected:
            raise
        raise WeightLoadError(f"{exc}; {group_rows_note(in_features, group_size, loaded_weight.shape[0])}{note}") from exc
