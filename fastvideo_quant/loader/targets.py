"""Which parameter (or persistent buffer, or fused shard) each checkpoint tensor loads into, and what no tensor
provides: the ``packed_modules_mapping`` in force, two sources for one target, missing parameters and parts."""

from __future__ import annotations

from pathlib import Path

import torch

from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING


def mapping_and_source(model: torch.nn.Module, given: dict[str, list[str]] | None) -> tuple[dict[str, list[str]], str]:
    """The ``packed_modules_mapping`` in force, and where it came from (for messages); a ConfigError naming it where it
    is not a dict of lists of names."""
    from fastvideo_quant.quantization.selection import checked_packed_mapping

    if given is not None and given != {}:
        source = "the packed_modules_mapping argument"
        return checked_packed_mapping(given, f"load_checkpoint: {source}"), source
    own = getattr(model, "packed_modules_mapping", None)
    if own:
        source = f"{type(model).__name__}.packed_modules_mapping"
        return checked_packed_mapping(own, source), source
    return DEFAULT_PACKED_MODULES_MAPPING, "the default packed_modules_mapping"


def target_for(name: str, params: dict[str, torch.nn.Parameter], owners: dict[str, torch.nn.Module],
                reverse: dict[str, list[tuple[str, int]]], buffers: dict[str, torch.Tensor]) -> tuple[str, object] | None:
    """``(parameter name, shard id or None)`` that checkpoint tensor ``name`` loads into, or None. A part name that
    several fused modules list (``to_k`` of ``to_qkv`` and of a cross-attention's ``to_kv``) goes to the one the model
    has at that path (it went to whichever the mapping listed last); one the model has both of there is a
    CheckpointError naming them (which of the two the tensor is for cannot be told)."""
    if name in params or name in buffers:
        return name, None
    parts = name.split(".")
    for i, part in enumerate(parts):
        found = []
        for fused, index in reverse.get(part, ()):
            candidate = ".".join(parts[:i] + [fused] + parts[i + 1 :])
            # Only a fused layer takes a shard id; elsewhere the name is simply not the model's.
            if candidate in params and is_fused(owners[candidate]):
                found.append((candidate, owners[candidate].checkpoint_shard_id(index)))
        if len(found) > 1:
            from fastvideo_quant.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint tensor {name!r}: packed_modules_mapping lists {part!r} as a part of several fused modules, "
                f"and the model has more than one of them there: {[c for c, _ in found]}, so which one it loads into "
                "cannot be told; nothing was loaded. Rename one of the model's modules, or load with a "
                "param_names_mapping that names the target of this module's tensors")
        if found:
            return found[0]
    return None


def shard_ids(layer: torch.nn.Module) -> list[object]:
    """A fused layer's shard ids in its shard order (QKV: q, k, v; Merged: 0, 1, ... in ``output_sizes`` order)."""
    return [layer.checkpoint_shard_id(i) for i in range(len(layer.output_partition_sizes))]


def shard_order(layer: torch.nn.Module) -> str:
    """How a fused layer's shards are ordered, for messages."""
    from fastvideo_quant.layers.column import QKVParallelLinear

    if isinstance(layer, QKVParallelLinear):
        return "q, k, v"
    return f"0, 1, ... in output_sizes order {list(layer.output_sizes)}"


def is_fused(module: torch.nn.Module) -> bool:
    from fastvideo_quant.layers.column import _FusedColumnLinear  # Merged and QKV: the layers that take shard ids

    return isinstance(module, _FusedColumnLinear)


def linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(module path, layer)`` of each of our linear layers below ``model`` (not ``model`` itself)."""
    from fastvideo_quant.layers.base import LinearBase

    return [(path, m) for path, m in model.named_modules() if path and isinstance(m, LinearBase)]


def leaf_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def persistent_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent buffers by name (those of its ``state_dict``): a checkpoint tensor of that name loads into
    one, checked like a parameter. Non-persistent ones are left out (not in the state_dict)."""
    found = {}
    for path, module in model.named_modules():
        for leaf, buffer in module._buffers.items():
            if buffer is not None and leaf not in module._non_persistent_buffers_set:
                found.setdefault(f"{path}.{leaf}" if path else leaf, buffer)
    return found


def _source(name: str, shard_id: object, file: Path) -> str:
    return f"{name!r} in {file.name}" + (" (whole)" if shard_id is None else f" (shard {shard_id!r})")


def conflicting_sources(plan) -> list[str]:
    """Parameters (or fused shards) that two checkpoint tensors would write: the last one read would win silently.

    A fused parameter stored whole (``qkv_proj.weight``) and as its parts (``q_proj.weight`` ...) is one case;
    a part repeated under two names another.
    """
    by_target: dict[str, list[tuple[str, object, Path]]] = {}
    for name, target, shard_id, _, file in plan:
        by_target.setdefault(target, []).append((name, shard_id, file))
    problems = []
    for target, sources in by_target.items():
        if len(sources) < 2:
            continue
        ids = [s for _, s, _ in sources]
        if None in ids:
            clash = sources
        else:
            clash = [src for src in sources if ids.count(src[1]) > 1]
        if clash:
            problems.append(
                f"parameter {target!r} has more than one source, and the one read last would win: "
                + ", ".join(_source(*src) for src in clash)
                + " (a checkpoint holds each parameter once: either fused or as its parts)"
            )
    return problems


