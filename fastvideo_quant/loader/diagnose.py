"""Hints that say why a tensor is missing or unexpected, for the load's error: a layer's prefix, a fused layer's
missing mapping entry, a positional mapping in the wrong order, a module stored unquantized (or quantized) against
how the model built it, a plain tensor attribute or a non-persistent buffer where a parameter was expected."""

from __future__ import annotations

import dataclasses
import math
import os
import re

import torch

from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.loader.config_source import (
    ONE_FILE,
    ConfigSource,
    beside_settings_line,
    config_source,
    put_in_config_json,
    quantize_first,
    where_to_set,
)
from fastvideo_quant.loader.targets import is_fused, leaf_name, linear_layers, shard_ids, shard_order
from fastvideo_quant.processing import (
    names,
)
from fastvideo_quant.quantization.base import as_model_shows


def _quantized(module: torch.nn.Module, default: bool = False) -> bool:
    """Whether ``module`` is a quantized linear layer (``LinearBase._quantized``); ``default`` for another module."""
    check = getattr(module, "_quantized", None)
    return check() if check is not None else default


@dataclasses.dataclass(frozen=True)
class Undeclared:
    """Why the layers a hint names were not built with the checkpoint's method, for its wording: ``clause`` follows
    "the model built them ...", ``declared`` is the method the checkpoint's config declares (None: none was read), and
    ``source`` what the load read of it (for one file: the declaration beside it, which the fix names instead of a
    default config); :attr:`put_back` ends the "build with the config it was written with" fix."""

    clause: str
    declared: str | None = None
    source: ConfigSource | None = None

    @property
    def put_back(self) -> str:
        """The other way to that config: the checkpoint's config.json (none where one was read; none for one file whose
        directory declares a method, which the fix then names itself)."""
        source = self.source
        if self.declared is not None or source is None:
            return ""
        if not source.one_file:
            return ", or put its config.json back and use resolve_quant_config(checkpoint=path)"
        if source.beside is not None:
            return ""
        return f", or {put_in_config_json(source, 'the quantization_config it was written with')}"


def undeclared(path, declarations: list) -> Undeclared:
    """:class:`Undeclared` for a load of ``path``: its config declares a method (``declarations``, from
    :func:`~fastvideo_quant.loader.checks.check_declared_method`), it is one file (whose directory's config.json a load
    does not read), or a directory that declares none."""
    source = config_source(path, declarations)
    if declarations:
        d = declarations[0]
        return Undeclared(f"though {d.source} declares {d.method!r}", d.method, source)
    if source.one_file:
        return Undeclared(f"and {ONE_FILE} (a load of a file reads none, even one beside it)", None, source)
    return Undeclared("and the checkpoint declares no method (no config.json quantization_config)", None, source)


def _beside_fix(who: str, name: str, why: Undeclared) -> str | None:
    """For one file whose directory declares method ``name``: build ``who`` with that declaration (it is the config the
    checkpoint was written with, where a default config's settings may not be); else None."""
    beside = why.source.beside if why.source is not None else None
    if beside is None or beside.method != name:
        return None
    return (f"build {who} with the config it was written with, which {beside.source} beside the file declares: "
            f"quant_config=resolve_quant_config(checkpoint={why.source.directory!r}) (from fastvideo_quant.quantization)")


def _contradicted(config, shapes) -> str:
    """What the stored tensors (``shapes``: name → (dtype, shape)) imply against a suggested ``config``'s settings (its
    :meth:`~QuantizationConfig.stored_tensor_hints`: per-channel scales against a default per-tensor config), as a
    clause after the suggested call; "" when they fit it or cannot tell."""
    try:
        found = [h for h in config.stored_tensor_hints(shapes or {}) or () if isinstance(h, str)]
    except Exception:  # noqa: BLE001 - only a hint: it must never hide the load's own error
        return ""
    return f" with the setting(s) its stored tensors imply changed in it ({'; '.join(found)})" if found else ""


def _build_with_default(who: str, name: str, config) -> str:
    """``build {who} with the config it was written with, e.g. ...``: method ``name``'s default ``config`` (one that
    reads its quantized checkpoints) as the call to make."""
    return (f"build {who} with the config it was written with, e.g. for {name!r} with its default settings "
            f"quant_config=resolve_quant_config(hf_config={{'quantization_config': {config.to_dict()!r}}})")


def settings_of(cls) -> str:
    """A config class's :attr:`~QuantizationConfig.quantized_checkpoint_keys`, as ``key=value`` for messages."""
    return ", ".join(f"{k}={v!r}" for k, v in cls.quantized_checkpoint_keys.items())


def built_as(path: str, layer: torch.nn.Module) -> str:
    prefix = f"prefix {layer.prefix!r}" if layer.prefix else "no prefix (prefix='')"
    return f"layer at path {path!r} ({type(layer).__name__}) was built with {prefix}"


