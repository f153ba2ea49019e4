"""Hints for a fused layer's parts: the ``packed_modules_mapping`` entry a fused layer lacks when the checkpoint
stores its parts separately, parts stored some quantized and some float, and a refused tensor's whole shape (a
positional mapping in the wrong order: a part whose shape is another shard's)."""

from __future__ import annotations

import math
import os

import torch

from fastvideo_quant.errors import ONE_SCHEME_PER_LAYER
from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.loader.targets import is_fused, linear_layers, shard_ids, shard_order
from fastvideo_quant.processing import names
from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING, as_model_shows


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


def mixed_fused_parts(stored: dict, owners, mapping, rename=lambda name: name) -> dict[str, tuple[list, list]]:
    """The fused layers whose parts the checkpoint stores some float and some quantized (``fvq quantize --skip to_q``
    without ``--fuse``): layer path → (its float parts, its quantized parts), as checkpoint module names. A part is
    float when its ``.weight`` is a float wider than 8 bits with nothing beside it but a bias; quantized when it has
    any other tensor (a scale, AWQ's ``qweight``) or an 8-bit weight. ``rename``: the ``param_names_mapping`` in
    force, so the layer is the model's."""
    leaves_of: dict[str, dict[str, object]] = {}
    for name, dtype in stored.items():
        module, _, leaf = name.rpartition(".")
        leaves_of.setdefault(module, {})[leaf] = dtype
    layers = {target.rpartition(".")[0]: module for target, module in owners.items()}
    found: dict[str, tuple[list, list]] = {}
    for module, leaves in sorted(leaves_of.items()):
        renamed = rename(f"{module}.weight").rpartition(".")[0]
        layer = as_model_shows(renamed, mapping)
        if layer == renamed or not is_fused(layers.get(layer)):
            continue
        weight = leaves.get("weight")
        if set(leaves) - {"weight", "bias"} or weight is not None and weight.itemsize == 1:
            found.setdefault(layer, ([], []))[1].append(module)
        elif weight is not None and weight.is_floating_point:
            found.setdefault(layer, ([], []))[0].append(module)
    return {layer: parts for layer, parts in found.items() if all(parts)}


def mixed_parts_hints(layers: list[str], mixed: dict[str, tuple[list, list]], mapping) -> list[str]:
    """The lines for fused ``layers`` whose parts are stored differently (``mixed``: :func:`mixed_fused_parts`), one
    for the layers whose parts are alike (each block's ``to_qkv``): no config builds such a layer to fit, since one
    layer holds one scheme (the reason a skip list naming some of its parts is refused), so the checkpoint must be
    quantized again with its parts alike — given ``--fuse`` where the layer's name is not a built-in fused one, so
    that ``fvq quantize`` treats the parts as one layer."""
    groups: dict[tuple, list[str]] = {}
    for layer in layers:
        floats, quantized = mixed[layer]
        key = tuple(tuple(m.rpartition(".")[2] for m in ms) for ms in (floats, quantized))
        groups.setdefault((layer.rpartition(".")[2], *key), []).append(layer)
    hints = []
    for (leaf, floats, quantized), same in groups.items():
        first = same[0]
        parts = list(mapping.get(leaf, ())) or sorted(floats + quantized)
        parent = mixed[first][0][0].rpartition(".")[0]
        skips = " ".join(f"--skip {parent}.{p}" if parent else f"--skip {p}" for p in parts)
        fuse = (f"--skip {first} skips all of them (skipping only some is refused)"
                if DEFAULT_PACKED_MODULES_MAPPING.get(leaf) == parts else
                f"give fvq quantize --fuse {leaf}={','.join(parts)} so that it keeps them together (it then refuses "
                f"skipping only some, and --skip {first} skips all of them)")
        hints.append(
            f"fused layer(s) {names(same, limit=3)} have their parts stored differently: {names(list(floats))} "
            f"unquantized (a float weight, no scale), {names(list(quantized))} quantized; {ONE_SCHEME_PER_LAYER}, so "
            f"no quantization config or skip list builds {'it' if len(same) == 1 else 'them'} to fit this checkpoint. "
            f"Quantize it again skipping all of a layer's parts or none: --skip each part ({skips}) or none, or "
            f"{fuse}")
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
