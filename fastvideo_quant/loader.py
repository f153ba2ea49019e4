"""Load safetensors checkpoints into models built from our layers.

* Files (:func:`checkpoint_files`): with an index, ``<base>.safetensors.index.json`` (``model`` as ``transformers``
  writes it, ``diffusion_pytorch_model`` as ``diffusers`` does), only the files it names; else ``model.safetensors`` or
  ``diffusion_pytorch_model.safetensors`` alone (other ``*.safetensors`` beside it are named in a warning, not read);
  else every ``*.safetensors`` in the directory. Never pickle. Two indexes, or both single files, are an error; a
  tensor name held by two files is an error naming both (a stale copy would win silently).
* Targets: a checkpoint tensor loads into the parameter of its name, or into a persistent buffer of its name (checked
  like a parameter); a non-persistent buffer takes none (it is not in the model's state_dict), and a buffer no
  tensor provides is not missing (models compute them).
* Names: a checkpoint tensor ``...q_proj.weight`` goes to ``...qkv_proj.weight`` with
  shard id ``'q'`` through ``packed_modules_mapping`` (``gate_proj/up_proj`` → ``gate_up_proj``
  with 0/1); the shard id comes from the layer (:meth:`LinearBase.checkpoint_shard_id`).
* Up front, each in one error: a checkpoint declaring a quantization method (config.json, a method
  file) that the model's layers were not built with; a ``packed_modules_mapping`` entry with another
  number of parts than its fused layer has shards; a quantized layer whose ``prefix`` (what
  ``modules_to_not_convert`` matches) is not its module path (what names are matched by).
* Validation first: two sources for one parameter (or one fused shard), missing and unexpected
  names are found before anything is copied, and every load is rehearsed on ``meta`` tensors
  (shapes only), so a mis-shaped tensor is reported, with the others, before the model is touched;
  a float tensor cast to a narrower float parameter is read, and a value overflowing to inf reported.
* Each TP rank reads only its slices: loaders get a :class:`~fastvideo_quant.lazy.LazyTensor` (the overflow check
  of a narrowing float cast reads such a tensor whole, in chunks).
* Finally :func:`~fastvideo_quant.processing.process_weights_after_loading` (re-exported here): every
  layer's ``validate_loaded_weights`` first (all failures in one error, no layer processed), then each
  layer's ``process_weights_after_loading``.
* A later load that would write into a processed layer is refused (its parameters are in the kernel
  format); one writing only into layers not processed yet (left incomplete by a ``strict=False`` load)
  is allowed, and processes them. A model is never left silently half-loaded or half-processed: the rare
  failure past the checks (an I/O error while writing, a method raising while processing)
  names what was already written or processed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from fastvideo_quant.errors import (
    CheckpointError,
    CheckpointWarning,
    ModelStateError,
    PluginError,
)
from fastvideo_quant.lazy import LazyTensor, TensorLike, materialize
from fastvideo_quant.parameter import copy_checked
from fastvideo_quant.processing import (
    clear_unloaded,
    kind,
    mark_unloaded,
    names,
    process,
    process_weights_after_loading,
    quant_layers,
    refuse_failed,
)
from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING

__all__ = ["LoadReport", "checkpoint_files", "default_weight_loader", "lazy_slice", "load_checkpoint",
           "open_safetensors", "process_weights_after_loading", "read_tensor"]

#: safetensors dtype strings (safetensors Dtype) → torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

@dataclasses.dataclass
class LoadReport:
    """What a load did.

    :ivar loaded: parameter (or persistent buffer) name → the shard ids written by this load (``None``: the whole
        tensor).
    :ivar files: the safetensors files read.
    :ivar missing: parameters (not ``checkpoint_optional``) that no load has written, wholly or in part —
        only ever non-empty with ``strict=False``.
    :ivar missing_parts: for a fused parameter written in part, the checkpoint modules still absent.
    :ivar unexpected: checkpoint tensors that no parameter or persistent buffer takes (ignored with ``strict=False``).
    :ivar unprocessed: layers left unprocessed because some of their parameters are missing; set them and call
        :func:`process_weights_after_loading`, or load a checkpoint holding them (which processes them).
    """

    loaded: dict[str, list[object]]
    files: list[Path]
    missing: list[str] = dataclasses.field(default_factory=list)
    missing_parts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    unprocessed: list[str] = dataclasses.field(default_factory=list)


def open_safetensors(path: str | os.PathLike[str], what: str = "checkpoint file"):
    """``safe_open(path)``; a file safetensors cannot read (truncated, not safetensors, unreadable) is a
    CheckpointError naming it (``what``: whose file it is) instead of a bare ``SafetensorError``."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError (no importable class in every version), OSError
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read as safetensors ({type(exc).__name__}: {exc}); the file is "
            "truncated (an interrupted download or copy), not a safetensors file, or unreadable: re-download or "
            "re-export it"
        ) from exc


#: The whole-checkpoint file names read from a directory without an index (``transformers`` and ``diffusers``), and
#: thereby the bases of their indexes (``<base>.safetensors.index.json``).
SINGLE_FILE_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
_INDEX_SUFFIX = ".safetensors.index.json"
_INDEX_NAMES = " or ".join(n + ".index.json" for n in SINGLE_FILE_NAMES)