def prefix_hints(misnamed: dict[str, torch.nn.Module], missing, unexpected: list[str], mapping) -> list[str]:
    """For a layer without a quant_config whose prefix is not its path: a hint when its tensors are missing, or when
    the checkpoint's unexpected tensors are named after its prefix."""
    hints = []
    absent = {n.rpartition(".")[0] for n, _ in missing}
    for path, layer in misnamed.items():
        named = layer.prefix and any(n.startswith(layer.prefix + ".") for n in unexpected)
        if path in absent or named:
            hints.append(f"{built_as(path, layer)}, but checkpoint tensors are matched by the module path "
                         f"({path}.<parameter>); if the checkpoint names the layer {layer.prefix!r}, place it at that "
                         f"path in the model; otherwise build it with prefix={path!r}")
    return hints


#: Tensor names of attention scales that fp8 exporters write beside the linear layers' (vLLM reads them into its
#: attention's KV cache: AutoFP8's ``kv_cache_scheme: static``, llm-compressor's ``kv_cache_scheme``).
KV_SCALE_LEAVES = ("k_scale", "v_scale", "q_scale", "prob_scale", "kv_scale")


def kv_scale_hint(unexpected: list[str]) -> list[str]:
    """One line for unexpected KV-cache / attention scales: no linear layer takes them."""
    found = [n for n in unexpected if n.rpartition(".")[2] in KV_SCALE_LEAVES]
    if not found:
        return []
    return [f"{len(found)} unexpected tensor(s) are attention scales ({names(found, limit=3)}: a kv_cache_scheme in "
            "the checkpoint's config), which vLLM loads into its attention's KV cache: no linear layer takes them. "
            "Give your attention modules those parameters, or load with strict=False (the LoadReport lists them as "
            "unexpected)"]


def name_prefix_hints(unexpected: list[str], missing, mapping, loaded=()) -> list[str]:
    """One line when most of the checkpoint's unexpected tensors are the model's missing ones under a name prefix that
    one side has and the other lacks (``model.diffusion_model.`` on a ComfyUI/original export, ``transformer.`` on a
    model whose DiT is a submodule): the rename that fixes the whole load, instead of one line a tensor only. A rename
    (or submodule) is suggested only when it leaves the checkpoint's tensors that already load (``loaded``) as they
    are: where only some names lack the prefix, a pattern anchored on those names, else examples of both kinds."""
    if not unexpected or not missing:
        return []
    wanted = {n for n, _ in missing}

    def model_name(name: str) -> str:  # a checkpoint name as the model shows it (a fused layer's parts by mapping)
        module, _, leaf = name.rpartition(".")
        return f"{as_model_shows(module, mapping)}.{leaf}" if module else leaf

    best = None
    for extra_on_checkpoint in (True, False):
        counts: dict[str, int] = {}
        if extra_on_checkpoint:
            for name in unexpected:
                parts = name.split(".")
                for k in range(1, len(parts)):
                    prefix = ".".join(parts[:k]) + "."
                    if model_name(name[len(prefix):]) in wanted:
                        counts[prefix] = counts.get(prefix, 0) + 1
        else:
            shown = {model_name(n) for n in unexpected}
            for name in wanted:
                parts = name.split(".")
                for k in range(1, len(parts)):
                    prefix = ".".join(parts[:k]) + "."
                    if name[len(prefix):] in shown:
                        counts[prefix] = counts.get(prefix, 0) + 1
        for prefix, count in counts.items():
            if best is None or count > best[2] or count == best[2] and len(prefix) < len(best[1]):
                best = (extra_on_checkpoint, prefix, count)
    if best is None or best[2] * 2 < min(len(unexpected), len(wanted)):
        return []
    on_checkpoint, prefix, count = best
    escaped = re.escape(prefix)
    loaded = list(loaded)
    if on_checkpoint:
        if any(n.startswith(prefix) for n in loaded):  # (the rename would move tensors that load now)
            return []
        return [f"{count} of the checkpoint's {len(unexpected)} unexpected tensor(s) are the model's missing parameters "
                f"under the name prefix {prefix!r}, which the model's names lack: load with param_names_mapping="
                f"{{r'^{escaped}(.*)$': r'\\1'}} (drops it)"]
    module = prefix.rstrip(".")
    said = (f"{count} of the model's {len(wanted)} missing parameter(s) are the checkpoint's unexpected tensors under "
            f"the name prefix {prefix!r}, which the checkpoint's names lack")
    if not loaded:
        return [f"{said}: load into that submodule, load_checkpoint(model.get_submodule({module!r}), path), or load with "
                f"param_names_mapping={{r'^(.*)$': r'{prefix}\\1'}}"]
    lacking = sorted(n for n in unexpected if prefix + model_name(n) in wanted)
    pattern = _anchored_pattern(lacking, loaded)
    others = (f"while {len(loaded)} other tensor(s) of the checkpoint load as they are ({names(sorted(loaded), limit=3)}), "
              f"so a rename of every name, or loading into submodule {module!r}, would lose those")
    if pattern is not None:
        return [f"{said} on only some tensors ({names(lacking, limit=3)}), {others}: load with param_names_mapping="
                f"{{r'{pattern}': r'{prefix}\\1'}} (adds it to those names only)"]
    return [f"{said} inconsistently: some tensors lack it ({names(lacking, limit=3)}), {others}, and no pattern on the "
            f"first name component tells the two apart: add {prefix!r} to the names that lack it in the checkpoint, or "
            "give param_names_mapping an entry for each"]


