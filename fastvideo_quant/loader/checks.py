"""Refusals before any tensor is written, each one error: a processed or meta model, a checkpoint declaring a method
the layers were not built with, a ``packed_modules_mapping`` entry that does not fit its fused layer, a quantized
layer whose prefix is not its path, a load writing into processed layers."""

from __future__ import annotations

import torch

from fastvideo_quant.errors import CheckpointError, CheckpointWarning, ModelStateError, warn_at_caller
from fastvideo_quant.loader.diagnose import built_as, settings_of
from fastvideo_quant.loader.files import declaring_directory
from fastvideo_quant.loader.hints.probe import _quantized
from fastvideo_quant.loader.targets import is_fused, linear_layers, shard_ids, shard_order
from fastvideo_quant.processing import (
    names,
    quant_layers,
    refuse_failed,
)
from fastvideo_quant.quantization.base import as_model_shows, weights_processed


def refuse_processed(model: torch.nn.Module) -> None:
    """A ModelStateError, before anything is read, when processing failed on a layer of ``model`` (it may be partly
    converted), or when every layer was processed: there is nothing left that a checkpoint may write into."""
    layers = quant_layers(model)
    refuse_failed(layers, "load_checkpoint: ", "loaded again")
    done = [n for n, m in layers if weights_processed(m)]
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


def refuse_meta(model: torch.nn.Module) -> None:
    """A model built under ``torch.device("meta")`` (shape inference, empty init) has no memory to load into: one
    error naming its meta parameters and the step that gives it memory, before any tensor is read."""
    meta = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if meta:
        raise ModelStateError(
            f"load_checkpoint: the model's tensors {names(meta, limit=3)} are on the meta device (built under "
            "torch.device('meta')), with no memory to load into; materialize them first with "
            "model.to_empty(device=...) (our layers come back as fresh builds on that device), then load"
        )


#: How the note of :func:`note_unsharded` begins: what its ``warnings`` filter matches.
UNSHARDED_NOTE = "load_checkpoint: every linear layer of the model was built at TP size 1"


def note_unsharded(model: torch.nn.Module) -> None:
    """A :class:`CheckpointWarning` when the current tensor-parallel group has several ranks but every linear layer of
    ``model`` was built at TP size 1 — built before ``init_process_group`` (or outside the group), so every rank holds
    and loads the whole weights. Only a note: a model replicated on purpose (data parallel) is built so, and the load
    is right for it; the layers keep the TP size they were built with."""
    from fastvideo_quant.distributed import get_tensor_model_parallel_world_size
    from fastvideo_quant.errors import ShardingError

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    layers = linear_layers(model)
    try:
        size = get_tensor_model_parallel_world_size()
    except ShardingError:  # (a group destroyed, or not this rank's: the load's own checks say so, naming the layer)
        return
    if size <= 1 or not layers or any(getattr(layer, "tp_size", 1) > 1 for _, layer in layers):
        return
    warn_at_caller(
        f"{UNSHARDED_NOTE} ({len(layers)} layer(s): {names([n for n, _ in layers], limit=3)}), while torch.distributed "
        f"is initialised and the tensor-parallel group has {size} ranks: every rank holds and loads the layers' whole "
        "weights. A layer takes its TP size when it is built, so these were built before init_process_group (or "
        "outside the group). That is right for a model replicated on purpose (data parallel): silence this note with "
        f"warnings.filterwarnings('ignore', message={UNSHARDED_NOTE!r}, category=CheckpointWarning). To shard them, "
        "build the model after init_process_group (or inside fastvideo_quant.distributed.tp_group(group), or after "
        "set_tp_group(group)), then load (docs/guide/tensor-parallelism.md)",
        CheckpointWarning,
    )


def check_declared_method(model: torch.nn.Module, path) -> list:
    """A CheckpointError, before any tensor is read, when the checkpoint directory declares a quantization method
    (its config.json's quantization_config, or a method file) that the model's layers were not built with: another
    method, none, or the same method set up to quantize float weights on load (a ``quantized_checkpoint_keys``
    setting) while the checkpoint stores them quantized. Tensor by tensor it would be dozens of lines. Returns the
    declarations read (empty when none, or when they could not be read), for the hints of a load that fails later."""
    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.quantization.selection import checkpoint_declarations

    layers = quant_layers(model)
    directory = declaring_directory(path)
    if not layers or directory is None:
        return []
    try:
        declarations = checkpoint_declarations(directory)
    except FastVideoQuantError as exc:  # (resolve_quant_config raises it; the tensors are still checked one by one)
        warn_at_caller(
            f"load_checkpoint: could not read checkpoint {str(path)!r}'s quantization declaration, so whether it "
            f"matches the layers' method was not checked: {exc}", CheckpointWarning,
        )
        return []
    if not declarations or declarations[0].method in ("unquantized", "none"):
        return declarations
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
            f"checkpoint's config: quant_config=resolve_quant_config(checkpoint={str(directory)!r}) "
            "(from fastvideo_quant.quantization), then load again"
        )
    return declarations


