"""Hints for a checkpoint of the layers' own method that does not fit the config they were built with: other
settings declared (by the checkpoint, or beside a file given alone), float weights where the layers read a quantized
checkpoint (a float checkpoint: quantize it on load, or with ``fvq quantize``), and what a config's
``stored_tensor_hints`` reads off the tensors, with where that setting is for this load."""

from __future__ import annotations

import torch

from fastvideo_quant.loader.config_source import (
    ONE_FILE,
    ConfigSource,
    beside_settings_line,
    config_source,
    online_build,
    quantize_first,
    where_to_set,
)
from fastvideo_quant.loader.hints.probe import _quantized
from fastvideo_quant.loader.hints.undeclared import settings_of
from fastvideo_quant.processing import (
    names,
)
from fastvideo_quant.quantization.base import as_model_shows


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


def settings_hints(path, declarations: list, plan, unexpected: list[str], stored: dict, owners, mapping,
                   source: ConfigSource | None = None) -> list[str]:
    """One line a config that explains why a checkpoint of the layers' method does not fit them, for a load that
    failed tensor by tensor: the checkpoint declares other settings of that method (fp8's ``activation_scheme``
    static, where the layers were built dynamic: an ``input_scale`` each) — for one file, the declaration beside it
    (``source``), which the load does not read —, or declares nothing and stores float weights where the layers read
    a quantized checkpoint (``is_checkpoint_fp8_serialized``, or AWQ, which has no other kind). A setting of
    :attr:`~QuantizationConfig.load_time_keys` is the loader's choice, never a difference."""
    configs: dict[str, tuple[object, list[str]]] = {}
    skipped: dict[str, list[str]] = {}  # (the layers each config's skip list left unquantized, by config)
    for target, owner in owners.items():
        config = getattr(owner, "quant_config", None)
        if config is not None and getattr(owner, "quant_method", None) is not None:
            layer = target.rpartition(".")[0]
            key = repr(config.to_dict())
            _, layers = configs.setdefault(key, (config, []))
            if layer not in layers:
                layers.append(layer)
                if not _quantized(owner):
                    skipped.setdefault(key, []).append(layer)
    hints = []
    source = source or config_source(path, declarations)
    declared = declarations[0] if declarations and declarations[0].method not in ("unquantized", "none") else None
    for key, (config, layers) in configs.items():
        cls, name = type(config), config.get_name()
        # (a file's directory against layers built to quantize on load: stored_quantized names that declaration)
        compared = declared or (source.beside if config.reads_quantized_checkpoint() else None)
        differ = _settings_apart(config, compared) if compared is not None and compared.method == name else None
        # (the layers its skip list left unquantized have the unquantized method: not counted as that method's)
        took = [n for n in layers if n not in skipped.get(key, [])] or layers
        left = [n for n in layers if n not in took]
        also = f"; {len(left)} more left unquantized by its skip list: {names(left, limit=3)}" if left else ""
        if differ and compared is declared:
            written, built = differ
            hints.append(
                f"the checkpoint declares {name!r} with {written} ({declared.source}), but the model's {len(took)} "
                f"layer(s) of that method ({names(took, limit=3)}{also}) were built with {built}, so their tensors differ: "
                f"build the layers with the checkpoint's config, quant_config=resolve_quant_config(checkpoint="
                f"{str(path)!r}) (from fastvideo_quant.quantization), then load again"
            )
        elif differ:
            hints.append(beside_settings_line(source, name, *differ, took))
        elif (declared is None or declared.method == name) and config.reads_quantized_checkpoint() and (
                cls.quantized_checkpoint_keys or not cls.online_quantization):
            hints += _float_checkpoint_line(config, layers, declared, source, plan, unexpected, stored, mapping,
                                            skipped.get(key, []))
    return hints


def _float_checkpoint_line(config, layers: list[str], declared, source: ConfigSource, plan, unexpected: list[str],
                           stored: dict, mapping, skipped: list[str] = ()) -> list[str]:
    """For ``layers`` built with ``config`` to read a quantized checkpoint: the line saying the checkpoint stores their
    weights as floats, with the call that quantizes them on load (or the ``fvq quantize`` command). Where the checkpoint
    declares the method (``declared``), only when every one of them is stored so: with some quantized, the others were
    left out of the config's skip list (:func:`stored_unquantized` says so). A skip list naming them all (the only
    layer of a one-layer model) would quantize nothing, so that is never the advice here."""
    cls, name = type(config), config.get_name()
    layers = [layer for layer in layers if layer not in skipped]  # (the skip list's layers read float weights)
    found = _float_weights_of(layers, plan, unexpected, stored, mapping)
    if not found or (declared is not None and not set(found.values()) >= set(layers)):
        return []
    floats = ", ".join(sorted({str(stored[n]) for n in found}))
    call = online_build(config)
    if call is not None:
        build = f"build them with quant_config={call} (from fastvideo_quant.quantization)"
        if skipped:
            build += f", which leaves {names(skipped, limit=3)} unquantized, as its skip list does now"
    else:  # (settings no section of the method's own format gives on load, such as a compressed-tensors section's)
        build = f"build them with quant_config=resolve_quant_config({name!r}) (from fastvideo_quant.quantization)"
        if skipped:
            build += (f" and set its modules_to_not_convert to {list(skipped)} before building the model, to leave "
                      "those unquantized as its skip list does now")
    first = quantize_first(source, name, config, skipped)
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