def _anchored_pattern(lacking: list[str], loaded: list[str]) -> str | None:
    """A ``param_names_mapping`` pattern capturing the whole name that matches every name in ``lacking`` and none in
    ``loaded``, by their first dotted component (``\\d+`` when all are block indices), or None."""
    firsts = sorted({n.split(".", 1)[0] for n in lacking})
    if all(f.isdigit() for f in firsts):
        alternatives = r"\d+"
    elif len(firsts) <= 8:
        alternatives = "|".join(map(re.escape, firsts))
        alternatives = f"(?:{alternatives})" if len(firsts) > 1 else alternatives
    else:
        return None
    pattern = rf"^({alternatives}\..*)$"
    matches = re.compile(pattern).match
    if all(matches(n) for n in lacking) and not any(matches(n) for n in loaded):
        return pattern
    return None


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


def non_persistent_hint(model: torch.nn.Module, name: str) -> str:
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


def plain_attribute_hint(model: torch.nn.Module, name: str, mapping: dict[str, list[str]] | None = None) -> str:
    """Why a tensor's name matches no parameter when the module holds a plain tensor attribute of that name: its
    method's ``create_weights`` set it without registering it (a parameter is what loads). A fused layer's part
    (``q_proj.weight_scale``) is looked up on the fused module ``mapping`` names (``qkv_proj``)."""
    path, _, leaf = name.rpartition(".")
    path = as_model_shows(path, mapping)
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return ""
    if leaf in module._parameters or not isinstance(vars(module).get(leaf), torch.Tensor):
        return ""
    method = type(getattr(module, "quant_method", None)).__name__
    param = ("a fastvideo_quant.parameter class built with weight_loader=extra_weight_attrs['weight_loader'] (its "
             "method is registered with weight_loader_v2=True)" if getattr(module, "uses_weight_loader_v2", False)
             else "Parameter(..., requires_grad=False)) with the layer's weight_loader (set_weight_attrs")
    return (f" ({path or 'the model'}.{leaf} is a plain tensor attribute, not a registered parameter: "
            f"{method}.create_weights must register it, layer.register_parameter({leaf!r}, {param}))")


def stored_unquantized(unexpected: list[str], stored: dict, missing, owners, mapping, plan=(),
                       rename=lambda name: name) -> list[str]:
    """What explains a quantized layer's missing parameters when the checkpoint holds the module's float
    ``.weight`` instead: the module was left unquantized by the tool that wrote it (AutoAWQ does not list such
    modules in its config), so the model must build it unquantized. Only for a weight stored as a float wider than
    8 bits with no other tensor of its module but a bias (a float8 weight, or one with a scale, is quantized). The
    weight is unexpected (AWQ's layers have ``qweight``) or, where the quantized layer's weight has that name (fp8,
    int8), planned into it — the float-into-float8 error and the missing scale then have this one cause. ``rename``:
    the ``param_names_mapping`` in force, so the layer named is the model's (what ``modules_to_not_convert`` matches)."""
    incomplete = {n.rpartition(".")[0]: owners[n] for n, _ in missing
                  if _quantized(owners[n])}  # (an unquantized layer stores a float weight)
    found: dict[str, list[str]] = {}
    modules_of = {}
    for name in stored:
        modules_of.setdefault(name.rpartition(".")[0], set()).add(name.rpartition(".")[2])
    planned = [name for name, target, _, _, _ in plan
               if leaf_name(target) == "weight" and target.rpartition(".")[0] in incomplete]
    for name in [*unexpected, *planned]:
        module, _, leaf = name.rpartition(".")
        dtype = stored.get(name)
        if leaf != "weight" or dtype is None or not dtype.is_floating_point or dtype.itemsize == 1:
            continue
        if modules_of[module] - {"weight", "bias"}:
            continue  # stored with quantization companions (a scale, zeros): quantized, by another method
        layer_name = as_model_shows(rename(name).rpartition(".")[0], mapping)
        if layer_name in incomplete:
            found.setdefault(layer_name, []).append(name)
    quantized = {n.rpartition(".")[0] for n, m in owners.items() if _quantized(m)}
    if found and set(found) >= quantized:
        # every quantized layer, even the only one: a float checkpoint, not one with modules left out — a skip list
        # naming them all would quantize nothing (settings_hints says how to quantize it on load)
        return []
    hints = []
    for layer_name, tensors in found.items():
        config = getattr(incomplete[layer_name], "quant_config", None)
        method = f"a quantized {config.get_name()!r} layer" if config is not None else "a quantized layer"
        key = config.skip_list_key() if config is not None else "modules_to_not_convert"
        fix = _config_mapping_fix(layer_name, config, mapping) or (
            f"add {layer_name!r} to the quantization config's skip list ({key}; tools such as AutoAWQ leave "
            "modules they did not quantize out of their config), or build that layer with quant_config=None")
        hints.append(f"module {layer_name!r} is stored unquantized ({', '.join(map(repr, tensors))}), but the model "
                     f"built it as {method}: {fix}")
    return hints