def _built_differently(declared, built: dict[str, list[str]], layers) -> str | None:
    """How the model's layers differ from the checkpoint's declaration, for the message; None when they do not."""
    if not built:
        return f"the model's {len(layers)} layer(s) ({names([n for n, _ in layers], limit=3)}) were built " \
               "without a quant_config (unquantized)"
    others = {m: n for m, n in built.items() if m != declared.method}
    if others:
        quantized = {n for n, m in layers if _quantized(m, default=True)}
        return "the model's layers were built with " + "; ".join(
            built_with(m, n, quantized) for m, n in sorted(others.items()))
    config = next(m.quant_config for _, m in layers if getattr(m, "quant_config", None) is not None)
    try:
        stored = type(config).from_config(dict(declared.section))
    except Exception:  # noqa: BLE001 - a section its own config cannot read is reported when it is resolved
        return None
    if stored.reads_quantized_checkpoint() and not config.reads_quantized_checkpoint():
        return (f"the model's {declared.method!r} layers were built to quantize float weights on load, while the "
                f"checkpoint stores them quantized ({settings_of(type(config))})")
    return None


def built_with(method: str, layers: list[str], quantized: set[str]) -> str:
    """``'awq' (9 layer(s): ...; 1 more ... left unquantized ...)``: the ``layers`` built with a config of ``method``,
    counting only those it quantized (in ``quantized``) as its layers — its skip list gives the others the unquantized
    method, so they take a float checkpoint's tensors — and naming the others apart."""
    took = [n for n in layers if n in quantized]
    left = [n for n in layers if n not in quantized]
    if not took:
        return f"{method!r} ({len(left)} layer(s), all left unquantized by it: {names(left, limit=3)})"
    also = (f"; {len(left)} more built with it but left unquantized by its skip list: "
            f"{names(left, limit=3)}") if left else ""
    return f"{method!r} ({len(took)} layer(s): {names(took, limit=3)}{also})"


def check_mapping(model: torch.nn.Module, mapping: dict[str, list[str]], source: str) -> None:
    """A CheckpointError, before anything is read, for each fused layer whose mapping entry lists another number of
    checkpoint modules than the layer has shards: fewer would leave a shard unwritten, more have no shard to go to."""
    problems = []
    for path, module in model.named_modules():
        parts = mapping.get(path.rpartition(".")[2]) if path else None
        if parts is None or not is_fused(module):
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
                        f"(the position in the list is the shard: {shard_order(module)})")
    if problems:
        raise CheckpointError("packed_modules_mapping does not fit the model's fused layers (nothing was loaded):\n  "
                              + "\n  ".join(problems))