def _read_index(index: Path) -> dict:
    """The ``weight_map`` of a ``<base>.safetensors.index.json``; CheckpointError naming the file when it is not
    JSON or has no such object."""
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index} is not valid JSON ({exc}); re-download it, or remove it to read the directory "
                              "without an index") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} has no 'weight_map' object (a tensor name → file name map)")
    return weight_map


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint (a file, or a directory with or without an index).

    * An index, ``<base>.safetensors.index.json`` (``model.safetensors.index.json`` as ``transformers`` writes it,
      ``diffusion_pytorch_model.safetensors.index.json`` as ``diffusers`` does, or any other base): only the files its
      ``weight_map`` names are read (as Hugging Face does); other ``*.safetensors`` files beside it are not read. Two
      indexes in one directory are a CheckpointError naming both (which one describes the checkpoint cannot be told).
    * No index, and one of :data:`SINGLE_FILE_NAMES` (``model.safetensors``, ``diffusion_pytorch_model.safetensors``):
      only that file is read. Other ``*.safetensors`` files beside it (a LoRA, an adapter) are not read, and a
      CheckpointWarning names them; one repeating a tensor of the checkpoint (a stale copy: which one is current
      cannot be told) is a CheckpointError naming both files. Both names in one directory are a CheckpointError.
    * Neither: every ``*.safetensors`` file (sharded files whose index was lost); when that is more than one file a
      CheckpointWarning names those read together.

    A tensor name in more than one of the files read is a CheckpointError naming the files: whichever was read last
    would win silently.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; only safetensors checkpoints are loaded (never pickle)")
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    indexes = sorted(p for p in path.glob("*" + _INDEX_SUFFIX) if p.is_file())
    if len(indexes) > 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {len(indexes)} indexes, {', '.join(p.name for p in indexes)}, and which one "
            "describes the checkpoint cannot be told (each names the files to read); nothing was loaded. Remove the "
            "index (and the files) that do not belong to it, or move them to a directory of their own"
        )
    if indexes:
        index = indexes[0]
        weight_map = _read_index(index)
        files = sorted({path / f for f in weight_map.values()})
        absent = [str(f.name) for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} names files that are not in {path}: {absent}")
        _check_no_repeated_tensors(path, files, weight_map)
        return files
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {pickles}: pickle checkpoints are not loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"no *.safetensors files in {path}{hint}")
    singles = [path / n for n in SINGLE_FILE_NAMES if (path / n).is_file()]
    if len(singles) > 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds both {' and '.join(p.name for p in singles)} and no index "
            f"({_INDEX_NAMES}), so which file is the checkpoint cannot be told; nothing was loaded. Remove the one that "
            "does not belong, load the file itself (its path instead of the directory's), or write an index naming the "
            "files to read"
        )
    if singles:
        others = [f for f in files if f != singles[0]]
        _check_no_repeated_tensors(path, files, None, read=singles[0])
        if others:
            warnings.warn(
                f"checkpoint {str(path)!r}: read {singles[0].name} only; {len(others)} other *.safetensors file(s) beside "
                f"it were not read: {names([f.name for f in others])} (without an index, {' or '.join(SINGLE_FILE_NAMES)} "
                "is the checkpoint; write an index naming the files to read if they belong to it)",
                CheckpointWarning, stacklevel=2,
            )
        return singles
    _check_no_repeated_tensors(path, files, None)
    if len(files) > 1:
        warnings.warn(
            f"checkpoint {str(path)!r} has no index ({_INDEX_NAMES}) and no {' or '.join(SINGLE_FILE_NAMES)}: its "
            f"{len(files)} *.safetensors files are read together as one checkpoint: {names([f.name for f in files])}; "
            "write an index naming the files to read if some do not belong to it",
            CheckpointWarning, stacklevel=2,
        )
    return files


def _check_no_repeated_tensors(path: Path, files: list[Path], weight_map: dict | None, read: Path | None = None) -> None:
    """A CheckpointError when a tensor name is in more than one of ``files`` (reads the headers only). With ``read``
    (the one file read from a directory without an index), only names that file shares with another count."""
    if len(files) < 2:
        return
    holders: dict[str, list[Path]] = {}
    for file in files:
        with open_safetensors(file) as handle:
            for name in handle.keys():
                holders.setdefault(name, []).append(file)
    by_files: dict[tuple[Path, ...], list[str]] = {}
    for name, where in holders.items():
        if len(where) > 1 and (read is None or read in where):
            by_files.setdefault(tuple(where), []).append(name)
    if not by_files:
        return
    lines = []
    for where, tensors in sorted(by_files.items()):
        listed = names(sorted(tensors), lambda n: repr(n) + (f" (the index names {weight_map[n]})"
                                                            if weight_map and n in weight_map else ""))
        lines.append(f"{len(tensors)} tensor(s) in each of {', '.join(f.name for f in where)}: {listed}")
    if weight_map is not None:
        fix = ("the index assigns each tensor to one file, so the files it names must not repeat tensors: fix the files "
               "or the index")
    elif read is not None:
        fix = (f"without an index ({_INDEX_NAMES}) only {read.name} is read, but another *.safetensors file beside it "
               "repeats its tensors, so which copy is current cannot be told: remove the stale file(s), or write an "
               "index naming the files to read")
    else:
        fix = (f"without an index ({_INDEX_NAMES}) or a {' or '.join(SINGLE_FILE_NAMES)}, every *.safetensors file in "
               "the directory is read: remove the stale file(s), or write an index naming the files to read")
    raise CheckpointError(
        f"checkpoint {str(path)!r} holds the same tensor in more than one file, and the file read last would win "
        f"silently; nothing was loaded ({fix}):\n  " + "\n  ".join(lines)
    )


def _target_for(name: str, params: dict[str, torch.nn.Parameter], owners: dict[str, torch.nn.Module],
                reverse: dict[str, tuple[str, int]], buffers: dict[str, torch.Tensor]) -> tuple[str, object] | None:
    if name in params or name in buffers:
        return name, None
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in reverse:
            fused, index = reverse[part]
            candidate = ".".join(parts[:i] + [fused] + parts[i + 1 :])
            # Only a fused layer takes a shard id; elsewhere the name is simply not the model's.
            if candidate in params and _is_fused(owners[candidate]):
                return candidate, owners[candidate].checkpoint_shard_id(index)
    return None


def _mapping_and_source(model: torch.nn.Module, given: dict[str, list[str]] | None) -> tuple[dict[str, list[str]], str]:
    """The ``packed_modules_mapping`` in force, and where it came from (for messages)."""
    if given:
        return given, "the packed_modules_mapping argument"
    own = getattr(model, "packed_modules_mapping", None)
    if own:
        return own, f"{type(model).__name__}.packed_modules_mapping"
    return DEFAULT_PACKED_MODULES_MAPPING, "the default packed_modules_mapping"


def shard_ids(layer: torch.nn.Module) -> list[object]:
    """A fused layer's shard ids in its shard order (QKV: q, k, v; Merged: 0, 1, ... in ``output_sizes`` order)."""
    return [layer.checkpoint_shard_id(i) for i in range(len(layer.output_partition_sizes))]