def _config_mapping_fix(layer_name: str, config, mapping) -> str:
    """The fix when the config's skip list names the fused layer's parts but the config does not know the fused name
    (its packed_modules_mapping is the default one, the model's fuses other names): "" otherwise."""
    leaf = layer_name.rpartition(".")[2]
    parts = mapping.get(leaf)
    known = getattr(config, "packed_modules_mapping", None)
    if not parts or known is None or list(known.get(leaf, ())) == list(parts):
        return ""
    base = layer_name[: len(layer_name) - len(leaf)]
    try:
        if not all(config.is_layer_skipped(base + part) for part in parts):  # (its rule: patterns too)
            return ""
    except Exception:  # noqa: BLE001 - a skip list the config refuses for a part: no hint from it
        return ""
    return (f"the quantization config's skip list names its parts {[base + p for p in parts]}, but the config's "
            f"packed_modules_mapping has no {leaf!r} entry (the model's has: {leaf!r} → {list(parts)}), so it could "
            f"not tell that {leaf!r} is made of them and built it quantized. Give the config the model's mapping "
            "before building the model: resolve_quant_config(..., packed_modules_mapping=<Model>."
            "packed_modules_mapping), or quant_config.packed_modules_mapping.update(...)")


def _quantized_config(cls, config=None):
    """The config of ``cls`` that reads its quantized checkpoints (``config``'s settings with
    ``quantized_checkpoint_keys`` set), or None when it cannot be built."""
    if not cls.quantized_checkpoint_keys and cls.online_quantization:
        return None
    try:
        base = config.to_dict() if config is not None else {"quant_method": cls.get_name()}
        return cls.from_config({**base, **cls.quantized_checkpoint_keys})
    except Exception:  # noqa: BLE001 - a config that cannot be built so: no hint from it
        return None


def _meta_layer(config, module) -> torch.nn.Module | None:
    """A ReplicatedLinear built with ``config`` on meta (nothing allocated): of ``module``'s sizes, else of 4096 x 4096
    (a default config's group size or alignment may not fit a small layer; names and dtypes do not depend on it)."""
    from fastvideo_quant.layers.linear import ReplicatedLinear

    for sizes in ((module.input_size, module.output_size), (4096, 4096)):
        try:
            with torch.device("meta"):
                return ReplicatedLinear(*sizes, bias=False, quant_config=config,
                                        params_dtype=getattr(module, "params_dtype", None))
        except Exception:  # noqa: BLE001 - a method that cannot build this shape: try the other
            continue
    return None


def _stored_weight_dtype(config, module) -> torch.dtype | None:
    """The dtype of the ``weight`` a layer of ``module``'s sizes built with ``config`` reads (on meta: nothing is
    allocated), or None (no ``weight``: AWQ's ``qweight``; or the layer cannot be built)."""
    layer = _meta_layer(config, module)
    if layer is None:
        return None
    weight = layer._parameters.get("weight")
    return weight.dtype if weight is not None else None


def methods_storing(dtype: torch.dtype, module) -> dict[str, object]:
    """The loaded methods whose quantized checkpoints store a ``weight`` of ``dtype`` for a layer of ``module``'s
    sizes (``fp8`` for float8_e4m3fn, ``int8`` for int8), each with its default config that reads them."""
    from fastvideo_quant.plugins.manager import get_registry

    found = {}
    for name, reg in sorted(get_registry().by_name.items()):
        config = _quantized_config(reg.config_cls)
        if config is not None and _stored_weight_dtype(config, module) == dtype:
            found[name] = config
    return found


