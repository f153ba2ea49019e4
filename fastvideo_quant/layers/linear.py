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

import dataclasses
from collections.abc import Iterable

import torch

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
    "TPFit",
    "adjust_scalar_to_fused_array",
    "rank_sizes",
    "tp_fit",
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


@dataclasses.dataclass(frozen=True)
class TPFit:
    """What :func:`tp_fit` found: ``fits``, the TP sizes checked at which no linear layer was found not to split;
    ``problems``, for each other size checked, one line a layer that does not (its name, class and first reason);
    ``unchecked``, for a size where a method's rule raised, one line a layer it could not be asked about."""

    fits: list[int]
    problems: dict[int, list[str]]
    unchecked: dict[int, list[str]] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"TP sizes at which every linear layer splits: {self.fits or 'none of those checked'}"]
        for title, table in (("", self.problems), ("not checked: ", self.unchecked)):
            for tp, found in table.items():
                shown = found[:3] + ([f"and {len(found) - 3} more layer(s)"] if len(found) > 3 else [])
                lines.append(f"TP size {tp}: {title}" + "; ".join(shown))
        return "\n".join(lines)


def tp_fit(model: torch.nn.Module, sizes: Iterable[int] = (1, 2, 4, 8)) -> TPFit:
    """The TP sizes among ``sizes`` at which every linear layer of ``model`` splits — by the layers' rules (heads, each
    fused part's outputs, the row layers' inputs: :func:`rank_sizes`) and by each quantized layer's method
    (``QuantizationConfig.shard_problems``: AWQ's whole groups and 8 columns an int32, fp8's whole blocks) — and, for
    the others, why each layer that does not. Building a model at a TP size stops at its first layer that does not
    split, and that layer's advice knows only itself; this checks every layer at once. ``model`` is built at any TP
    size on any device, the meta device included (``with torch.device("meta"): model = build(...)``), with the
    quant_config it will load with: the layers' sizes and methods are read, nothing else."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"tp_fit(model, sizes): expected a torch.nn.Module, found {type(model).__name__} {model!r:.80}")
    if isinstance(sizes, int | str) or not isinstance(sizes, Iterable):
        raise TypeError(f"tp_fit(model, sizes): sizes is the TP sizes to check, an iterable of ints (tp_fit(model, "
                        f"(2, 4, 8))), found {type(sizes).__name__} {sizes!r}")
    checked = list(sizes)
    bad = [tp for tp in checked if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1]
    if bad:
        raise ValueError(f"tp_fit: TP sizes must be positive integers, found {bad!r}")
    problems: dict[int, list[str]] = {}
    unchecked: dict[int, list[str]] = {}
    layers = [(name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, LinearBase)]
    for tp in checked:
        for name, layer in layers:
            why, raised = _split_problem(layer, tp)
            if why is not None:
                (unchecked if raised else problems).setdefault(tp, []).append(
                    f"{name!r} ({type(layer).__name__}): {why}")
    return TPFit([tp for tp in checked if tp not in problems], problems, unchecked)


def _split_problem(layer: LinearBase, tp: int) -> tuple[str | None, bool]:
    """Why ``layer`` does not split ``tp`` ways (None: it does), and whether that is a method's rule that raised (so
    whether it splits is not known)."""
    sizes = rank_sizes(layer, tp)
    if sizes is None:
        what = (f"its {layer.total_num_heads} query / {layer.total_num_kv_heads} KV heads"
                if isinstance(layer, QKVParallelLinear) else f"its {layer.input_size} inputs"
                if isinstance(layer, RowParallelLinear) else
                f"its output parts {list(getattr(layer, 'output_sizes', [layer.output_size]))}")
        return f"{what} do not split {tp} ways", False
    if not layer._quantized():
        return None, False
    config = getattr(layer.quant_method, "quant_config", None) or layer.quant_config
    try:
        found = config.shard_problems(*sizes)
    except Exception as exc:  # noqa: BLE001 - a plugin's broken rule is named, not raised from a check
        return f"{type(config).__name__}.shard_problems raised {type(exc).__name__}: {exc}", True
    return (f"{config.get_name()}: {found[0]}" if found else None), False


def __getattr__(name: str):
    if name == "UnquantizedLinearMethod":
        from fvq_unquantized import UnquantizedLinearMethod

        return UnquantizedLinearMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