def _check_mapping(model: torch.nn.Module, mapping: dict[str, list[str]], source: str) -> None:
    """A CheckpointError, before anything is read, for each fused layer whose mapping entry lists another number of
    checkpoint modules than the layer has shards: fewer would leave a shard unwritten, more have no shard to go to."""
    problems = []
    for path, module in model.named_modules():
        parts = mapping.get(path.rpartition(".")[2]) if path else None
        if parts is None or not _is_fused(module):
            continue
        ids = shard_ids(module)
        if len(parts) == len(ids):
            continue
        leaf = path.rpartition(".")[2]
        found = f"{source} maps {leaf!r} to {len(parts)} checkpoint module(s) {list(parts)}"
        want = (f"but layer {path!r} ({type(module).__name__}) has {len(ids)} shards "
                f"({', '.join(map(repr, ids))}, in that order)")
        if len(parts) < len(ids):
            unmapped = ids[len(parts):]
            what = f"shard(s) {', '.join(map(repr, unmapped))} would never be written"
        else:
            what = f"{list(parts[len(ids):])} would have no shard to go to"
        problems.append(f"{found}, {want}: {what}. List one checkpoint module per shard, in the layer's shard order "
                        f"(the position in the list is the shard: {_order(module)})")
    if problems:
        raise CheckpointError("packed_modules_mapping does not fit the model's fused layers (nothing was loaded):\n  "
                              + "\n  ".join(problems))


def _order(layer: torch.nn.Module) -> str:
    """How a fused layer's shards are ordered, for messages."""
    from fastvideo_quant.layers.column import QKVParallelLinear

    if isinstance(layer, QKVParallelLinear):
        return "q, k, v"
    return f"0, 1, ... in output_sizes order {list(layer.output_sizes)}"


def _check_declared_method(model: torch.nn.Module, path) -> None:
    """A CheckpointError, before any tensor is read, when the checkpoint directory declares a quantization method
    (its config.json's quantization_config, or a method file) that the model's layers were not built with: another
    method, none, or the same method set up to quantize float weights on load (a ``quantized_checkpoint_keys``
    setting) while the checkpoint stores them quantized. Tensor by tensor it would be dozens of lines."""
    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.quantization.selection import checkpoint_declarations

    layers = quant_layers(model)
    if not layers or not Path(path).is_dir():
        return
    try:
        declarations = checkpoint_declarations(path)
    except FastVideoQuantError:
        return  # an unreadable declaration (or registry) is for resolve_quant_config to report; tensors are checked
    if not declarations or declarations[0].method in ("unquantized", "none"):
        return
    declared = declarations[0]
    built: dict[str, list[str]] = {}
    for name, layer in layers:
        config = getattr(layer, "quant_config", None)
        if config is not None:
            built.setdefault(config.get_name(), []).append(name)
    found = _built_differently(declared, built, layers)
    if found:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is quantized with {declared.method!r} ({declared.source} says so), but {found}; "
            "its tensors cannot load into these layers (nothing was loaded). Build the model's layers with the "
            f"checkpoint's config: quant_config=resolve_quant_config(checkpoint={str(path)!r}) "
            "(from fastvideo_quant.quantization), then load again"
        )


def _built_differently(declared, built: dict[str, list[str]], layers) -> str | None:
    """How the model's layers differ from the checkpoint's declaration, for the message; None when they do not."""
    if not built:
        return f"the model's {len(layers)} layer(s) ({names([n for n, _ in layers], limit=3)}) were built " \
               "without a quant_config (unquantized)"
    others = {m: n for m, n in built.items() if m != declared.method}
    if others:
        return "the model's layers were built with " + "; ".join(
            f"{m!r} ({len(n)} layer(s): {names(n, limit=3)})" for m, n in sorted(others.items()))
    config = next(m.quant_config for _, m in layers if getattr(m, "quant_config", None) is not None)
    try:
        stored = type(config).from_config(dict(declared.section))
    except Exception:  # noqa: BLE001 - a section its own config cannot read is reported when it is resolved
        return None
    if stored.reads_quantized_checkpoint() and not config.reads_quantized_checkpoint():
        return (f"the model's {declared.method!r} layers were built to quantize float weights on load, while the "
                f"checkpoint stores them quantized ({_settings(type(config))})")
    return None


def _settings(cls) -> str:
    """A config class's :attr:`~QuantizationConfig.quantized_checkpoint_keys`, as ``key=value`` for messages."""
    return ", ".join(f"{k}={v!r}" for k, v in cls.quantized_checkpoint_keys.items())


def _linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(module path, layer)`` of each of our linear layers below ``model`` (not ``model`` itself)."""
    from fastvideo_quant.layers.base import LinearBase

    return [(path, m) for path, m in model.named_modules() if path and isinstance(m, LinearBase)]


def _built_as(path: str, layer: torch.nn.Module) -> str:
    prefix = f"prefix {layer.prefix!r}" if layer.prefix else "no prefix (prefix='')"
    return f"layer at path {path!r} ({type(layer).__name__}) was built with {prefix}"


def _check_prefixes(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """A CheckpointError, before anything is read, listing each layer built with a quant_config whose ``prefix``
    is not its module path (nor ends with it: a sub-model's layers may carry the outer model's full path):
    checkpoint tensors are matched by the path, but the config's ``modules_to_not_convert`` (which layers stay
    unquantized) by the prefix, so the layer may be quantized against the checkpoint's word. Returns the
    mismatched layers without a quant_config (only a hint, where their tensors are missing)."""
    problems, others = [], {}
    for path, layer in _linear_layers(model):
        # A sub-model loaded on its own (its checkpoint keyed from it) keeps the full prefix of the outer model:
        # modules_to_not_convert patterns match whole dotted components, so they match it alike.
        if layer.prefix == path or layer.prefix.endswith("." + path):
            continue
        if getattr(layer, "quant_config", None) is None:
            others[path] = layer
            continue
        problems.append(f"{_built_as(path, layer)}: build it with prefix={path!r}")
    if problems:
        raise CheckpointError(
            f"{len(problems)} quantized layer(s) were built with a prefix that is not their path in the model "
            "(nothing was loaded). Checkpoint tensors are matched by the module path, but the quantization config's "
            "modules_to_not_convert, which says which layers the checkpoint left unquantized, is matched against the "
            "prefix, so a layer with another prefix may be built quantized where the checkpoint stores it unquantized "
            "(or the reverse). Pass prefix=<its path> when building each:\n  " + "\n  ".join(problems)
        )
    return others


def _prefix_hints(misnamed: dict[str, torch.nn.Module], missing, unexpected: list[str], mapping) -> list[str]:
    """For a layer without a quant_config whose prefix is not its path: a hint when its tensors are missing, or when
    the checkpoint's unexpected tensors are named after its prefix."""
    hints = []
    absent = {n.rpartition(".")[0] for n, _ in missing}
    for path, layer in misnamed.items():
        named = layer.prefix and any(n.startswith(layer.prefix + ".") for n in unexpected)
        if path in absent or named:
            hints.append(f"{_built_as(path, layer)}, but checkpoint tensors are matched by the module path "
                         f"({path}.<parameter>); if the checkpoint names the layer {layer.prefix!r}, place it at that "
                         f"path in the model; otherwise build it with prefix={path!r}")
    return hints


