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

from fastvideo_quant.layers.base import (
    WEIGHT_LOADER_V2_SUPPORTED,
    LinearBase,
    adjust_scalar_to_fused_array,
    shard_sizes,
)
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
    "rank_sizes",
]


def rank_sizes(layer: LinearBase, tp: int) -> tuple[list[int], list[int], int, int] | None:
    """``(output parts per rank, whole parts, input per rank, whole input)`` of ``layer`` at TP size ``tp`` — what
    its shards would be, for a method's advice on which TP sizes work; None when the layer cannot be split ``tp``
    ways (or is not one of these classes and ``tp`` is not its own). A part equal to its whole part is not split
    (q/k/v replicated over ranks included). The same rules as the layers' constructors."""
    out, inp = layer.output_size, layer.input_size
    if isinstance(layer, RowParallelLinear):
        return shard_sizes(tp, inp, [out], row=True)
    if isinstance(layer, QKVParallelLinear):
        return shard_sizes(tp, inp, [], heads=(layer.total_num_heads, layer.total_num_kv_heads, layer.head_size))
    if isinstance(layer, ColumnParallelLinear):
        return shard_sizes(tp, inp, list(getattr(layer, "output_sizes", [out])))
    if isinstance(layer, ReplicatedLinear) or tp == getattr(layer, "tp_size", 1):
        parts = list(getattr(layer, "logical_widths", [out]))
        return parts, parts, getattr(layer, "input_size_per_partition", inp), inp
    return None


def __getattr__(name: str):
    if name == "UnquantizedLinearMethod":
        from fvq_unquantized import UnquantizedLinearMethod

        return UnquantizedLinearMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
