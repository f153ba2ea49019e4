"""Tensor-parallel linear layers whose quantization method is a plugin.

The public surface of FastVideo's ``fastvideo.layers.linear`` (from vLLM). Two
loaders per layer: ``weight_loader`` (v1) shards by the attributes a method sets
on plain parameters (``output_dim``, ``input_dim``, ``packed_dim``/``pack_factor``,
``needs_scalar_to_array``); ``weight_loader_v2`` hands sharding to the parameter
classes of :mod:`fastvideo_quant.parameter`. Which one a layer uses comes from
the registry: the plugin declares it when registering the method.

This module is the public import path; the classes live one concept per file beside it
(``base``, ``replicated``, ``column``, ``row``).
"""

from fastvideo_quant.layers.base import WEIGHT_LOADER_V2_SUPPORTED, LinearBase, adjust_scalar_to_fused_array
from fastvideo_quant.layers.column import ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear
from fastvideo_quant.layers.replicated import ReplicatedLinear
from fastvideo_quant.layers.row import RowParallelLinear
from fastvideo_quant.quantization.base import LinearMethodBase

__all__ = [
    "WEIGHT_LOADER_V2_SUPPORTED",
    "ColumnParallelLinear",
    "LinearBase",
    "LinearMethodBase",
    "MergedColumnParallelLinear",
    "QKVParallelLinear",
    "ReplicatedLinear",
    "RowParallelLinear",
    "UnquantizedLinearMethod",  # noqa: F822 - provided lazily by __getattr__
    "adjust_scalar_to_fused_array",
]


def __getattr__(name: str):
    if name == "UnquantizedLinearMethod":
        from fvq_unquantized import UnquantizedLinearMethod

        return UnquantizedLinearMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