def _fused_name_hints(model: torch.nn.Module, missing, unexpected: list[str], mapping) -> list[str]:
    """For a fused layer whose parameters are missing while the checkpoint holds unexpected tensors of sibling
    modules with the same parameter names (``to_q/to_k/to_v.weight`` beside ``to_qkv``): the mapping entry to add."""
    absent = {n for n, parts in missing if parts is None}
    hints = []
    for path, layer in _linear_layers(model):
        if not _is_fused(layer) or path.rpartition(".")[2] in mapping:
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
        order = "" if ordered else f" (put them in the layer's shard order: {_order(layer)})"
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


def _is_fused(module: torch.nn.Module) -> bool:
    from fastvideo_quant.layers.column import _FusedColumnLinear  # Merged and QKV: the layers that take shard ids

    return isinstance(module, _FusedColumnLinear)


def default_weight_loader(param: torch.nn.Parameter, loaded_weight: TensorLike) -> None:
    """Copy a whole tensor into a parameter that has no ``weight_loader`` (shape-checked)."""
    copy_checked(param.data, loaded_weight, "parameter")


def _meta_twin(param: torch.nn.Parameter | torch.Tensor) -> torch.Tensor:
    """A parameter of the same class and attributes whose data is a meta tensor (shapes only); for a buffer, a meta
    tensor of its shape and dtype."""
    data = torch.empty_like(param.data, device="meta")
    if not isinstance(param, torch.nn.Parameter):
        return data
    cls = type(param)
    twin = torch.nn.Parameter(data, requires_grad=False) if cls is torch.nn.Parameter else cls.__new__(cls, data)
    twin.__dict__.update(param.__dict__)
    return twin


def _call_loader(param: torch.nn.Parameter, tensor: TensorLike, shard_id: object,
                 owner: torch.nn.Module | None = None, target: str = "parameter") -> None:
    if not isinstance(param, torch.nn.Parameter):
        # A persistent buffer: copied whole (shape and dtype kind checked), never through a layer's weight_loader
        # (_target_for gives buffers no shard id; every rank holds the whole buffer).
        copy_checked(param, tensor, f"{target} (persistent buffer)")
        return
    loader = getattr(param, "weight_loader", None)
    # default_weight_loader copies whole tensors: no fused shard to place, no rank's slice to take
    if loader is None and (shard_id is not None or getattr(owner, "tp_size", 1) > 1):
        raise PluginError(_no_loader_message(owner, shard_id))
    if loader is None:
        loader = lambda p, t: copy_checked(p.data, t, target)  # noqa: E731 - default_weight_loader, named
    if shard_id is None:
        loader(param, tensor)
    else:
        loader(param, tensor, shard_id)


def _no_loader_message(owner: torch.nn.Module | None, shard_id: object) -> str:
    """Why a parameter without ``weight_loader`` cannot take a fused layer's shard, naming the method's plugin."""
    from fastvideo_quant.plugins.manager import describe_method_owner

    config = getattr(owner, "quant_config", None)
    method = type(getattr(owner, "quant_method", None)).__name__
    whose = f" of {describe_method_owner(type(config))}" if config is not None else ""
    what = (f"place shard {shard_id!r} of this fused layer" if shard_id is not None else
            f"take this rank's slice of it over the layer's {owner.tp_size} tensor-parallel ranks")
    return (f"the parameter has no weight_loader, so nothing can {what}; "
            f"{method}.create_weights{whose} must give every parameter the layer's weight_loader "
            "(set_weight_attrs(param, extra_weight_attrs), or a fastvideo_quant.parameter class built with "
            "weight_loader=extra_weight_attrs['weight_loader'])")


def _refuse_processed(model: torch.nn.Module) -> None:
    """A ModelStateError, before anything is read, when processing failed on a layer of ``model`` (it may be partly
    converted), or when every layer was processed: there is nothing left that a checkpoint may write into."""
    layers = quant_layers(model)
    refuse_failed(layers, "load_checkpoint: ", "loaded again")
    done = [n for n, m in layers if getattr(m, "_fvq_weights_processed", False)]
    if layers and len(done) == len(layers):
        raise ModelStateError(
            f"load_checkpoint: the model was already loaded and processed: {len(done)} layer(s) ({names(done, limit=3)}) have "
            "been through process_weights_after_loading (_fvq_weights_processed), so their parameters are in the "
            f"kernel format and cannot take checkpoint tensors. {_LATER_LOADS}"
        )


#: What a later load may do, said the same way wherever a load is refused for processed layers.
_LATER_LOADS = (
    "A later load may write only into layers not processed yet (those a strict=False load left incomplete). Build a "
    "fresh model to load another checkpoint (to load one model from several checkpoints that split its tensors, pass "
    "strict=False, process_weights=False to every load_checkpoint but the last; the last, strict by default, refuses "
    "what no load provided and processes the model)"
)


