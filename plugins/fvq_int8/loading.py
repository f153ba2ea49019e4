"""Checking loaders for the int8 parameters: they name the tensor and check its dtype.

The parameter classes of :mod:`fastvideo_quant.parameter` do the sharding; these
wrappers around the layer's loader add what the format needs: a float tensor
must not be copied into the int8 weight (``copy_`` would truncate it), an int8
tensor must not land in a float weight — each with the fix for a bitsandbytes
checkpoint — and ``weight_format`` must say ``"row"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.lazy import TensorLike, materialize
from fvq_int8 import format as fmt

Loader = Callable[..., None]


def _dtype_of(t: TensorLike) -> torch.dtype | None:
    return getattr(t, "dtype", None)


def named_loader(loader: Loader, name: str, expect: str | None = None) -> Loader:
    """``loader`` with the checkpoint dtype checked against ``expect`` first (errors name ``name`` and give the
    bitsandbytes-specific fix; the layer's own loader already names the parameter in its errors).

    ``expect``: ``"int8"`` (a bitsandbytes weight), ``"float"`` (a weight to quantize
    on load, or SCB) or None.

    A ``functools.partial``, not a closure: ``copy.deepcopy`` of the layer copies it with the layer's loader bound
    to the copy (a closure would be shared, and load into the original).
    """
    return functools.partial(_load_named, loader, name, expect)


def _load_named(loader: Loader, name: str, expect: str | None, param: torch.nn.Parameter, loaded_weight: TensorLike,
                *args: Any, **kwargs: Any) -> None:
    _check_dtype(loaded_weight, name, expect)
    loader(param, loaded_weight, *args, **kwargs)  # the layer's loader names the parameter in its errors


def _check_dtype(loaded_weight: TensorLike, name: str, expect: str | None) -> None:
    dtype = _dtype_of(loaded_weight)
    if expect is None or dtype is None:
        return
    if expect == "int8" and dtype != torch.int8:
        raise WeightLoadError(f"{name}: expected an int8 bitsandbytes weight, found {dtype}. {_int8_weight_hint(dtype)}")
    if expect == "float" and dtype not in fmt.FLOAT_DTYPES:
        # Only a weight of layers built to quantize on load is read as a float for lack of a bitsandbytes config; SCB
        # is a float in the bitsandbytes checkpoint itself, read by layers already built with its config.
        bnb = name.rpartition(".")[2] == "weight" and dtype == torch.int8
        raise WeightLoadError(
            f"{name}: expected a float16/bfloat16/float32 tensor, found {dtype}"
            + (". An int8 weight means a bitsandbytes checkpoint: load it with its quantization_config (quant_method "
               "'bitsandbytes')" if bnb else "")
        )


def _int8_weight_hint(dtype: torch.dtype) -> str:
    """What a non-int8 tensor for a pre-quantized layer's weight means: a float checkpoint (quantize it on load), or
    something else than bitsandbytes' LLM.int8() format."""
    if dtype in fmt.FLOAT_DTYPES:
        return ("The layers were built to read a pre-quantized bitsandbytes checkpoint (a quantization_config with "
                "quant_method 'bitsandbytes'), but this is a float weight. To quantize a float checkpoint on load, "
                "build the layers with fastvideo_quant.quantization.resolve_quant_config(\"int8\") (for a checkpoint "
                "that declares no quantization; or Int8Config.from_config({\"quant_method\": \"int8\"})), or write "
                "an int8 checkpoint first: fvq quantize SRC --method int8 --out DST")
    return ("bitsandbytes' LLM.int8() format stores the weight as int8 [out, in] with a float32 SCB per row; this "
            "tensor is in another format, or the checkpoint is corrupt: re-export it with bitsandbytes 8-bit "
            "(load_in_8bit) or with fvq quantize SRC --method int8 --out DST")


def weight_format_loader(loader: Loader, name: str) -> Loader:
    """A loader for ``weight_format`` that refuses anything but ``"row"`` before storing it (a partial, as above)."""
    return functools.partial(_load_weight_format, loader, name)


def _load_weight_format(loader: Loader, name: str, param: torch.nn.Parameter, loaded_weight: TensorLike,
                        *args: Any, **kwargs: Any) -> None:
    value = materialize(loaded_weight)
    if value.numel() != 1:
        raise WeightLoadError(f"{name}: expected a scalar format code, found shape {tuple(value.shape)}")
    fmt.check_row_format(value.reshape(()), name)
    loader(param, value.reshape(()).to(param.dtype), *args, **kwargs)