def check_prefixes(model: torch.nn.Module, checkpoint_names=(), mapping=None) -> dict[str, torch.nn.Module]:
    """A CheckpointError, before any tensor is written, listing each layer built with a quant_config whose ``prefix``
    is not its module path (nor ends with it: a sub-model's layers may carry the outer model's full path):
    checkpoint tensors are matched by the path, but the config's ``modules_to_not_convert`` (which layers stay
    unquantized) by the prefix, so the layer may be quantized against the checkpoint's word. When the layers are
    the submodule's whose own checkpoint this is (every path ``<sub>.<prefix>``, and ``checkpoint_names``, renamed
    as the load renames them, lack ``<sub>.``), the error says to load into that submodule instead. Returns the
    mismatched layers without a quant_config (only a hint, where their tensors are missing)."""
    problems, others = [], {}
    for path, layer in linear_layers(model):
        # A sub-model loaded on its own (its checkpoint keyed from it) keeps the full prefix of the outer model:
        # skip lists matching whole dotted components (or substrings) match it alike; one matching whole names
        # (fp8's, as vLLM and compressed-tensors read them) may not, and then the layer was built otherwise.
        if layer.prefix == path:
            continue
        if layer.prefix.endswith("." + path):
            differs = _skipped_otherwise(layer, path)
            if differs:
                problems.append(differs)
            continue
        if getattr(layer, "quant_config", None) is None:
            others[path] = layer
            continue
        problems.append(f"{built_as(path, layer)}: build it with prefix={path!r}")
    if problems and (sub := _submodule_checkpoint(model, checkpoint_names, mapping)):
        raise CheckpointError(
            f"{len(problems)} quantized layer(s) were built with a prefix that is not their path in the model, but "
            f"every layer's path is {sub + '.'!r} + its prefix ({_first_example(model)}) and the checkpoint's tensor "
            f"names lack {sub + '.'!r}: it is the checkpoint of submodule {sub!r}, and the layers' prefixes are already "
            f"its names; nothing was loaded. Load into that submodule: load_checkpoint(model.get_submodule({sub!r}), "
            "path)"
        )
    if problems:
        raise CheckpointError(
            f"{len(problems)} quantized layer(s) were built with a prefix that is not their path in the model "
            "(nothing was loaded). Checkpoint tensors are matched by the module path, but the quantization config's "
            "modules_to_not_convert, which says which layers the checkpoint left unquantized, is matched against the "
            "prefix, so a layer with another prefix may be built quantized where the checkpoint stores it unquantized "
            "(or the reverse). Pass prefix=<its path> when building each:\n  " + "\n  ".join(problems)
        )
    return others


def _submodule_checkpoint(model: torch.nn.Module, checkpoint_names, mapping) -> str | None:
    """``sub`` when every linear layer's path is ``<sub>.<its prefix>`` (one ``sub`` for all), no checkpoint name
    starts with ``<sub>.`` and some name is a layer's prefix (a fused layer's parts by ``mapping``): the checkpoint
    is that submodule's own, so the fix is to load into it, not to rebuild the layers. Else None."""
    subs, prefixes = set(), set()
    for path, layer in linear_layers(model):
        if not layer.prefix or not path.endswith("." + layer.prefix):
            return None
        subs.add(path[:-len(layer.prefix) - 1])
        prefixes.add(layer.prefix)
    if len(subs) != 1:
        return None
    sub = subs.pop()
    names_ = list(checkpoint_names)
    if any(n.startswith(sub + ".") for n in names_):
        return None
    return sub if any(as_model_shows(n.rpartition(".")[0], mapping) in prefixes for n in names_) else None


def _first_example(model: torch.nn.Module) -> str:
    """``layer at path 'a.b' has prefix 'b'``: the first linear layer, as an example for messages."""
    path, layer = linear_layers(model)[0]
    return f"layer at path {path!r} has prefix {layer.prefix!r}"


def _skipped_otherwise(layer: torch.nn.Module, path: str) -> str | None:
    """For a layer whose prefix carries an outer path: the problem when its config's skip list decides its path (the
    checkpoint's name for it) otherwise than its prefix (a skip rule matching whole names), else None."""
    config = getattr(layer, "quant_config", None)
    if config is None:
        return None
    try:
        by_path, by_prefix = config.is_layer_skipped(path), config.is_layer_skipped(layer.prefix)
    except Exception:  # noqa: BLE001 - a skip list refused for a fused layer's parts: reported when it was built
        return None
    if by_path == by_prefix:
        return None
    said = "skips" if by_path else "does not skip"
    return (f"{built_as(path, layer)}: the skip list ({config.skip_list_key()}) {said} {path!r}, the checkpoint's "
            f"name for it, but matches {config.get_name()!r} entries to whole names, so for the prefix it decided "
            f"otherwise and built it {'quantized' if by_path else 'unquantized'}: build it with prefix={path!r} "
            "(names as the checkpoint has them)")


def refuse_writes_into_processed(path, model, plan, unexpected, owners, mapping) -> set[int]:
    """The ids of the processed layers of ``model``; a ModelStateError naming those this checkpoint would write into
    (a tensor for one of their parameters, or named after one of their modules): they are in the kernel format."""
    processed = {id(m): label for label, m in quant_layers(model) if weights_processed(m)}
    if not processed:
        return set()
    paths = {path_: processed[id(m)] for path_, m in model.named_modules() if id(m) in processed}
    hit: dict[str, list[str]] = {}
    for name, target, _, _, _ in plan:
        if id(owners[target]) in processed:
            hit.setdefault(processed[id(owners[target])], []).append(name)
    for name in unexpected:
        module = as_model_shows(name.rpartition(".")[0], mapping)
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