def _refuse_meta(model: torch.nn.Module) -> None:
    """A model built under ``torch.device("meta")`` (shape inference, empty init) has no memory to load into: one
    error naming its meta parameters and the step that gives it memory, before any tensor is read."""
    meta = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if meta:
        raise ModelStateError(
            f"load_checkpoint: the model's tensors {names(meta, limit=3)} are on the meta device (built under "
            "torch.device('meta')), with no memory to load into; materialize them first with "
            "model.to_empty(device=...) (our layers come back as fresh builds on that device), then load"
        )


def _refuse_writes_into_processed(path, model, plan, unexpected, owners, mapping) -> set[int]:
    """The ids of the processed layers of ``model``; a ModelStateError naming those this checkpoint would write into
    (a tensor for one of their parameters, or named after one of their modules): they are in the kernel format."""
    processed = {id(m): label for label, m in quant_layers(model) if getattr(m, "_fvq_weights_processed", False)}
    if not processed:
        return set()
    paths = {path_: processed[id(m)] for path_, m in model.named_modules() if id(m) in processed}
    part_of = {part: fused for fused, parts in mapping.items() for part in parts}
    hit: dict[str, list[str]] = {}
    for name, target, _, _, _ in plan:
        if id(owners[target]) in processed:
            hit.setdefault(processed[id(owners[target])], []).append(name)
    for name in unexpected:
        parent, _, last = name.rpartition(".")[0].rpartition(".")
        module = f"{parent}.{part_of.get(last, last)}".lstrip(".")
        if module in paths:
            hit.setdefault(paths[module], []).append(name)
    if hit:
        listed = "; ".join(f"{layer!r} ({names(tensors, limit=3)})" for layer, tensors in sorted(hit.items()))
        raise ModelStateError(
            f"load_checkpoint: checkpoint {str(path)!r} holds tensors for {len(hit)} layer(s) that were already "
            f"processed: {listed}; their parameters are in the kernel format (_fvq_weights_processed) and cannot take "
            f"checkpoint tensors, so nothing was loaded. {_LATER_LOADS}"
        )
    return set(processed)


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    packed_modules_mapping: dict[str, list[str]] | None = None,
    strict: bool = True,
    process_weights: bool = True,
) -> LoadReport:
    """Load a safetensors checkpoint into ``model``; CheckpointError lists every problem at once.

    Nothing is written while any problem is found: two sources for one parameter, mis-shaped
    tensors and loader rejections always; missing and unexpected tensors with ``strict``.

    :param packed_modules_mapping: fused module → checkpoint modules; defaults to the
        model's ``packed_modules_mapping`` attribute, else q/k/v → qkv_proj, gate/up → gate_up_proj.
    :param strict: report missing and unexpected tensors as errors (mis-shaped ones always are).
        With ``strict=False`` they are listed in the returned :class:`LoadReport` (``missing``,
        ``unexpected``) and in a :class:`~fastvideo_quant.errors.CheckpointWarning`; a missing parameter
        keeps what it held (uninitialised memory in a freshly built model), and a layer with a missing
        parameter is not processed (``LoadReport.unprocessed``) and its forward raises NotProcessedError until
        the parameter is set and :func:`process_weights_after_loading` runs, or a later load writes it (a later
        load may write only into layers not processed yet; it then processes them).
    :param process_weights: run :func:`process_weights_after_loading` once the tensors are written.
        A layer is processed once: a load that would write into a processed layer (or into a model whose layers
        were all processed) is a ModelStateError, before anything is written. To load one model from
        checkpoints that split its tensors, pass ``strict=False, process_weights=False`` to every load but the
        last: the last load's ``strict`` check (and ``LoadReport.missing``) counts what the earlier loads wrote,
        so it refuses (or reports) only what no load provided.
    """
    _refuse_processed(model)
    _refuse_meta(model)
    files = checkpoint_files(path)
    _check_declared_method(model, path)
    mapping, source = _mapping_and_source(model, packed_modules_mapping)
    _check_mapping(model, mapping, source)
    misnamed = _check_prefixes(model)
    reverse = {part: (fused, i) for fused, parts in mapping.items() for i, part in enumerate(parts)}
    params = dict(model.named_parameters())
    buffers = _persistent_buffers(model)
    targets = {**params, **buffers}  # what a checkpoint tensor may load into
    owners = {n: model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model for n in targets}

    with contextlib.ExitStack() as stack:
        handles = [(f, stack.enter_context(open_safetensors(f))) for f in files]
        plan: list[tuple[str, str, object, object, Path]] = []
        unexpected: list[str] = []
        stored: dict[str, torch.dtype | None] = {}  # every checkpoint tensor's dtype
        for file, handle in handles:
            for name in handle.keys():
                target = _target_for(name, params, owners, reverse, buffers)
                stored[name] = SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype())
                if target is None:
                    unexpected.append(name)
                else:
                    plan.append((name, target[0], target[1], handle, file))
        unexpected.sort()
        processed = _refuse_writes_into_processed(path, model, plan, unexpected, owners, mapping)
        # What no load will have written: not this one, nor an earlier one with process_weights=False.
        seen = _shards_written(params, owners)
        for _, target, shard_id, _, _ in plan:
            seen.setdefault(target, set()).add(shard_id)
        missing = [m for m in _missing(params, owners, mapping, seen) if id(owners[m[0]]) not in processed]
        problems = _conflicting_sources(plan)
        if strict:
            problems += [f"unexpected tensor {n!r}: no parameter of the model takes it"
                         f"{_plain_attribute(model, n)}{_non_persistent(model, n)}" for n in unexpected]
            problems += _missing_problems(missing, mapping)
            problems += _stored_unquantized(unexpected, stored, missing, owners, mapping)
            problems += _prefix_hints(misnamed, missing, unexpected, mapping)
            problems += _fused_name_hints(model, missing, unexpected, mapping)
        problems = _stored_quantized(plan, stored, owners) + problems
        problems += _rehearse(plan, targets, owners, mapping)
        problems += _overflows(plan, targets)
        if problems:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit the model ({len(problems)} problem(s); nothing was loaded):\n  "
                + "\n  ".join(problems)
            )
        loaded = _write(plan, targets, owners, path)

    absent: dict[int, list[str]] = {}
    for name, parts in missing:
        absent.setdefault(id(owners[name]), []).append(repr(name) + (f" (parts {parts})" if parts else ""))
    # A layer with a missing parameter refuses forward until it is set and processed; one that an earlier load left
    # incomplete and this load completed is released.
    incomplete = []
    for layer_label, module in quant_layers(model):
        if id(module) in absent:
            mark_unloaded(module, layer_label, absent[id(module)])
            incomplete.append(layer_label)
        else:
            clear_unloaded(module)
    report = LoadReport(loaded, files, missing=[n for n, _ in missing],
                        missing_parts={n: parts for n, parts in missing if parts},
                        unexpected=unexpected, unprocessed=incomplete if process_weights else [])
    if missing or unexpected:
        _warn_incomplete(path, report, process_weights, [n for n in unexpected if _non_persistent(model, n)])
    if process_weights:
        process(model, skip=set(absent))
    return report


