"""Choosing and building a quantization config: by name, from config.json, or from a checkpoint dir."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fastvideo_quant.errors import ConfigError, MethodUnavailableError, PluginError, UnknownMethodError, stops_the_process
from fastvideo_quant.plugins.manager import (
    describe_method,
    describe_method_owner,
    failure_named,
    get_registry,
    unregistered_method_notes,
)
from fastvideo_quant.plugins.registry import LiveNames
from fastvideo_quant.quantization.base import QuantizationConfig
from fastvideo_quant.quantization.compressed_tensors import CT_METHOD, is_compressed_tensors
from fastvideo_quant.quantization.config_keys import SKIP_LIST_KEYS, misspelled_key_error

#: Names of the registered methods, recomputed from the live registry on each use.
QUANTIZATION_METHODS = LiveNames(
    lambda: sorted(get_registry().by_name), name="QUANTIZATION_METHODS",
    derived_from="the method names plugins register (recomputed on every use)",
    register_call="register(MyConfig, MyLinearMethod, weight_loader_v2=...)")

#: Files that quantization tools write beside config.json (AutoAWQ's quant_config.json, AutoGPTQ's
#: quantize_config.json). Found in a checkpoint they declare it quantized even when no loaded plugin reads
#: them, so neither a flag nor an unquantized load can pass over them.
QUANT_CONFIG_FILES = ("quant_config.json", "quantize_config.json")

#: Keys only AutoGPTQ / GPTQModel write in a method file (``quantize_config.json``, which older versions write without
#: ``quant_method``, and which AutoAWQ checkpoints also use): such a file is GPTQ's, whichever plugin reads the name.
GPTQ_ONLY_KEYS = ("desc_act", "damp_percent", "static_groups", "true_sequential")


def get_quantization_config(name: str) -> type[QuantizationConfig]:
    """The config class registered under ``name``. UnknownMethodError listing the available names and the plugins
    that failed to load (or registered nothing); PluginError when two plugins register ``name``."""
    registry = get_registry()
    reg = registry.by_name.get(name)
    if reg is None:
        if name in registry.conflicts:
            raise PluginError(registry.conflict_message(name))
        raise UnknownMethodError(unknown_method_message(f"unknown quantization method {name!r}", name))
    return reg.config_cls


def method_problem(name: str) -> str | None:
    """Why ``name`` cannot be asked for (:func:`get_quantization_config`'s error: unknown, with the close names and
    the plugins that failed to load; or registered by two plugins), or None when it can."""
    from fastvideo_quant.errors import FastVideoQuantError

    try:
        get_quantization_config(name)
    except FastVideoQuantError as exc:
        return str(exc)
    return None


#: The name of the core's default method (layers built with ``quant_config=None``), which ``"none"`` selects.
UNQUANTIZED = "unquantized"


def method_config_class(name: str) -> type[QuantizationConfig]:
    """The config class that builds method ``name``: :func:`get_quantization_config`'s, except that ``unquantized``
    always resolves, as layers built with ``quant_config=None`` always run it: with no plugin registering the name
    (``FVQ_PLUGINS`` / ``FVQ_DISABLE_PLUGINS`` left the built-in plugin out) it is the core's default, the
    ``fvq_unquantized`` package those layers take their method from."""
    registry = get_registry()
    if name == UNQUANTIZED and name not in registry.by_name and name not in registry.conflicts:
        from fvq_unquantized import UnquantizedConfig

        return UnquantizedConfig
    return get_quantization_config(name)


def unknown_method_message(lead: str, name: str, checkpoint_folder: str | None = None) -> str:
    """``lead`` (what named the method) followed by what is available, a lowercase spelling that is, and what may
    explain the absence: plugins that failed to load or registered no method; else where to look. With
    ``checkpoint_folder`` (``name`` was given as the method, and is that checkpoint's path), to pass it as one."""
    registry = get_registry()
    parts = [f"{lead}; available: {sorted(registry.by_name)}"]
    if isinstance(name, str) and _normalised(name) == "none":  # (no plugin is missing: the closing advice would mislead)
        said = ("'none' means no quantization" if name == "none" else
                f"{name!r} is 'none' spelled otherwise, which means no quantization")
        return (f"{parts[0]}. {said}: resolve_quant_config takes 'none' (or None) for an unquantized model; "
                "where a method is needed to quantize, name one of the available ones")
    suggested = _same_name_spelled_otherwise(name, registry.by_name)
    # (a plugin of that very name failed to load: it is the answer, and another method's spelling would mislead)
    own = failure_named(name)
    if own is not None:
        parts.append(f"{own.problem}; it is likely the plugin that provides {name!r}: {own.fix}")
    elif suggested is not None:
        parts.append(f"Method names are lowercase, spelled as registered: did you mean {suggested!r}?")
    elif isinstance(name, str) and name != CT_METHOD and (readers := format_readers(name)):
        # (the answer: no plugin is missing, so the closing advice to install one would mislead)
        return (f"{parts[0]}. {name!r} is a checkpoint format, not a method: checkpoints declaring quant_method "
                f"{name!r} load with method {' or '.join(map(repr, readers))}, so pass {readers[0]!r}")
    elif isinstance(name, str) and (close := difflib.get_close_matches(name, sorted(registry.by_name), n=3)):
        parts.append(f"Did you mean {' or '.join(map(repr, close))}?")
    if checkpoint_folder is not None:
        parts.append(f"{name!r} is a path, not a method name: a checkpoint's method is read from its directory, "
                     f"resolve_quant_config(checkpoint={checkpoint_folder!r})")
    notes = _skipped_entry_points(name) + [n for n in unregistered_method_notes()
                                           if own is None or not n.startswith(own.problem)]
    parts += notes
    parts.append(("Otherwise install" if notes else "Install") + " the plugin that provides it, or check FVQ_PLUGINS "
                 "/ FVQ_DISABLE_PLUGINS (`fvq plugins --all` lists what is installed)")
    # Sentences: a part that ends a sentence itself ("did you mean 'fp8'?") takes no full stop after it.
    return " ".join(p if p.endswith(("?", ".")) else f"{p}." for p in parts[:-1]) + f" {parts[-1]}"


def _skipped_entry_points(name: Any) -> list[str]:
    """A sentence on the installed plugins that FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / FVQ_DISABLE_PLUGIN_AUTOLOAD left
    out (the one named like the method first): one of them may register it."""
    from fastvideo_quant.plugins.entry_points import list_entry_points

    skipped = sorted((ep for ep in list_entry_points() if not ep.selected), key=lambda ep: ep.name != name)
    if not skipped:
        return []
    shown = "; ".join(f"{ep.plugin!r}" + (f" (distribution {ep.distribution!r})" if ep.distribution else "")
                      + f": {ep.reason}" for ep in skipped[:SHOWN_PLUGINS])
    more = f" and {len(skipped) - SHOWN_PLUGINS} more" if len(skipped) > SHOWN_PLUGINS else ""
    return [f"{len(skipped)} installed plugin(s) were not loaded, and one may register it: {shown}{more}"]


#: At most this many skipped plugins are named in an unknown-method message.
SHOWN_PLUGINS = 5


def _normalised(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


def _same_name_spelled_otherwise(name: Any, registered: Iterable[str]) -> str | None:
    """The registered name that ``name`` is up to case, ``-``, ``_`` and spaces ('fp-8', 'Fp_8', 'AWQ '), else None."""
    if not isinstance(name, str) or not _normalised(name):
        return None
    return next((r for r in sorted(registered) if r != name and _normalised(r) == _normalised(name)), None)


def check_available(config_cls: type[QuantizationConfig]) -> None:
    """Raise MethodUnavailableError when the method's dependencies are missing."""
    reason = config_cls.unavailable_reason()
    if reason:
        raise MethodUnavailableError(f"quantization {describe_method_owner(config_cls)} is unavailable: {reason}")


def check_layer_supported(config: QuantizationConfig, params_dtype: torch.dtype, prefix: str) -> None:
    """Refuse a method that cannot run this layer here: dependency, GPU capability, CPU support or dtype. The name and
    dtypes are asked of the instance, so an unregistered config written as FastVideo's (instance methods) is read as
    one written to our contract (classmethods)."""
    cls = type(config)
    name = config.get_name()
    check_available(cls)
    dtypes = config.get_supported_act_dtypes()
    if params_dtype not in dtypes:
        raise MethodUnavailableError(
            f"layer {prefix!r}: quantization method {name!r} supports activation dtypes "
            f"{[str(d) for d in dtypes]}, but the model's dtype is {params_dtype}"
        )
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        have, need = major * 10 + minor, cls.get_min_capability()
        if have < need:
            raise MethodUnavailableError(
                f"layer {prefix!r}: quantization method {name!r} needs a GPU of compute capability "
                f">= {need // 10}.{need % 10}; {torch.cuda.get_device_name()} has {major}.{minor}"
            )
    elif cls.cpu_support() is None:
        raise MethodUnavailableError(f"layer {prefix!r}: quantization method {name!r} needs a CUDA GPU and none is visible")


def quant_section(hf_config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``quantization_config`` (or ``compression_config``) object of a config.json, or None."""
    sections = _config_sections(hf_config, "config.json")
    return sections[0][1] if sections else None


#: The keys of a config.json that hold its quantization section (compressed-tensors once wrote ``compression_config``).
SECTION_KEYS = ("quantization_config", "compression_config")


def _config_sections(hf_config: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``(key, section)`` for each of :data:`SECTION_KEYS` present.

    ``null`` (or no key) means not quantized, as in transformers; ``{}`` is refused (it names no method). A section
    passed as the whole config, or under a misspelled key, is refused: it would load as unquantized."""
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{where} must be a JSON object (a dict), found {type(hf_config).__name__}")
    _check_section_placement(hf_config, where)
    found = []
    for key in SECTION_KEYS:
        section = hf_config.get(key)
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"{where}'s {key!r} must be an object, found {type(section).__name__}")
            found.append((key, _with_implied_method(section)))
    return found


#: The keys by which a ``quantization_config`` without ``quant_method`` is a bitsandbytes one: ``BitsAndBytesConfig``
#: wrote none before transformers 4.37 or so, and transformers still reads such a section as bitsandbytes
#: (``AutoQuantizationConfig.from_dict``), as diffusers does.
BNB_LEGACY_KEYS = ("load_in_8bit", "load_in_4bit")


def _with_implied_method(section: dict[str, Any]) -> dict[str, Any]:
    """``section`` with ``"quant_method": "bitsandbytes"`` where it has none and sets one of :data:`BNB_LEGACY_KEYS`
    true, as transformers reads it; else ``section`` itself."""
    if "quant_method" in section or not any(section.get(k) is True for k in BNB_LEGACY_KEYS):
        return section
    return {"quant_method": "bitsandbytes", **section}


def _check_nested_section(top: dict[str, Any] | None, key: str, value: Any, where: str) -> None:
    """ConfigError for a quantization section inside a sub-config (a multimodal config.json's ``text_config``) where
    the top level holds none (``top``: the model would load as unquantized, with no word of it) or one of another
    method: a section is read only at the top level, as transformers reads it. One of the same method beside the top
    level's (exports copy it, sometimes with a key more or less) is left to the top level's."""
    if not isinstance(value, dict):
        return
    for inner in SECTION_KEYS:
        section = value.get(inner)
        if not isinstance(section, dict) or not section:
            continue
        method = section.get("quant_method")
        if top is not None and _same_method_name(method, top.get("quant_method")):
            continue
        said = (f"of another method than the top level's (quant_method {top.get('quant_method')!r})" if top is not None
                else "and the top level holds none")
        loads = "as the top level says" if top is not None else "as unquantized"
        raise ConfigError(
            f"{where}'s {key!r} holds a {inner!r} (quant_method {method!r}), {said}: a quantization section is read "
            f"only at the top level, so the model would load {loads}, not as {key!r} says. Move it to the top level "
            f"(config[{inner!r}] = config[{key!r}][{inner!r}]) if it describes the whole checkpoint, or remove it")


def _same_method_name(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, str) and isinstance(b, str) and _normalised(a) == _normalised(b))


def _check_section_placement(hf_config: dict[str, Any], where: str) -> None:
    """ConfigError for a quantization section that is not where it is read: the config itself (a top-level
    ``quant_method``), or a key other than :data:`SECTION_KEYS` that is close to one or holds a ``quant_method``."""
    if "quant_method" in hf_config:
        method = hf_config["quant_method"]
        fix = (f"pass the whole config.json dict, where the section is under 'quantization_config' "
               f"(hf_config={{'quantization_config': {{'quant_method': {method!r}, ...}}}}); a method's name alone "
               "would build its default config, which quantizes a float checkpoint on load" if where == "hf_config" else
               "move the quantization keys into a 'quantization_config' object")
        raise ConfigError(f"{where} has a top-level 'quant_method' ({method!r}): that is a quantization section, "
                          f"not a whole config.json, and would be read as unquantized; {fix}")
    top = next((hf_config[k] for k in SECTION_KEYS if isinstance(hf_config.get(k), dict)), None)
    for key, value in hf_config.items():
        if key in SECTION_KEYS:
            continue
        _check_nested_section(top, key, value, where)
        close = difflib.get_close_matches(key, SECTION_KEYS, n=1, cutoff=0.8)
        holds = isinstance(value, dict) and "quant_method" in value
        if close or holds:
            meant = close[0] if close else "quantization_config"
            what = f"holds a quantization section (quant_method {value['quant_method']!r})" if holds else "is not read"
            raise ConfigError(
                f"{where} has a key {key!r}, which {what}: a quantization section is read only from "
                f"{' or '.join(map(repr, SECTION_KEYS))}, so the checkpoint would load as unquantized; did you mean "
                f"{meant!r}? Rename the key (or remove it)"
            )


def claiming_methods(section: dict[str, Any], user_quant: str | None) -> Iterator[str]:
    """The method names the plugins' ``override_quantization_method`` claim ``section`` for, in registry order
    (lazily: the first is the one a load takes; ``fvq quantize`` asks for each)."""
    for reg in get_registry().by_name.values():
        claimed = reg.config_cls.override_quantization_method(section, user_quant)
        if claimed is not None:
            yield claimed


def method_for_quant_section(section: dict[str, Any], user_quant: str | None) -> str:
    """The registered method name that reads a quantization section, honouring override_quantization_method."""
    registry = get_registry()
    declared = section.get("quant_method")  # (checked before any plugin's override reads it as a string)
    if declared is not None and not isinstance(declared, str):
        raise ConfigError(
            f"'quant_method' must be a string naming the method, found {type(declared).__name__} {declared!r}: write "
            f"the method's name as a JSON string, {_method_names(registry)}")
    claimed = next(iter(claiming_methods(section, user_quant)), None)
    if claimed is not None:
        return claimed
    unread = _unclaimed_compressed_tensors(section, registry)
    if unread is not None:
        raise ConfigError(unread)
    method = section.get("quant_method") or section.get("format")
    if not method and not section:
        raise ConfigError("quantization config is empty ({}): give its 'quant_method', or make it null (or remove "
                          "it) for an unquantized checkpoint")
    if not method:
        found = (f"'quant_method' is {section['quant_method']!r}" if "quant_method" in section
                 else "there is no 'quant_method'")
        raise ConfigError(f"quantization config names no method: {found} (keys {sorted(section)}); give the method's "
                          f"name, {_method_names(registry)}, or make quantization_config null for an unquantized "
                          "checkpoint")
    return str(method).lower()


def _unclaimed_compressed_tensors(section: dict[str, Any], registry) -> str | None:
    """For a compressed-tensors section no plugin claims (and none registers the name ``compressed-tensors``): the
    refusal quoting each method's ``from_config`` refusal of it, in name order (the plugins claim these sections by
    their scheme, so the one whose refusal names the field of its own scheme says what is wrong: awq's "num_bits 8 ...
    awq reads 4-bit weights" for W8A16). None for another section, or where some method's ``from_config`` reads it
    (then its name is what the section selects, as before). (Was: "unknown quantization method
    'compressed-tensors'", or, while fp8 claimed every such section, fp8's refusal alone.)"""
    from fastvideo_quant.errors import FastVideoQuantError

    if not is_compressed_tensors(section) or CT_METHOD in registry.by_name or CT_METHOD in registry.conflicts:
        return None
    refusals = {}
    for name, reg in sorted(registry.by_name.items()):
        if name == UNQUANTIZED:  # (reads no key of any section)
            continue
        try:
            reg.config_cls.from_config(dict(section))
        except FastVideoQuantError as exc:
            refusals[name] = str(exc)
        except BaseException as exc:  # a plugin's own failure (a sys.exit too) is quoted as its refusal
            if stops_the_process(exc):
                raise
            refusals[name] = f"{type(exc).__name__}: {exc}"
        else:
            return None
    if not refusals:
        return None
    quoted = "; ".join(f"{name!r}: {problem}" for name, problem in refusals.items())
    return (f"no installed method reads the compressed-tensors config given (format {section.get('format')!r}) — no "
            f"plugin claims it. Their refusals — {quoted}. Install a plugin that reads this scheme (`fvq plugins` "
            "lists the methods installed), or re-export the checkpoint with a scheme one of them reads")


def _method_names(registry) -> str:
    """``one of [...] (or the name the tool ... uses ...)``: what a quant_method may name, for messages."""
    return (f"one of {sorted(registry.by_name)} (or the name the tool that wrote the checkpoint uses, such as "
            "'bitsandbytes' or 'compressed-tensors')")


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One place that says how a checkpoint is quantized: where, the section found there, and its method."""

    source: str
    section: dict[str, Any]
    method: str


def _declared_method(section: dict[str, Any], explicit: str | None, source: str) -> str:
    try:
        claimed = method_for_quant_section(section, explicit)
        # A plugin may claim a section only for the name the user asked for; report what it is without the flag.
        return claimed if explicit is None or claimed == explicit else method_for_quant_section(section, None)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def _method_file_declarations(ckpt: Path, explicit: str | None) -> list[Declaration]:
    """A declaration for each method file in ``ckpt``: the registered ones' and the tools' (QUANT_CONFIG_FILES)."""
    readers: dict[str, list[str]] = {name: [] for name in QUANT_CONFIG_FILES}
    for name, reg in sorted(get_registry().by_name.items()):
        for filename in reg.config_cls.get_config_filenames():
            readers.setdefault(filename, []).append(name)
    found = []
    for filename, names in readers.items():
        path = ckpt / filename
        if not path.is_file():
            continue
        section = _read_json(path)
        if not isinstance(section, dict):
            raise ConfigError(f"{path} must hold a JSON object, found {type(section).__name__}")
        section = dict(section)
        if not (section.get("quant_method") or section.get("format")):
            gptq = sorted(k for k in GPTQ_ONLY_KEYS if k in section)
            if gptq or str(section.get("checkpoint_format", "")).lower().startswith("gptq"):
                readers_named = [n for n in names if "gptq" in n.lower()]
                if len(readers_named) != 1:
                    why = (f"several loaded methods name GPTQ ({readers_named}): pass the method name to choose one"
                           if readers_named else
                           "no loaded plugin reads GPTQ checkpoints"
                           + (f" (AutoAWQ checkpoints use this file name too, so {names} read it, in their own format)"
                              if names else "")
                           + "; install a plugin for GPTQ, or check FVQ_PLUGINS / FVQ_DISABLE_PLUGINS")
                    raise ConfigError(
                        f"{path} has no 'quant_method' and is a GPTQ checkpoint's file ("
                        + (f"{', '.join(gptq)}: keys only AutoGPTQ / GPTQModel write" if gptq else
                           f"checkpoint_format {section['checkpoint_format']!r}")
                        + f"; found keys {sorted(section)}); {why}"
                    )
                names = readers_named
            if not names:
                raise ConfigError(
                    f"{path} declares a quantized checkpoint (keys {sorted(section)}), but no loaded plugin reads "
                    f"that file; available methods: {sorted(get_registry().by_name)}. Install the plugin for the "
                    "method it was written for (AutoAWQ and AutoGPTQ write this file), or check FVQ_PLUGINS / "
                    "FVQ_DISABLE_PLUGINS"
                )
            if explicit not in names and len(names) > 1:
                raise ConfigError(f"{path} has no 'quant_method' and is read by several methods {names}; "
                                  "pass the method name to choose one")
            section["quant_method"] = explicit if explicit in names else names[0]
        found.append(Declaration(str(path), section, _declared_method(section, explicit, str(path))))
    return found


def checkpoint_declarations(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    method: str | None = None,
) -> list[Declaration]:
    """Every place that declares how a checkpoint is quantized, in order of precedence.

    ``hf_config``'s ``quantization_config`` and ``compression_config``, then the checkpoint's
    ``config.json`` (same keys), then its method files (a registered method's
    ``get_config_filenames()`` and :data:`QUANT_CONFIG_FILES`). ``method`` is the name the
    user asked for, passed to ``override_quantization_method``. Empty: not quantized.
    """
    found = []
    if hf_config is not None:
        for key, section in _config_sections(hf_config, "hf_config"):
            source = f"the given hf_config's {key!r}"
            found.append(Declaration(source, section, _declared_method(section, method, source)))
    if checkpoint is not None:
        if not isinstance(checkpoint, str | os.PathLike):
            raise TypeError(f"checkpoint must be the checkpoint's directory (a str or os.PathLike), found "
                            f"{type(checkpoint).__name__} {checkpoint!r:.80}")
        ckpt = Path(checkpoint)
        if ckpt.is_file():
            raise ConfigError(f"checkpoint {str(ckpt)!r} is a file; checkpoint= takes the checkpoint's directory, which "
                              f"holds config.json: checkpoint={str(ckpt.parent)!r}")
        if not ckpt.is_dir():
            raise ConfigError(f"checkpoint directory {str(ckpt)!r} does not exist or is not a directory")
        path = ckpt / "config.json"
        if not path.is_file():
            from fastvideo_quant.loader.files import pipeline_hint

            hint = pipeline_hint(ckpt, "pass")
            if hint:  # (its models' config.json declare their methods; the root's model_index.json none)
                raise ConfigError(f"checkpoint {str(ckpt)!r} is the root of a diffusers pipeline, not a model's "
                                  f"checkpoint{hint}")
        if path.is_file():
            for key, section in _config_sections(_read_json(path), str(path)):
                source = f"{path}'s {key!r}"
                found.append(Declaration(source, section, _declared_method(section, method, source)))
        files = _method_file_declarations(ckpt, method)
        if not path.is_file() and not files and not found and method is None and not _holds_weights(ckpt):
            raise ConfigError(f"checkpoint directory {str(ckpt)!r} holds no config.json, no quantization method file "
                              "and no weights file (.safetensors, its index, or a PyTorch .bin / .pt), so it is not a "
                              "model's checkpoint, and taking it as unquantized would be a guess; pass the directory "
                              "that holds the model's config.json and weights")
        found.extend(files)
    return found


def _claimer(section: dict[str, Any], method: str) -> str:
    """The plugin (and its distribution) whose ``override_quantization_method`` claims ``section`` for ``method``."""
    registry = get_registry()
    reg = registry.by_name.get(method)
    return registry.plugins.get(reg.plugin, f"plugin {reg.plugin!r}") if reg is not None else f"method {method!r}"


def _holds_weights(ckpt: Path) -> bool:
    """Whether a directory holds a file the loader reads or names (a .safetensors file or index, a PyTorch file it
    says to convert): the loader's message about it is the better one."""
    return any(next(ckpt.glob(pattern), None) is not None
               for pattern in ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth"))


def _agreed(declarations: list[Declaration], explicit: str | None) -> Declaration:
    """The declaration that builds the config, after checking that all of them (and the flag) name one method."""
    if len({d.method for d in declarations}) > 1:
        listed = "; ".join(f"{d.source} says {d.method!r}" for d in declarations)
        given = {d.source.startswith("the given hf_config") for d in declarations}
        hint = ("pass an hf_config that agrees with the checkpoint's, or leave hf_config out" if given == {True, False}
                else "a model has one method: remove or correct the declaration that does not match its tensors")
        raise ConfigError(f"conflicting quantization methods declared: {listed}; {hint}")
    first = declarations[0]
    if _names_the_format(explicit):  # vLLM's --quantization compressed-tensors: the section must be of that format
        if not _of_format(first.section, explicit):
            what = ("the checkpoint format of llm-compressor, whose config groups choose the method" if explicit == CT_METHOD
                    else f"a checkpoint format: a section declaring it loads with method "
                         f"{' or '.join(map(repr, format_readers(explicit)))}")
            raise ConfigError(
                f"quantization method {explicit!r} was asked for ({what}), but {first.source} declares "
                f"{first.method!r} in that method's own format (quant_method {first.section.get('quant_method')!r}); "
                f"drop the flag or pass {first.method!r}"
            )
        explicit = None
    if explicit is not None and explicit != first.method:
        listed = " and ".join(d.source for d in declarations)
        written = first.section.get("quant_method")
        if isinstance(written, str) and written.lower() == explicit:  # (a plugin's override took the section)
            raise ConfigError(
                f"quantization method {explicit!r} was asked for, and {listed} says quant_method {written!r}, but "
                f"{_claimer(first.section, first.method)} claims such sections for {first.method!r} "
                f"(override_quantization_method), whatever is asked for, so {explicit!r} cannot read them here: pass "
                f"{first.method!r}, or leave out the plugin that claims them (FVQ_DISABLE_PLUGINS)")
        raise ConfigError(
            f"quantization method {explicit!r} was asked for, but {listed} says the checkpoint is quantized with "
            f"{first.method!r}; drop the flag or pass {first.method!r}"
        )
    registry = get_registry()
    if first.method in registry.conflicts:
        raise PluginError(f"{first.source} declares quantization method {first.method!r}, but "
                          f"{registry.conflict_message(first.method)}")
    if first.method not in registry.by_name and first.method != UNQUANTIZED:
        raise UnknownMethodError(unknown_method_message(
            f"{first.source} declares quantization method {first.method!r}, which no loaded plugin registers",
            first.method))
    _check_keys(declarations)
    _check_same_settings(declarations)
    return _with_a_skip_list_given_elsewhere(declarations)


def _with_a_skip_list_given_elsewhere(declarations: list[Declaration]) -> Declaration:
    """The first declaration; where it gives no skip list and a later one of the same method does (config.json's AWQ
    section with ``modules_to_not_convert: null`` beside AutoAWQ's ``quant_config.json`` listing the modules it kept in
    float), with that list: the checkpoint holds those modules' float tensors, and layers built quantized for them
    failed to load, one error per tensor. (Two lists that differ are a conflict: :func:`_check_same_settings`.)"""
    first = declarations[0]
    if _gives_skip_list(first):
        return first
    for other in declarations[1:]:
        if _gives_skip_list(other):
            given = {key: other.section[key] for key in SKIP_LIST_KEYS if other.section.get(key) is not None}
            return dataclasses.replace(first, section={**first.section, **given},
                                       source=f"{first.source} (its skip list from {other.source})")
    return first


def _gives_skip_list(declaration: Declaration) -> bool:
    """Whether a declaration says which modules stay unquantized: a list under a skip-list key, an empty one included
    (``modules_to_not_convert: []``: every module quantized, as written); a key missing or null says nothing."""
    return any(declaration.section.get(key) is not None for key in SKIP_LIST_KEYS)


def _check_keys(declarations: list[Declaration]) -> None:
    """ConfigError for a declaration's key that its method does not read and is a misspelling of one it reads."""
    cls = method_config_class(declarations[0].method)
    for d in declarations:
        error = misspelled_key_error(cls, d.section, where=describe_method(d.method), source=d.source)
        if error is not None:
            raise error


def _check_same_settings(declarations: list[Declaration]) -> None:
    """ConfigError when declarations of one method set it up differently (config.json's group_size 128, AutoAWQ's
    quant_config.json 64): the first would be used silently, and the tensors fit only one of them. Settings are
    compared as the config reads them (``from_config`` then ``to_dict``: ``q_group_size`` is ``group_size``); skip
    lists only when both give one (a tool's own file often has none; an empty list is one)."""
    if len(declarations) < 2:
        return
    cls = method_config_class(declarations[0].method)
    built = []
    for d in declarations:
        try:
            config = cls.from_config(dict(d.section))
        except ConfigError as exc:
            raise ConfigError(f"{d.source}: {exc}") from exc
        skip = list(config.modules_to_not_convert)
        settings = settings_apart_from_skip_list(config)
        if settings is None:
            return  # a config that cannot say its settings: nothing to compare
        built.append((d, settings, skip))
    first, settings, _ = built[0]
    for d, other, _ in built[1:]:
        a, b = dict(settings), dict(other)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            raise ConfigError(
                f"conflicting settings for quantization method {first.method!r}: {first.source} gives "
                f"{_shown(a, differ)}, {d.source} gives {_shown(b, differ)}; the checkpoint's tensors fit one of "
                "them: correct or remove the declaration that does not match them"
            )
    # (skip lists of the declarations that give one, against the first of them: the one used)
    listing = [(d, skip) for d, _, skip in built if _gives_skip_list(d)]
    for d, other_skip in listing[1:]:
        given, given_skip = listing[0]
        if set(other_skip) != set(given_skip):
            raise ConfigError(
                f"conflicting settings for quantization method {first.method!r}: {given.source} gives "
                f"modules_to_not_convert={given_skip!r}, {d.source} gives modules_to_not_convert={other_skip!r}; the "
                "checkpoint's tensors fit one of them: correct or remove the declaration that does not match them"
            )


def settings_apart_from_skip_list(config: QuantizationConfig) -> dict[str, Any] | None:
    """``config.to_dict()`` as written with an empty skip list, keys holding nothing (None, [], {}) left out: what
    two configs of one method are compared by, their skip lists (``modules_to_not_convert``, under whatever keys the
    format writes it, perhaps two or none) apart, as sets. None for a config that cannot write its settings."""
    skip = config.modules_to_not_convert
    config.modules_to_not_convert = []
    try:
        settings = config.to_dict()
    except NotImplementedError:
        return None
    finally:
        config.modules_to_not_convert = skip
    return {k: v for k, v in settings.items() if v not in (None, [], {}, ())}


def _shown(settings: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={settings.get(k)!r}" for k in keys)


def _names_the_format(name: str | None) -> bool:
    """Whether ``name`` names a checkpoint format as vLLM's ``--quantization`` takes it, rather than a plugin's method
    of that name: ``'compressed-tensors'``, whose section's config groups choose the method (fp8, awq), or a
    ``quant_method`` that a registered config claims its checkpoints by (:func:`format_readers`: ``'bitsandbytes'``,
    which int8 reads). The checkpoint's section then chooses the method, as when no name is given."""
    registry = get_registry()
    if not isinstance(name, str) or not name or name in registry.by_name or name in registry.conflicts:
        return False
    return name == CT_METHOD or bool(format_readers(name))


def format_readers(name: str) -> list[str]:
    """The registered methods that a checkpoint declaring ``quant_method`` ``name`` loads with, other than ``name``
    itself: those whose ``override_quantization_method`` claims the section ``{"quant_method": name}`` (int8 claims
    ``'bitsandbytes'``, the name Hugging Face writes for its 8-bit checkpoints). Derived from the plugins, so a
    third party's format name is accepted the same way; a plugin whose hook raises on that section is left out."""
    found: list[str] = []
    for reg in get_registry().by_name.values():
        try:
            claimed = reg.config_cls.override_quantization_method({"quant_method": name}, None)
        except BaseException as exc:  # a hook that cannot take a bare section (or exits) claims nothing here
            if stops_the_process(exc):
                raise
            continue
        if isinstance(claimed, str) and claimed != name and claimed not in found:
            found.append(claimed)
    return found


def _of_format(section: dict[str, Any], name: str) -> bool:
    """Whether ``section`` is of the checkpoint format ``name`` (:func:`_names_the_format`)."""
    if name == CT_METHOD:
        return is_compressed_tensors(section)
    return str(section.get("quant_method", "")).lower() == name.lower()


def _checkpoint_folder(name: str) -> str | None:
    """The checkpoint directory that ``name``, given as a method, is the path of (the directory or a file in it), or
    None: a path written as one (``./ckpt``, ``/data/ckpt``) or a directory that holds a checkpoint (config.json, a
    method file, weights). A bare name that only happens to be a folder in the working directory is not one."""
    if not os.path.exists(name):
        return None
    folder = name if os.path.isdir(name) else os.path.dirname(name) or "."
    written_as_path = os.sep in name or "/" in name
    holds = Path(folder, "config.json").is_file() or any(Path(folder, f).is_file() for f in QUANT_CONFIG_FILES)
    return folder if written_as_path or holds or _holds_weights(Path(folder)) else None


def _explicit_name(method: Any, checkpoint: Any = None) -> str | None:
    if method is None:
        return None
    if not isinstance(method, str):
        raise ConfigError(f"resolve_quant_config: method must be a method name (str) or None, found {method!r}")
    if not method.strip():
        raise UnknownMethodError(
            f"quantization method name is empty ({method!r}); pass one of {sorted(get_registry().by_name)}, "
            "or None (or 'none') for an unquantized model"
        )
    name = UNQUANTIZED if method == "none" else method
    if _names_the_format(name):  # (the checkpoint's section chooses the method: _agreed checks it is of that format)
        return name
    try:
        method_config_class(name)  # unknown name → error listing names
    except UnknownMethodError:
        folder = _checkpoint_folder(name) if checkpoint is None else None  # (checkpoint= given: not a mix-up)
        if folder is None:
            raise
        raise UnknownMethodError(unknown_method_message(f"unknown quantization method {name!r}", name, folder)) from None
    return name


def resolve_quant_config(
    method: str | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    load_options: dict[str, Any] | None = None,
    packed_modules_mapping: dict[str, list[str]] | None = None,
) -> QuantizationConfig | None:
    """Select and build the quantization config; None means unquantized.

    :param method: an explicit method name (a flag); ``None`` or ``"none"`` for none. Alone,
        it builds the method's default config (``from_config({})``) for online quantization (``"none"``: an
        ``UnquantizedConfig``, the core's default, which no plugin needs to register; :func:`method_config_class`).
    :param hf_config: a Hugging Face ``config.json`` dict; its ``quantization_config``
        (or ``compression_config``) selects the method.
    :param checkpoint: a checkpoint directory: its ``config.json``'s sections and every
        method file in it (AutoAWQ's ``quant_config.json``, ...).
    :param load_options: settings of the chosen config's ``load_time_keys`` (AWQ's
        ``{"fp8_compute": True}``), set over what the checkpoint declares: how the loaded layers
        compute, which no stored tensor decides. Any other key is a ConfigError naming it and the
        keys the method takes here (the checkpoint's own section decides those).
    :param packed_modules_mapping: the model's fused modules → their checkpoint modules
        (``{"to_qkv": ["to_q", "to_k", "to_v"]}``), added to the config's (vLLM sets the model
        class's into its config the same way): a skip list that names a fused layer's parts then
        leaves the fused layer unquantized. Needed when the model's fused names are not the
        default ``qkv_proj`` / ``gate_up_proj``.

    Every declaration found (:func:`checkpoint_declarations`) must name the same method,
    and so must ``method`` when given; the first in that order builds the config, so a
    given ``hf_config``'s section is used over the checkpoint's when both name the method.
    An unknown or empty name, a contradiction, or a checkpoint without a quantization
    section asked to load as a method that cannot quantize on load is an error; nothing
    falls back to unquantized silently.
    """
    explicit = _explicit_name(method, checkpoint)
    packed = _checked_packed_mapping(packed_modules_mapping)
    declarations = checkpoint_declarations(checkpoint, hf_config=hf_config, method=explicit)
    if declarations:
        chosen = _agreed(declarations, explicit)
        cls = method_config_class(chosen.method)
        check_available(cls)
        section = _with_load_options(cls, chosen.method, chosen.section, load_options)
        try:
            config = cls.from_config(section)
        except ConfigError as exc:  # (a value it refuses: say where the section came from, unless it says so)
            if chosen.source in str(exc) or type(exc) is not ConfigError:
                raise
            given = f" with load_options {load_options!r}" if load_options else ""
            raise ConfigError(f"{chosen.source}{given}: {exc}") from exc
        return _with_packed(config, packed)
    if _names_the_format(explicit):
        where = (f"checkpoint {str(checkpoint)!r} has no quantization config" if checkpoint is not None else
                 "the given hf_config has no quantization section" if hf_config is not None else
                 "no checkpoint config was given")
        readers = [] if explicit == CT_METHOD else format_readers(explicit)
        chooses = (f"a section declaring it loads with method {' or '.join(map(repr, readers))}" if readers else
                   "its quantization_config's config groups choose the method (fp8 for float-quantized weights, awq "
                   "for 4-bit pack-quantized ones)")
        raise ConfigError(
            f"quantization method {explicit!r} names a checkpoint format, not a method: {chooses}, and "
            f"{where}. Pass the checkpoint: resolve_quant_config({explicit!r}, checkpoint=DIR) (or hf_config= its "
            f"config.json); to quantize a float checkpoint on load, name a method "
            f"(resolve_quant_config({(readers or ['fp8'])[0]!r}))"
        )
    if explicit is None:
        if load_options:
            raise ConfigError(f"resolve_quant_config: load_options {load_options!r} were given, but no quantization "
                              "method was chosen (no method, and no checkpoint declaration): the model is unquantized")
        return None
    cls = method_config_class(explicit)
    check_available(cls)
    if not cls.online_quantization:
        where = f"checkpoint {str(checkpoint)!r} has no quantization config" if checkpoint is not None else \
            "no checkpoint config was given"
        raise ConfigError(
            f"quantization method {explicit!r} cannot quantize a float checkpoint on load ({where}); "
            f"quantize it first: fvq quantize SRC --method {explicit} --out DST, then load DST"
        )
    return _with_packed(cls.from_config(_with_load_options(cls, explicit, {}, load_options)), packed)


def _checked_packed_mapping(mapping: Any) -> dict[str, list[str]] | None:
    return None if mapping is None else checked_packed_mapping(mapping, "resolve_quant_config: packed_modules_mapping")


def checked_packed_mapping(mapping: Any, what: str) -> dict[str, list[str]]:
    """``mapping`` (fused module → its checkpoint modules) as a dict of lists; ConfigError naming ``what`` and the
    entry at fault where it is no such dict (a list; a str for a list, which would be read as its characters)."""
    example = "{'to_qkv': ['to_q', 'to_k', 'to_v']}"
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} must map each fused module's name to the list of its checkpoint modules' names "
                          f"({example}), found {type(mapping).__name__} {mapping!r:.200}")
    for key, parts in mapping.items():
        if not (isinstance(key, str) and isinstance(parts, list | tuple) and parts
                and all(isinstance(p, str) for p in parts)):
            raise ConfigError(f"{what} must map each fused module's name to the list of its checkpoint modules' names "
                              f"({example}); entry {key!r} maps to {type(parts).__name__} {parts!r:.120}")
    return {k: list(v) for k, v in mapping.items()}


def _with_packed(config: QuantizationConfig, packed: dict[str, list[str]] | None) -> QuantizationConfig:
    if packed:
        config.packed_modules_mapping.update(packed)
    return config


def _with_load_options(cls: type[QuantizationConfig], method: str, section: dict[str, Any],
                       load_options: dict[str, Any] | None) -> dict[str, Any]:
    """``section`` with its load-time keys replaced by ``load_options`` (they describe the whole load-time choice:
    ``{"fp8_compute": False}`` also drops a ``fp8_compute_min_m`` the section carries); ConfigError for a key not in
    ``cls.load_time_keys``."""
    if load_options is None:
        return section
    if not isinstance(load_options, dict):
        raise ConfigError(f"resolve_quant_config: load_options must be a dict of config keys, found "
                          f"{type(load_options).__name__} {load_options!r}")
    allowed = tuple(cls.load_time_keys)
    other = [k for k in load_options if k not in allowed]
    if other:
        raise ConfigError(
            f"resolve_quant_config: load_options {other} are not load-time settings of {describe_method(method)} "
            f"({cls.__name__}.load_time_keys: {list(allowed) or 'none'}); the other keys are the checkpoint's and "
            "describe how its tensors are stored, so they are not set at load"
        )
    return {**{k: v for k, v in section.items() if k not in allowed}, **load_options}