def _declared_fix(why: Undeclared, layers: list[torch.nn.Module]) -> str:
    """Why ``layers`` were built unquantized although the checkpoint's config declares its method, and the fix: a
    layer given a config was left unquantized by its skip list, or — a compressed-tensors config — because no config
    group targets it (the skip list does not name it); one without a config was built with no quant_config."""
    given = [layer for layer in layers if getattr(layer, "quant_config", None) is not None]
    skipped = [layer for layer in given if _skip_list_names(layer)]
    untargeted = [layer for layer in given if layer not in skipped]

    def them(some: list[torch.nn.Module]) -> str:
        return "them" if len(some) == len(layers) else names([layer.prefix for layer in some], limit=3)

    causes = []
    if skipped:
        key = skipped[0].quant_config.skip_list_key()
        causes.append(f"the config's skip list ({key}) names {them(skipped)}: the checkpoint stores them as "
                      f"{why.declared!r}, so take them out of {key} (or re-export the checkpoint with them unquantized)")
    if untargeted:
        causes.append(_untargeted_fix(why, untargeted, them(untargeted)))
    bare = [layer for layer in layers if layer not in given]
    if bare:
        causes.append(f"the model built {them(bare)} without quant_config=: give them the model's quant_config")
    return ": " + "; ".join(causes)


def _skip_list_names(layer: torch.nn.Module) -> bool:
    """Whether the skip list of ``layer``'s config names it (by the prefix it was built with)."""
    try:
        return bool(layer.quant_config.is_layer_skipped(layer.prefix))
    except Exception:  # noqa: BLE001 - a skip list the config refuses for this layer: it is the skip list's doing
        return True


def _untargeted_fix(why: Undeclared, layers: list[torch.nn.Module], who: str) -> str:
    """For layers a config built unquantized though its skip list does not name them: a compressed-tensors config
    whose config groups target none of them (a checkpoint that quantized modules beyond its groups' targets: ``fvq
    quantize`` wrote such ones before it followed the targets); the targets listed are the declared section's, the one
    to edit, else the layers' config's."""
    from fastvideo_quant.quantization.compressed_tensors import describe_targets, group_targets, is_compressed_tensors

    declared = why.source.read if why.source is not None else None
    section = getattr(declared, "section", None)
    if not (isinstance(section, dict) and is_compressed_tensors(section)):
        section = layers[0].quant_config.to_dict()
    key = layers[0].quant_config.skip_list_key()
    if not is_compressed_tensors(section):
        return (f"the config built {who} unquantized though its skip list ({key}) does not name them: the checkpoint "
                f"stores them as {why.declared!r}, so build them with a config that quantizes them")
    where = f"in {declared.source}" if declared is not None else "in the config"
    return (f"no config group's targets name {who} ({describe_targets(group_targets(section))}; the skip list, {key}, does not "
            "either: compressed-tensors leaves a module no group targets in float): the checkpoint stores them as "
            f"{why.declared!r}, so add them to a group's targets {where} (their names, or an 're:' pattern), or "
            "re-export the checkpoint with them unquantized")


def _unquantized_given_quantized(plain: dict[str, set], plan, owners, why: Undeclared, shapes=None) -> list[str]:
    """One line for unquantized layers whose checkpoint weights are stored quantized (float8, int8): where the
    checkpoint declares its method, that its skip list or the model left them unquantized; else the methods whose
    checkpoints store such weights, and the config to build with (the declaration beside a file given alone, or a
    default config with the settings its tensors, ``shapes``, imply)."""
    if not plain:
        return []
    modules = sorted(plain)
    dtypes = sorted({d for ds in plain.values() for d in ds}, key=str)
    stored = (f"modules {names(modules, limit=3)} are stored quantized (their weight is {', '.join(map(str, dtypes))}), "
              f"but the model built them unquantized, {why.clause}")
    layers = {t.rpartition(".")[0]: owners[t] for _, t, _, _, _ in plan if t.rpartition(".")[0] in plain}
    if why.declared is not None:
        return [stored + _declared_fix(why, [layers[m] for m in modules])]
    others = {n: c for d in dtypes for n, c in methods_storing(d, layers[modules[0]]).items()}
    fix = f"build them with the config it was written with{why.put_back}"
    if others:
        name, config = next(iter(others.items()))
        fix = f"{' or '.join(map(repr, others))} checkpoints store such weights: " + (
            _beside_fix("them", name, why)
            or _build_with_default("them", name, config) + _contradicted(config, shapes) + why.put_back)
    return [f"{stored}: {fix}"]


def _parameter_names(config, module) -> frozenset[str]:
    """The parameters (and buffers) a layer of ``module``'s sizes built with ``config`` registers, bias aside (on
    meta); empty when it cannot be built."""
    layer = _meta_layer(config, module)
    if layer is None:
        return frozenset()
    return frozenset(n for n, _ in [*layer.named_parameters(), *layer.named_buffers()])