def lazy_slice(handle, name: str, shape_only: bool = False) -> LazyTensor:
    """A LazyTensor over tensor ``name`` of an open safetensors file (``shape_only``: reads nothing, ever)."""
    sl = handle.get_slice(name)
    shape = tuple(sl.get_shape())
    dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
    source = _MetaSource(dtype) if shape_only else sl
    return LazyTensor(source, shape, name, dtype)


class _MetaSource:
    """Stands in for a safetensors slice in the rehearsal: indexing yields a meta tensor of that shape."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype or torch.float32

    def __getitem__(self, index) -> torch.Tensor:
        if index is Ellipsis:
            return torch.empty((), dtype=self.dtype, device="meta")
        return torch.empty(tuple(s.stop - s.start for s in index), dtype=self.dtype, device="meta")


def _source(name: str, shard_id: object, file: Path) -> str:
    return f"{name!r} in {file.name}" + (" (whole)" if shard_id is None else f" (shard {shard_id!r})")


def _conflicting_sources(plan) -> list[str]:
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


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _shards_written(params, owners) -> dict[str, set]:
    """Parameter → shard ids written by every load so far (kept on the owning module across loads)."""
    seen = {}
    for name in params:
        got = getattr(owners[name], "_fvq_loaded_shards", {}).get(_leaf(name))
        if got:
            seen[name] = set(got)
    return seen


def _fused_parts(name: str, mapping) -> list[str] | None:
    """The checkpoint modules fused into parameter ``name``'s layer (``qkv_proj.weight`` → q/k/v_proj), or None."""
    return mapping.get(name.rsplit(".", 2)[-2]) if "." in name else None


def _missing(params, owners, mapping, seen: dict[str, set]) -> list[tuple[str, list[str] | None]]:
    """``(parameter, absent checkpoint parts or None when wholly absent)`` for each parameter ``seen`` lacks."""
    missing = []
    for name, param in params.items():
        got = seen.get(name)
        if got is None and getattr(param, "checkpoint_optional", False):
            continue  # the method fills it when the checkpoint has none (e.g. a default format code)
        parts = _fused_parts(name, mapping)
        if got is None:
            missing.append((name, None))
        elif _is_fused(owners[name]) and None not in got:
            # The layer's shards, not the mapping's length, say what is complete (_check_mapping made them agree).
            absent = [i for i, s in enumerate(shard_ids(owners[name])) if s not in got]
            if absent:
                missing.append((name, [parts[i] if parts and i < len(parts) else f"shard {i}" for i in absent]))
    return missing


def _missing_problems(missing, mapping) -> list[str]:
    problems = []
    for name, absent in missing:
        if absent is None:
            parts = _fused_parts(name, mapping)
            problems.append(f"missing tensor for parameter {name!r}" + (f" (or its parts {parts})" if parts else ""))
        else:
            problems.append(f"missing parts {absent} of fused parameter {name!r}")
    return problems


def _persistent_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent buffers by name (those of its ``state_dict``): a checkpoint tensor of that name loads into
    one, checked like a parameter. Non-persistent ones are left out (not in the state_dict)."""
    found = {}
    for path, module in model.named_modules():
        for leaf, buffer in module._buffers.items():
            if buffer is not None and leaf not in module._non_persistent_buffers_set:
                found.setdefault(f"{path}.{leaf}" if path else leaf, buffer)
    return found


def _non_persistent(model: torch.nn.Module, name: str) -> str:
    """Why a tensor's name matches nothing when the module holds a non-persistent buffer of that name."""
    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return ""
    if module._buffers.get(leaf) is None or leaf not in module._non_persistent_buffers_set:
        return ""
    return (f" ({name} is a buffer the model marks non-persistent, "
            "register_buffer(..., persistent=False): it is not in the model's state_dict, so no checkpoint tensor loads "
            "into it; register it persistent to load it, or leave the tensor out of the checkpoint)")


def _plain_attribute(model: torch.nn.Module, name: str) -> str:
    """Why a tensor's name matches no parameter when the module holds a plain tensor attribute of that name: its
    method's ``create_weights`` set it without registering it (a parameter is what loads)."""
    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return ""
    if leaf in module._parameters or not isinstance(vars(module).get(leaf), torch.Tensor):
        return ""
    method = type(getattr(module, "quant_method", None)).__name__
    return (f" ({path or 'the model'}.{leaf} is a plain tensor attribute, not a registered parameter: "
            f"{method}.create_weights must register it, layer.register_parameter({leaf!r}, Parameter(..., "
            "requires_grad=False)) with the layer's weight_loader)")


