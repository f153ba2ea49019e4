"""Hints for a fused layer's parts: the ``packed_modules_mapping`` entry a fused layer lacks when the checkpoint
stores its parts separately, and a refused tensor's whole shape (a positional mapping in the wrong order: a part
whose shape is another shard's)."""

from __future__ import annotations

import math
import os

import torch

from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.loader.targets import is_fused, linear_layers, shard_ids, shard_order


def fused_name_hints(model: torch.nn.Module, missing, unexpected: list[str], mapping) -> list[str]:
    """For a fused layer whose parameters are missing while the checkpoint holds unexpected tensors of sibling
    modules with the same parameter names (``to_q/to_k/to_v.weight`` beside ``to_qkv``): the mapping entry to add."""
    absent = {n for n, parts in missing if parts is None}
    hints = []
    for path, layer in linear_layers(model):
        if not is_fused(layer) or path.rpartition(".")[2] in mapping:
            continue
        leaves = {n.rpartition(".")[2] for n in absent if n.rpartition(".")[0] == path}
        if not leaves:
            continue
        parent = path.rpartition(".")[0]
        found = sorted({n.rpartition(".")[0].rpartition(".")[2] for n in unexpected
                        if n.rpartition(".")[2] in leaves and n.rpartition(".")[0].rpartition(".")[0] == parent})
        ids = shard_ids(layer)
        fused = path.rpartition(".")[2]
        found = _likely_parts(fused, found, len(ids))
        if found is None:
            continue
        ordered = _in_shard_order(found, ids)
        entry = "{" + f"{fused!r}: {ordered or found}" + "}"
        order = "" if ordered else f" (put them in the layer's shard order: {shard_order(layer)})"
        hints.append(
            f"layer {path!r} is a fused {type(layer).__name__} and the checkpoint stores its parts separately as "
            f"{', '.join(map(repr, found))}: tell the loader which checkpoint modules it fuses with "
            f"packed_modules_mapping = {entry}{order} (a class attribute of the model, or the packed_modules_mapping "
            "argument; the quantization config's packed_modules_mapping needs the same entry for its skip list)"
        )
    return hints


def _likely_parts(fused: str, candidates: list[str], count: int) -> list[str] | None:
    """The ``count`` sibling modules most likely fused into ``fused``: those sharing the longest name prefix with it
    (``to_q``... for ``to_qkv`` beside ``ff_gate``...), else all of them; None when that is not ``count`` modules."""
    if len(candidates) == count:
        return candidates
    if len(candidates) < count:
        return None
    ranked = sorted(candidates, key=lambda c: -len(os.path.commonprefix([fused, c])))
    shared = [len(os.path.commonprefix([fused, c])) for c in ranked]
    return sorted(ranked[:count]) if shared[count - 1] > shared[count] else None


#: Names a checkpoint gives the parts of a fused layer, by shard id (for the order of a suggested mapping).
_PART_WORDS = {"q": ("q", "query"), "k": ("k", "key"), "v": ("v", "value"), 0: ("gate", "w1"), 1: ("up", "w3")}


def _in_shard_order(modules: list[str], ids: list[object]) -> list[str] | None:
    """``modules`` ordered by shard when each one's distinguishing part names its shard (``to_k`` → 'k'), else None."""
    start = len(os.path.commonprefix(modules))
    end = len(os.path.commonprefix([m[::-1] for m in modules]))
    words = {m: m[start:len(m) - end].strip("_.").lower() for m in modules}
    ordered = []
    for sid in ids:
        match = [m for m, w in words.items() if w in _PART_WORDS.get(sid, ())]
        if len(match) != 1:
            return None
        ordered.append(match[0])
    return ordered


#: How :func:`order_hint` begins a statement of the whole checkpoint tensor's shape (the loader puts that statement in
#: place of a CheckpointShapeError's own sentence, which states one parameter's or one dim's size).
WHOLE_SHAPE = "; as a whole, "


def order_hint(name: str, tensor: TensorLike, param, layer, shard_id: object, mapping) -> str:
    """What a refused checkpoint tensor's whole shape says: the shape expected (``(transposed?)`` when it is that
    shape reversed), or, for a fused layer's part whose whole shape is another shard's, that ``packed_modules_mapping``
    is positional. Empty when the shape is the expected one (the load failed for another reason) or cannot be told."""
    try:
        expected = _checkpoint_shapes(param, layer)
    except Exception:  # noqa: BLE001 - only a hint: no hint when the sizes cannot be told
        return ""
    found = tuple(tensor.shape)
    want = (expected or {}).get(shard_id)
    if want is None or found == want or math.prod(found) == 1 == math.prod(want):  # (a scalar is taken as [1])
        return ""
    fits = [sid for sid, shape in expected.items() if sid is not None and shape == found]
    if shard_id is None or not fits:
        transposed = " (transposed?)" if len(found) == 2 and found == want[::-1] else ""
        return f"{WHOLE_SHAPE}expected shape {want}, found {found}{transposed}"
    module = name.rpartition(".")[0].rpartition(".")[2]
    fused = layer.prefix.rpartition(".")[2] if layer.prefix else "?"
    parts = next((p for f, p in mapping.items() if module in p and (f == fused or fused == "?")), None)
    where = f" at position {parts.index(module)} of packed_modules_mapping[{fused!r}] {list(parts)}" if parts else ""
    return (f" ({module!r} is{where}, so it loads into shard {shard_id!r} (shape {want}), but its shape {found} fits "
            f"shard(s) {', '.join(map(repr, fits))}: the mapping is positional, list the checkpoint modules in the "
            f"layer's shard order: {shard_order(layer)})")


def _checkpoint_shapes(param, layer) -> dict[object, tuple[int, ...]] | None:
    """The whole checkpoint tensor's shape that ``param`` of ``layer`` takes, by shard id (None: the one tensor of an
    unfused layer, or a fused one stored fused): the parameter's shape with the dim the layer shards over its
    tensor-parallel ranks at its full size (a fused layer's: the part's). None when that cannot be told."""
    from fastvideo_quant.layers.base import storage_units
    from fastvideo_quant.layers.column import ColumnParallelLinear
    from fastvideo_quant.layers.row import RowParallelLinear

    shape = list(param.shape)

    def sized(dim: int, size: int) -> tuple[int, ...]:
        return tuple(shape[:dim] + [size] + shape[dim + 1:])

    if is_fused(layer):
        dim = getattr(param, "output_dim", None)
        if dim is None:
            return None
        found = {sid: sized(dim, storage_units(param, dim, 0, layer._shard_geometry(sid)[3])[1])
                 for sid in shard_ids(layer)}
        return {**found, None: sized(dim, sum(s[dim] for s in found.values()))}
    tp = getattr(layer, "tp_size", 1)
    if isinstance(layer, (ColumnParallelLinear, RowParallelLinear)) and tp > 1:
        dim = getattr(param, "output_dim" if isinstance(layer, ColumnParallelLinear) else "input_dim", None)
        if dim is not None:
            return {None: sized(dim, shape[dim] * tp)}
    return {None: tuple(shape)}