def other_methods_tensors(model: torch.nn.Module, unexpected: list[str], mapping, why: Undeclared) -> list[str]:
    """One line for layers whose checkpoint tensors are another method's parameters by name (AWQ's ``qweight``,
    ``qzeros``, ``scales``, which neither an unquantized nor an fp8 layer has): which loaded method's layers have
    exactly those parameters, and the config to build with (where the checkpoint declares that method: that its skip
    list or the model left them unquantized)."""
    leaves: dict[str, set[str]] = {}
    for name in unexpected:
        module, _, leaf = name.rpartition(".")
        if module and leaf != "bias":
            leaves.setdefault(as_model_shows(module, mapping), set()).add(leaf)
    if not leaves:
        return []
    layers = dict(linear_layers(model))
    found = {m: found for m, found in leaves.items() if m in layers}
    if not found:
        return []
    from fastvideo_quant.plugins.manager import get_registry

    first = sorted(found)[0]
    layer = layers[first]
    built = layer.quant_config.get_name() if layer._quantized() else None
    candidates = {}
    for name, reg in sorted(get_registry().by_name.items()):
        config = _quantized_config(reg.config_cls) if name != built else None
        if config is not None and found[first] == _parameter_names(config, layer):
            candidates[name] = config
    if not candidates:
        return []
    modules = sorted(m for m, leaves_of in found.items() if leaves_of == found[first])
    stored = (f"modules {names(modules, limit=3)} are stored as {', '.join(sorted(found[first]))} (the parameters of "
              f"{' or '.join(map(repr, candidates))} layers), but the model built them "
              + (f"as {built!r} layers" if built else "unquantized") + f", {why.clause}")
    if why.declared is not None:
        return [stored + _declared_fix(why, [layers[m] for m in modules])] if why.declared in candidates and not built \
            else []
    name, config = next(iter(candidates.items()))
    return [stored + ": " + (_beside_fix("them", name, why) or _build_with_default("them", name, config)
                             + f" (its settings, such as a group size, must be the checkpoint's){why.put_back}")]


def config_tensor_hints(owners, shapes: dict[str, tuple[torch.dtype | None, tuple[int, ...]]],
                        source: ConfigSource | None = None) -> list[str]:
    """Each layer config's :meth:`~QuantizationConfig.stored_tensor_hints` for the checkpoint's tensors, once a
    config (a hint that raises is left out: it must never hide the load's own error), each config's followed by where
    its settings are for this load (``source``: :func:`~fastvideo_quant.loader.config_source.where_to_set`)."""
    seen, hints = set(), []
    for owner in owners.values():
        config = getattr(owner, "quant_config", None)
        if config is None or id(config) in seen or not _quantized(owner):
            continue
        seen.add(id(config))
        try:
            found = config.stored_tensor_hints(shapes)
        except Exception:  # noqa: BLE001 - see above
            continue
        found = [h for h in found or () if isinstance(h, str) and h not in hints]
        hints += found + ([where_to_set(config, source)] if found and source is not None else [])
    return hints


def stored_quantized(plan, stored: dict, owners, why: Undeclared, shapes=None) -> list[str]:
    """What explains float8/integer weights refused by quantized layers built to quantize float weights on load (a
    config whose :attr:`~QuantizationConfig.quantized_checkpoint_keys` are not set): the checkpoint was written
    quantized and nothing in it declares its method (a config.json would have been caught up front), so the layers
    need the config it was written with — the declaration beside a file given alone, else the layers' settings with
    those keys set and those the stored tensors (``shapes``: name → (dtype, shape)) imply. One line a config, naming
    the modules."""
    found: dict[str, tuple[object, list[str], set]] = {}
    plain: dict[str, set] = {}  # unquantized layers given quantized weights: module → dtypes
    for name, target, _, _, _ in plan:
        config = getattr(owners[target], "quant_config", None)
        dtype = stored.get(name)
        if leaf_name(target) != "weight" or dtype in (None, torch.bool) or dtype.is_floating_point and dtype.itemsize > 1:
            continue  # (a bool weight is no method's format: corrupt_tensors says so)
        if config is None or not _quantized(owners[target], default=True):
            plain.setdefault(target.rpartition(".")[0], set()).add(dtype)
            continue
        if not type(config).quantized_checkpoint_keys or config.reads_quantized_checkpoint():
            continue
        _, modules, dtypes = found.setdefault(repr(config.to_dict()), (config, [], set()))
        module = target.rpartition(".")[0]
        if module not in modules:
            modules.append(module)
        dtypes.add(str(dtype))
    hints = _corrupt_tensors(plan, stored, owners) + _unquantized_given_quantized(plain, plan, owners, why, shapes)
    for config, modules, dtypes in found.values():
        cls = type(config)
        quantized = _quantized_config(cls, config)
        module = next(owners[t] for _, t, _, _, _ in plan if t.rpartition(".")[0] == modules[0])
        reads = _stored_weight_dtype(quantized, module) if quantized is not None else None
        if reads is not None and {str(reads)} != dtypes:
            others = {n: c for d in sorted(dtypes) for n, c in methods_storing(getattr(torch, d.split(".")[-1]),
                                                                             module).items()}
            if others:
                name, other = next(iter(others.items()))
                fix = (f" ({' or '.join(map(repr, others))} checkpoints store such weights): "
                       + (_beside_fix("the layers", name, why) or _build_with_default("the layers", name, other)
                          + _contradicted(other, shapes) + why.put_back))
            else:
                fix = f": build the layers with its config{why.put_back}"
            hints.append(
                f"modules {names(modules, limit=3)} are stored quantized (their weight is {', '.join(sorted(dtypes))}), "
                f"but not in the {config.get_name()!r} method's format (its checkpoints store {reads} weights), "
                f"{why.clause}: it was written by another method{fix}")
            continue
        said = (f"modules {names(modules, limit=3)} are stored quantized (their weight is {', '.join(sorted(dtypes))}), "
                f"but the model built them as {config.get_name()!r} layers that quantize float weights on load, "
                f"{why.clause}. ")
        beside = _beside_fix("the layers", config.get_name(), why)
        if beside is not None:
            hints.append(said + beside[0].upper() + beside[1:])
            continue
        try:
            written = quantized.to_dict()
            build = f"quant_config=resolve_quant_config(hf_config={{'quantization_config': {written!r}}})"
        except Exception:  # noqa: BLE001 - the hint then names the keys only
            build = f"a {config.get_name()!r} config with {settings_of(cls)}"
        hints.append(
            f"{said}Build the layers with the config it was written with ({settings_of(cls)}): {build} (from "
            f"fastvideo_quant.quantization){_contradicted(quantized, shapes) if quantized is not None else ''}"
            f"{why.put_back}"
        )
    return hints