def _stored_unquantized(unexpected: list[str], stored: dict, missing, owners, mapping) -> list[str]:
    """What explains a quantized layer's missing parameters when the checkpoint holds the module's float
    ``.weight`` instead: the module was left unquantized by the tool that wrote it (AutoAWQ does not list such
    modules in its config), so the model must build it unquantized. Only for a weight stored as a float wider than
    8 bits with no other tensor of its module but a bias (a float8 weight, or one with a scale, is quantized)."""
    incomplete = {n.rpartition(".")[0]: owners[n] for n, _ in missing}
    part_of = {part: fused for fused, parts in mapping.items() for part in parts}
    found: dict[str, list[str]] = {}
    modules_of = {}
    for name in stored:
        modules_of.setdefault(name.rpartition(".")[0], set()).add(name.rpartition(".")[2])
    for name in unexpected:
        module, _, leaf = name.rpartition(".")
        dtype = stored.get(name)
        if leaf != "weight" or dtype is None or not dtype.is_floating_point or dtype.itemsize == 1:
            continue
        if modules_of[module] - {"weight", "bias"}:
            continue  # stored with quantization companions (a scale, zeros): quantized, by another method
        parent, _, last = module.rpartition(".")
        layer_name = f"{parent}.{part_of[last]}".lstrip(".") if last in part_of else module
        if layer_name in incomplete:
            found.setdefault(layer_name, []).append(name)
    hints = []
    for layer_name, tensors in found.items():
        config = getattr(incomplete[layer_name], "quant_config", None)
        method = f"a quantized {config.get_name()!r} layer" if config is not None else "a quantized layer"
        hints.append(
            f"module {layer_name!r} is stored unquantized ({', '.join(map(repr, tensors))}), but the model built it as "
            f"{method}: add {layer_name!r} to the quantization config's modules_to_not_convert (tools such as "
            "AutoAWQ leave modules they did not quantize out of their config), or build that layer with "
            "quant_config=None"
        )
    return hints


def _stored_quantized(plan, stored: dict, owners) -> list[str]:
    """What explains float8/integer weights refused by quantized layers built to quantize float weights on load (a
    config whose :attr:`~QuantizationConfig.quantized_checkpoint_keys` are not set): the checkpoint was written
    quantized and nothing in it declares its method (a config.json would have been caught up front), so the layers
    need the config it was written with. One line a config, naming the modules."""
    found: dict[str, tuple[object, list[str], set]] = {}
    for name, target, _, _, _ in plan:
        config = getattr(owners[target], "quant_config", None)
        dtype = stored.get(name)
        if _leaf(target) != "weight" or config is None or dtype is None or dtype.is_floating_point and dtype.itemsize > 1:
            continue
        if not type(config).quantized_checkpoint_keys or config.reads_quantized_checkpoint():
            continue
        _, modules, dtypes = found.setdefault(repr(config.to_dict()), (config, [], set()))
        module = target.rpartition(".")[0]
        if module not in modules:
            modules.append(module)
        dtypes.add(str(dtype))
    hints = []
    for config, modules, dtypes in found.values():
        cls = type(config)
        try:
            written = cls.from_config({**config.to_dict(), **cls.quantized_checkpoint_keys}).to_dict()
            build = f"quant_config=resolve_quant_config(hf_config={{'quantization_config': {written!r}}})"
        except Exception:  # noqa: BLE001 - the hint then names the keys only
            build = f"a {config.get_name()!r} config with {_settings(cls)}"
        hints.append(
            f"modules {names(modules, limit=3)} are stored quantized (their weight is {', '.join(sorted(dtypes))}), "
            f"but the model built them as {config.get_name()!r} layers that quantize float weights on load, and the "
            "checkpoint declares no method (no config.json quantization_config). Build the layers with the config it "
            f"was written with ({_settings(cls)}): {build} (from fastvideo_quant.quantization), or put its "
            "config.json back and use resolve_quant_config(checkpoint=path)"
        )
    return hints


def _warn_incomplete(path, report: LoadReport, process_weights: bool, non_persistent: list[str]) -> None:
    lines = []
    if report.missing:
        shown = names(report.missing, lambda n: repr(n) + (f" (parts {report.missing_parts[n]})"
                                                            if n in report.missing_parts else ""))
        lines.append(f"{len(report.missing)} parameter(s) of the model were not loaded and keep what they held "
                     f"(uninitialised memory in a freshly built model): {shown}")
    if report.unexpected:
        lines.append(f"{len(report.unexpected)} tensor(s) of the checkpoint were ignored (no parameter takes them): "
                     f"{names(report.unexpected)}")
        if non_persistent:
            lines.append(f"{len(non_persistent)} of them are named after buffers the model marks non-persistent "
                         f"(register_buffer(..., persistent=False): not in its state_dict, so they load nothing): "
                         f"{names(non_persistent)}")
    if report.unprocessed:
        lines.append(f"{len(report.unprocessed)} layer(s) with missing parameters were not processed: "
                     f"{names(report.unprocessed)}; copy their parameters in and call process_weights_after_loading(model), "
                     "or load a checkpoint that holds them (and no tensor of a layer already processed) with "
                     "load_checkpoint(model, path), which writes and processes them (their forward raises "
                     "NotProcessedError until then)")
    elif report.missing and not process_weights:
        lines.append("process_weights_after_loading was not run (process_weights=False)")
    warnings.warn(
        f"load_checkpoint(strict=False) of {str(path)!r}: " + "; ".join(lines)
        + ". LoadReport.missing / .unexpected / .unprocessed list them all",
        CheckpointWarning, stacklevel=3,
    )


#: Checkpoint tensors up to this many elements are read for real in the rehearsal (format codes,
#: scalar scales: loaders may look at their values); larger ones are rehearsed by shape only.
REHEARSE_WITH_DATA_NUMEL = 4096


def _rehearse(plan, params, owners, mapping) -> list[str]:
    """Run every load into meta twins of the parameters; collect every failure without touching the model.

    Any exception is a problem to report: a loader that cannot be rehearsed cannot be
    trusted not to fail half-way through the real load either.
    """
    problems = []
    twins = {target: _meta_twin(params[target]) for _, target, _, _, _ in plan}
    for name, target, shard_id, handle, file in plan:
        tensor = lazy_slice(handle, name, shape_only=True)
        if tensor.numel() <= REHEARSE_WITH_DATA_NUMEL:
            tensor = lazy_slice(handle, name)
        try:
            with _standing_in(owners[target], _leaf(target), twins[target]):
                _call_loader(twins[target], tensor, shard_id, owners[target], target)
        except Exception as exc:  # noqa: BLE001 - every failure is reported with the others
            problems.append(f"tensor {name!r} ({file.name}) → {target!r}"
                            + (f" shard {shard_id!r}" if shard_id is not None else "") + f": {kind(exc)}{exc}"
                            + _order_hint(name, tensor, params[target], owners[target], shard_id, mapping))
    return problems