def takes_parts_whole(param: torch.Tensor) -> bool:
    """Whether a fused layer's parameter holds one tensor for all its parts, each part's loader call writing it whole
    (no ``output_dim`` and no slot per part: a vLLM-style act-order ``g_idx``), so parts that disagree leave the last
    one's: a plain (v1) parameter without ``needs_scalar_to_array``, or a parameter class whose part loaders are
    :class:`~fastvideo_quant.parameter.BasevLLMParameter`'s own (a class overriding them places each part itself:
    the per-part scale classes, AWQ's ``weight_g_idx``)."""
    from fastvideo_quant.parameter import BasevLLMParameter

    if getattr(param, "output_dim", None) is not None:
        return False
    if isinstance(param, BasevLLMParameter):
        cls = type(param)
        return (cls.load_qkv_weight is BasevLLMParameter.load_qkv_weight
                and cls.load_merged_column_weight is BasevLLMParameter.load_merged_column_weight)
    return not getattr(param, "needs_scalar_to_array", False)


def disagreeing_parts(plan, targets, owners) -> list[str]:
    """A problem line for each fused layer's parameter that takes every part whole (:func:`takes_parts_whole`) and to
    which the checkpoint's parts give different values: the part read last would be kept, silently, and the other
    parts computed with it (GPTQ's act-order ``g_idx`` of q, k and v). A parameter with a ``weight_loader`` of its own
    (not the layer's) places each part itself (AWQ's ``weight_shape``, checked against each part). The tensors are read
    (such parameters are small: an index or a scale per input feature)."""
    by_target: dict[str, list] = {}
    for name, target, shard_id, handle, file in plan:
        owner, param = owners[target], targets[target]
        loader = getattr(param, "weight_loader", None)
        own = loader is None or getattr(loader, "__self__", None) is owner  # (a loader of its own decides: AWQ's shapes)
        if shard_id is not None and own and is_fused(owner) and takes_parts_whole(param):
            by_target.setdefault(target, []).append((name, shard_id, handle, file))

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))

    problems = []
    for target, parts in by_target.items():
        order = shard_ids(owners[target])  # (said in the layer's shard order: q, k, v)
        parts.sort(key=lambda part: order.index(part[1]) if part[1] in order else len(order))
        first = parts[0][2].get_tensor(parts[0][0])
        differ = [(n, s, f) for n, s, h, f in parts[1:] if not same(h.get_tensor(n), first)]
        if differ:
            problems.append(
                f"parameter {target!r} holds one tensor for every part of its fused layer (it has no output_dim: each "
                f"part's tensor is written whole), but the checkpoint's parts differ: {_source(*parts[0][:2], parts[0][3])}"
                f" against " + ", ".join(_source(*d) for d in differ) + "; the part read last would be kept and the "
                "others computed with it. Load the parts into separate layers, or store them alike (a method whose "
                "parts may differ there needs a parameter with a slot per part, sharded along output_dim)")
    return problems


def shards_written(params, owners) -> dict[str, set]:
    """Parameter → shard ids written by every load so far (kept on the owning module across loads)."""
    seen = {}
    for name in params:
        got = getattr(owners[name], "_fvq_loaded_shards", {}).get(leaf_name(name))
        if got:
            seen[name] = set(got)
    return seen


def _fused_parts(name: str, mapping) -> list[str] | None:
    """The checkpoint modules fused into parameter ``name``'s layer (``qkv_proj.weight`` → q/k/v_proj), or None."""
    return mapping.get(name.rsplit(".", 2)[-2]) if "." in name else None


def find_missing(params, owners, mapping, seen: dict[str, set]) -> list[tuple[str, list[str] | None]]:
    """``(parameter, absent checkpoint parts or None when wholly absent)`` for each parameter ``seen`` lacks."""
    missing = []
    for name, param in params.items():
        got = seen.get(name)
        if got is None and getattr(param, "checkpoint_optional", False):
            continue  # the method fills it when the checkpoint has none (e.g. a default format code)
        parts = _fused_parts(name, mapping)
        if got is None:
            missing.append((name, None))
        elif is_fused(owners[name]) and None not in got:
            # The layer's shards, not the mapping's length, say what is complete (check_mapping made them agree).
            absent = [i for i, s in enumerate(shard_ids(owners[name])) if s not in got]
            if absent:
                missing.append((name, [parts[i] if parts and i < len(parts) else f"shard {i}" for i in absent]))
    return missing


def missing_problems(missing, mapping) -> list[str]:
    problems = []
    for name, absent in missing:
        if absent is None:
            parts = _fused_parts(name, mapping)
            problems.append(f"missing tensor for parameter {name!r}" + (f" (or its parts {parts})" if parts else ""))
        else:
            module, _, leaf = name.rpartition(".")
            parent = module.rpartition(".")[0]
            tensors = [f"{parent}.{part}.{leaf}".lstrip(".") for part in absent]
            problems.append(f"missing parts {absent} of fused parameter {name!r} (checkpoint tensor(s) "
                            f"{', '.join(map(repr, tensors))})")
    return problems