def _corrupt_tensors(plan, stored: dict, owners) -> list[str]:
    """One line for checkpoint tensors stored as torch.bool where the model's tensor is not bool: no method, quantized
    or not, stores a weight, scale or bias so (a mask or a comparison, ``w > 0``, saved in its place): the checkpoint
    is corrupt, not quantized. A bool buffer of the model (a mask) loads from a bool tensor as any buffer does."""
    found = {name: getattr(owners[target], leaf_name(target)).dtype for name, target, _, _, _ in plan
             if stored.get(name) == torch.bool}
    found = {name: dtype for name, dtype in found.items() if dtype != torch.bool}  # (a bool mask buffer loads as one)
    if not found:
        return []

    def wanted(dtype: torch.dtype) -> str:
        return f"a float tensor ({dtype})" if dtype.is_floating_point and dtype.itemsize > 1 else f"a {dtype} tensor"

    expected = sorted({wanted(dtype) for dtype in found.values()})
    return [f"tensor(s) {names(list(found), limit=3)} are stored as torch.bool, which is no weight format, "
            f"quantized or not (a bool holds only True or False): the checkpoint is corrupt, not quantized; expected "
            f"{' or '.join(expected)}, found torch.bool. Export those tensors again from the model they came from, or "
            "download the checkpoint again"]


def settings_hints(path, declarations: list, plan, unexpected: list[str], stored: dict, owners, mapping,
                   source: ConfigSource | None = None) -> list[str]:
    """One line a config that explains why a checkpoint of the layers' method does not fit them, for a load that
    failed tensor by tensor: the checkpoint declares other settings of that method (fp8's ``activation_scheme``
    static, where the layers were built dynamic: an ``input_scale`` each) — for one file, the declaration beside it
    (``source``), which the load does not read —, or declares nothing and stores float weights where the layers read
    a quantized checkpoint (``is_checkpoint_fp8_serialized``, or AWQ, which has no other kind). A setting of
    :attr:`~QuantizationConfig.load_time_keys` is the loader's choice, never a difference."""
    configs: dict[str, tuple[object, list[str]]] = {}
    for target, owner in owners.items():
        config = getattr(owner, "quant_config", None)
        if config is not None and getattr(owner, "quant_method", None) is not None:
            layer = target.rpartition(".")[0]
            _, layers = configs.setdefault(repr(config.to_dict()), (config, []))
            if layer not in layers:
                layers.append(layer)
    hints = []
    source = source or config_source(path, declarations)
    declared = declarations[0] if declarations and declarations[0].method not in ("unquantized", "none") else None
    for config, layers in configs.values():
        cls, name = type(config), config.get_name()
        # (a file's directory against layers built to quantize on load: stored_quantized names that declaration)
        compared = declared or (source.beside if config.reads_quantized_checkpoint() else None)
        differ = _settings_apart(config, compared) if compared is not None and compared.method == name else None
        if differ and compared is declared:
            written, built = differ
            hints.append(
                f"the checkpoint declares {name!r} with {written} ({declared.source}), but the model's {len(layers)} "
                f"layer(s) of that method ({names(layers, limit=3)}) were built with {built}, so their tensors differ: "
                f"build the layers with the checkpoint's config, quant_config=resolve_quant_config(checkpoint="
                f"{str(path)!r}) (from fastvideo_quant.quantization), then load again"
            )
        elif differ:
            hints.append(beside_settings_line(source, name, *differ, layers))
        elif (declared is None or declared.method == name) and config.reads_quantized_checkpoint() and (
                cls.quantized_checkpoint_keys or not cls.online_quantization):
            hints += _float_checkpoint_line(config, layers, declared, source, plan, unexpected, stored, mapping)
    return hints