@contextlib.contextmanager
def _standing_in(owner: torch.nn.Module, leaf: str, twin: torch.nn.Parameter):
    """Register ``twin`` as ``owner.<leaf>`` for one rehearsed load: the layer finds it among its parameters, so
    its messages name the parameter (``qkv_proj.weight``, not ``qkv_proj.parameter``). Always put back."""
    params = owner._parameters
    if params.get(leaf) is None:
        yield
        return
    real = params[leaf]
    params[leaf] = twin
    try:
        yield
    finally:
        params[leaf] = real


def _order_hint(name: str, tensor: TensorLike, param, layer, shard_id: object, mapping) -> str:
    """Why a part went to the wrong shard, when its size is another shard's: ``packed_modules_mapping`` is positional."""
    from fastvideo_quant.layers.base import storage_units

    dim = getattr(param, "output_dim", None)
    if shard_id is None or dim is None or tensor.dim() <= dim:
        return ""
    try:
        sizes = {sid: storage_units(param, dim, 0, layer._shard_geometry(sid)[3])[1] for sid in shard_ids(layer)}
    except Exception:  # noqa: BLE001 - only a hint: no hint when the sizes cannot be told
        return ""
    fits = [sid for sid, size in sizes.items() if size == tensor.shape[dim]]
    if sizes[shard_id] == tensor.shape[dim] or not fits:
        return ""
    module = name.rpartition(".")[0].rpartition(".")[2]
    fused = layer.prefix.rpartition(".")[2] if layer.prefix else "?"
    parts = next((p for f, p in mapping.items() if module in p and (f == fused or fused == "?")), None)
    where = f" at position {parts.index(module)} of packed_modules_mapping[{fused!r}] {list(parts)}" if parts else ""
    return (f" ({module!r} is{where}, so it loads into shard {shard_id!r}, but its size fits shard(s) "
            f"{', '.join(map(repr, fits))}: the mapping is positional, list the checkpoint modules in the layer's "
            f"shard order: {_order(layer)})")


def _narrowing(source: torch.dtype | None, target: torch.dtype) -> bool:
    """Whether casting floats of ``source`` to ``target`` can overflow (bf16/float32 → float16); float8 targets
    are left to their loaders, which check their own range."""
    if source is None or not source.is_floating_point or not target.is_floating_point:
        return False
    if target.itemsize == 1:
        return False
    return torch.finfo(target).max < torch.finfo(source).max


def _overflows(plan, params) -> list[str]:
    """Checkpoint tensors with finite values that become inf when cast to their parameter's narrower float dtype
    (a bf16 bias of 1e6 in a float16 model): the checkpoint is fine, the model's dtype cannot hold it. Read only for
    such casts; reported with the other problems, before anything is written."""
    problems = []
    for name, target, _, handle, file in plan:
        dtype = params[target].dtype
        tensor = lazy_slice(handle, name, shape_only=True)
        if not _narrowing(tensor.dtype, dtype) or tensor.numel() == 0:
            continue
        count, largest = _overflow(lazy_slice(handle, name), dtype)
        if not count:
            continue
        problems.append(
            f"tensor {name!r} ({file.name}) → {target!r}: {count} finite value(s) of the checkpoint's "
            f"{tensor.dtype} become inf when cast to the parameter's {dtype} (largest magnitude {largest:.4g}; "
            f"{dtype}'s max is {torch.finfo(dtype).max:.6g}). The checkpoint is not corrupt: the model's dtype cannot "
            f"hold its values; build the model in torch.bfloat16 or torch.float32 (params_dtype), or rescale the tensor"
        )
    return problems


#: Elements read at once by the overflow check (bounds its memory on large tensors).
OVERFLOW_CHUNK_NUMEL = 1 << 22


def _overflow(tensor: LazyTensor, dtype: torch.dtype) -> tuple[int, float]:
    """(finite values becoming inf when cast to ``dtype``, the largest finite magnitude), read in row chunks."""
    if tensor.dim() == 0:
        chunks = [materialize(tensor).reshape(1)]
    else:
        rows = max(1, OVERFLOW_CHUNK_NUMEL // max(1, tensor.numel() // tensor.shape[0]))
        chunks = (materialize(tensor.narrow(0, i, min(rows, tensor.shape[0] - i))) for i in range(0, tensor.shape[0], rows))
    count, largest = 0, 0.0
    for chunk in chunks:
        values = chunk.float()
        finite = torch.isfinite(values)
        count += int((finite & torch.isinf(values.to(dtype))).sum())
        if finite.any():
            largest = max(largest, values[finite].abs().max().item())
    return count, largest


def _write(plan, params, owners, path) -> dict[str, list[object]]:
    """The real load, after every check passed. A failure here (an I/O error, a loader rejecting the values of a
    large tensor) names the parameters already written: nothing is processed, so loading again overwrites them."""
    loaded: dict[str, list[object]] = {}
    for name, target, shard_id, handle, file in plan:
        try:
            _call_loader(params[target], lazy_slice(handle, name), shard_id, owners[target], target)
        except Exception as exc:
            written = sorted(set(loaded) | {target})
            raise CheckpointError(
                f"checkpoint {str(path)!r}: writing tensor {name!r} ({file.name}) into {target!r}"
                + (f" shard {shard_id!r}" if shard_id is not None else "")
                + f" failed after every check had passed: {kind(exc)}{exc}. The model is partly loaded: "
                f"{len(written)} parameter(s) may hold this checkpoint's values ({names(written)}), the others do not, "
                "and no layer was processed. Fix the cause and load again (a complete load writes every parameter), "
                "or build a fresh model"
            ) from exc
        loaded.setdefault(target, []).append(shard_id)
        owner = owners[target]
        if "_fvq_loaded_shards" not in vars(owner):
            owner._fvq_loaded_shards = {}
            owner._fvq_loaded_from = {}  # parameter → shard id → checkpoint tensor name (for error locations)
        owner._fvq_loaded_shards.setdefault(_leaf(target), set()).add(shard_id)
        owner._fvq_loaded_from.setdefault(_leaf(target), {})[shard_id] = name
    return loaded


def read_tensor(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """One tensor from a checkpoint (for tools and tests)."""
    for f in checkpoint_files(path):
        with open_safetensors(f) as handle:
            if name in handle.keys():
                return materialize(lazy_slice(handle, name))
    raise CheckpointError(f"tensor {name!r} is not in checkpoint {str(path)!r}")
