"""Hints for modules stored unquantized (a float ``.weight``, nothing but a bias beside it) where the model built
them quantized: the skip list that should name them (tools such as AutoAWQ leave them out of their config), or the
``packed_modules_mapping`` a config needs to tell that a fused layer is made of the parts its skip list names."""

from __future__ import annotations

from fastvideo_quant.loader.hints.fused import mixed_parts_hints
from fastvideo_quant.loader.hints.probe import _quantized
from fastvideo_quant.loader.targets import leaf_name
from fastvideo_quant.quantization.base import as_model_shows


def stored_unquantized(unexpected: list[str], stored: dict, missing, owners, mapping, plan=(),
                       rename=lambda name: name, mixed=None) -> list[str]:
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
    mixed = mixed or {}
    # (a skip list naming such a layer would leave its quantized parts unreadable: the checkpoint is what is wrong)
    hints = mixed_parts_hints([n for n in found if n in mixed], mixed, mapping)
    for layer_name, tensors in found.items():
        if layer_name in mixed:
            continue
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