def _float_checkpoint_line(config, layers: list[str], declared, source: ConfigSource, plan, unexpected: list[str],
                           stored: dict, mapping) -> list[str]:
    """For ``layers`` built with ``config`` to read a quantized checkpoint: the line saying the checkpoint stores their
    weights as floats, with the call that quantizes them on load (or the ``fvq quantize`` command). Where the checkpoint
    declares the method (``declared``), only when every one of them is stored so: with some quantized, the others were
    left out of the config's skip list (:func:`stored_unquantized` says so). A skip list naming them all (the only
    layer of a one-layer model) would quantize nothing, so that is never the advice here."""
    cls, name = type(config), config.get_name()
    found = _float_weights_of(layers, plan, unexpected, stored, mapping)
    if not found or (declared is not None and not set(found.values()) >= set(layers)):
        return []
    floats = ", ".join(sorted({str(stored[n]) for n in found}))
    build = f"build them with quant_config=resolve_quant_config({name!r}) (from fastvideo_quant.quantization)"
    first = quantize_first(source, name)
    stored_as = f" ({settings_of(cls)})" if cls.quantized_checkpoint_keys else ""
    if declared is not None:
        then = f"to quantize it on load, {build}" if cls.online_quantization else \
            f"{first} ({name!r} cannot quantize on load)"
        return [f"the checkpoint declares {name!r} ({declared.source}) but stores the weights of every one of the "
                f"model's {name!r} layers ({names(layers, limit=3)}) as {floats}, none quantized, and those layers "
                f"were built from its config to read a checkpoint stored quantized{stored_as}: it is a float "
                f"checkpoint (a skip list naming them all would quantize nothing). Remove {declared.source} (it "
                f"declares quantized tensors the checkpoint does not hold; a load checks it first), then {then}; or "
                "load the quantized checkpoint that config was written for"]
    fix = (f"to quantize this float checkpoint on load, {build}" if cls.online_quantization else
           f"{name!r} cannot quantize on load: {first}")
    said = (f"{ONE_FILE}, and it stores" if source.one_file else
            "the checkpoint declares no quantization method (no config.json quantization_config) and stores")
    return [f"{said} the weights of the model's {name!r} layers "
            f"({names(layers, limit=3)}) as {floats}, but those layers were built to read a checkpoint stored "
            f"quantized{stored_as}: {fix}"]


def _settings_apart(config, declared) -> tuple[str, str] | None:
    """The settings ``declared`` (a declaration of ``config``'s method) gives otherwise than ``config``, skip lists
    compared as lists of names and load-time keys left out, as ``key=value`` pairs: (declared, config's); None when
    none differ or they cannot be compared."""
    from fastvideo_quant.quantization.selection import settings_apart_from_skip_list

    cls = type(config)
    try:
        declared_config = cls.from_config(dict(declared.section))
    except Exception:  # noqa: BLE001 - a section its own config cannot read is reported when it is resolved
        return None
    written, built = settings_apart_from_skip_list(declared_config), settings_apart_from_skip_list(config)
    if written is None or built is None:
        return None
    skips = (sorted(declared_config.modules_to_not_convert), sorted(config.modules_to_not_convert))
    if skips[0] != skips[1]:  # (compared as lists of names: formats write them under their own keys)
        written["modules_to_not_convert"], built["modules_to_not_convert"] = skips
    keys = [k for k in sorted(set(written) | set(built)) if k not in cls.load_time_keys and written.get(k) != built.get(k)]
    if not keys:
        return None
    return ", ".join(f"{k}={written.get(k)!r}" for k in keys), ", ".join(f"{k}={built.get(k)!r}" for k in keys)


def _float_weights_of(layers: list[str], plan, unexpected: list[str], stored: dict, mapping) -> dict[str, str]:
    """The checkpoint's ``.weight`` tensors stored as floats wider than 8 bits that go to (or, unplanned, are named
    after; a fused layer's parts by ``mapping``) one of ``layers``, each with that layer."""
    module_of = {tensor: target.rpartition(".")[0] for tensor, target, _, _, _ in plan}
    module_of |= {name: as_model_shows(name.rpartition(".")[0], mapping) for name in unexpected}
    wanted = set(layers)
    return {n: module_of[n] for n, dtype in stored.items()
            if n.rpartition(".")[2] == "weight" and dtype is not None and dtype.is_floating_point and dtype.itemsize > 1
            and module_of.get(n) in wanted}
