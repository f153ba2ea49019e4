"""Hints for tensors stored quantized where the model built the layers otherwise: unquantized, to quantize float
weights on load, or with another method (by dtype: float8, int8; by name: AWQ's ``qweight``); and tensors stored as
``torch.bool``, which no method writes (a corrupt checkpoint)."""

from __future__ import annotations

import torch

from fastvideo_quant.loader.hints.fused import mixed_parts_hints
from fastvideo_quant.loader.hints.probe import (
    _parameter_names,
    _quantized,
    _quantized_config,
    _stored_weight_dtype,
    methods_storing,
)
from fastvideo_quant.loader.hints.undeclared import (
    Undeclared,
    _beside_fix,
    _build_with_default,
    _contradicted,
    _declared_fix,
    settings_of,
)
from fastvideo_quant.loader.targets import leaf_name, linear_layers
from fastvideo_quant.processing import (
    names,
)
from fastvideo_quant.quantization.base import as_model_shows


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


def other_methods_tensors(model: torch.nn.Module, unexpected: list[str], mapping, why: Undeclared, plan=(),
                          mixed=None) -> list[str]:
    """One line for layers whose checkpoint tensors are another method's parameters by name (AWQ's ``qweight``,
    ``qzeros``, ``scales``, which neither an unquantized nor an fp8 layer has): which loaded method's layers have
    exactly those parameters, and the config to build with. Where the checkpoint declares a method: that its skip list
    or its config groups left them unquantized (also for tensors no default config takes by name, compressed-tensors'
    ``weight_packed``, when no weight of theirs was loaded), or, where the model built them with the declared method
    and another method's layers have those parameters (or, alone, some of them: int8's ``SCB``), that the declaration
    is not the tensors'. ``plan``: the load's, whose weights say which layers took one. A fused layer whose parts
    the checkpoint stores some float, some quantized (``mixed``: :func:`mixed_fused_parts`) is told that instead."""
    leaves: dict[str, set[str]] = {}
    for name in unexpected:
        module, _, leaf = name.rpartition(".")
        if module and leaf != "bias":
            leaves.setdefault(as_model_shows(module, mapping), set()).add(leaf)
    if not leaves:
        return []
    layers = dict(linear_layers(model))
    found = {m: found for m, found in leaves.items() if m in layers}
    mixed = mixed or {}
    hints = mixed_parts_hints([m for m in found if m in mixed], mixed, mapping)
    found = {m: leaves_of for m, leaves_of in found.items() if m not in mixed}
    if not found:
        return hints
    return hints + _other_methods_line(found, layers, why, plan)


def _other_methods_line(found: dict[str, set[str]], layers: dict, why: Undeclared, plan) -> list[str]:
    """:func:`other_methods_tensors`' line for the layers of ``found`` (module → the leaves stored for it)."""
    from fastvideo_quant.plugins.manager import get_registry

    first = sorted(found)[0]
    layer = layers[first]
    built = layer.quant_config.get_name() if layer._quantized() else None
    candidates, partly = {}, {}
    for name, reg in sorted(get_registry().by_name.items()):
        config = _quantized_config(reg.config_cls) if name != built else None
        takes = _parameter_names(config, layer) if config is not None else set()
        if takes and found[first] == takes:
            candidates[name] = config
        elif takes and found[first] < takes:  # (the rest of its parameters are the built layer's too: weight)
            partly[name] = config
    whose = "the parameters of"
    if not candidates and why.declared is not None and built == why.declared and len(partly) == 1:
        candidates, whose = partly, "parameters of"  # (int8's SCB beside an fp8 layer's weight: one method has them)
    modules = sorted(m for m, leaves_of in found.items() if leaves_of == found[first])
    if not candidates:
        weighed = {t.rpartition(".")[0] for _, t, _, _, _ in plan if leaf_name(t) == "weight"}
        left = [layers[m] for m in modules if m not in weighed]  # (a weight loaded: _unquantized_given_quantized's)
        return _declared_method_left(found[first], left, why) if left else []
    held = f"{', '.join(sorted(found[first]))} ({whose} {' or '.join(map(repr, candidates))} layers)"
    stored = (f"modules {names(modules, limit=3)} are stored as {held}, but the model built them "
              + (f"as {built!r} layers" if built else "unquantized") + f", {why.clause}")
    if why.declared is not None:
        if why.declared in candidates and not built:
            return [stored + _declared_fix(why, [layers[m] for m in modules])]
        if built == why.declared:  # (the declaration is another method's than the tensors')
            name, config = next(iter(candidates.items()))
            declared = why.source.read.source if why.source is not None and why.source.read is not None else \
                "the checkpoint's declaration"
            return [f"modules {names(modules, limit=3)} are stored with {held}, but {declared} declares {built!r}, "
                    f"and the model built them as {built!r} layers from it: the declaration is not the one these tensors were "
                    f"written with. Replace its quantization_config with theirs (for {name!r} with its default "
                    f"settings: {config.to_dict()!r}; its settings, such as a group size, must be the checkpoint's), "
                    "or load the checkpoint that declaration was written for"]
        return []
    name, config = next(iter(candidates.items()))
    return [stored + ": " + (_beside_fix("them", name, why) or _build_with_default("them", name, config)
                             + f" (its settings, such as a group size, must be the checkpoint's){why.put_back}")]


def stored_quantized(plan, stored: dict, owners, why: Undeclared, shapes=None, mapping=None,
                     mixed=None) -> list[str]:
    """What explains float8/integer weights refused by quantized layers built to quantize float weights on load (a
    config whose :attr:`~QuantizationConfig.quantized_checkpoint_keys` are not set): the checkpoint was written
    quantized and nothing in it declares its method (a config.json would have been caught up front), so the layers
    need the config it was written with — the declaration beside a file given alone, else the layers' settings with
    those keys set and those the stored tensors (``shapes``: name → (dtype, shape)) imply. One line a config, naming
    the modules. An unquantized fused layer whose parts are stored some float, some quantized is told so instead
    (taking it out of the skip list would refuse its float parts; ``mixed``: :func:`mixed_fused_parts`)."""
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
    mixed = mixed or {}
    hints = _corrupt_tensors(plan, stored, owners) + mixed_parts_hints([m for m in plain if m in mixed], mixed, mapping)
    plain = {m: dtypes for m, dtypes in plain.items() if m not in mixed}
    hints += _unquantized_given_quantized(plain, plan, owners, why, shapes)
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


def _declared_method_left(leaves: set[str], layers: list[torch.nn.Module], why: Undeclared) -> list[str]:
    """For tensors no default config's layers take by name (compressed-tensors' ``weight_packed``), stored for layers
    the model built unquantized with the method the checkpoint declares: its skip list left them. (The built-in
    compressed-tensors readers refuse a layer no config group targets when it is built.)"""
    config = getattr(layers[0], "quant_config", None)
    if why.declared is None or layers[0]._quantized() or config is None or config.get_name() != why.declared:
        return []
    return [f"modules {names([layer.prefix for layer in layers], limit=3)} are stored as {', '.join(sorted(leaves))}, "
            f"which no unquantized layer takes, but the model built them unquantized, {why.clause}"
            + _declared_fix(why, layers)]
