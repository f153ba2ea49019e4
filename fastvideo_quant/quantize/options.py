"""The method's config for ``fvq quantize``: options checked against what ``from_config`` reads, the
``quantization_config`` it writes checked to round-trip.

The options may be a whole compressed-tensors section (``quant_method`` ``"compressed-tensors"``, ``format``,
``config_groups``, ``ignore``) when the method reads that section (:func:`check_section_reader`): it is the one format
several methods read, so its ``quant_method`` names the format, not the method."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastvideo_quant.errors import ConfigError, FastVideoQuantError, QuantizeError
from fastvideo_quant.layers.linear import ReplicatedLinear, UnquantizedLinearMethod
from fastvideo_quant.plugins.manager import describe_method
from fastvideo_quant.quantization.base import QuantizationConfig
from fastvideo_quant.quantization.compressed_tensors import is_compressed_tensors
from fastvideo_quant.quantization.config_keys import KeyTracker, keys_asked, unread_key_error
from fastvideo_quant.quantization.selection import (
    claiming_methods,
    get_quantization_config,
    method_for_quant_section,
)
from fastvideo_quant.quantize.section_keys import check_not_applied, without_unread


def _same_value(given: Any, written: Any) -> bool:
    """Whether an option's value and the one the config writes back mean the same (``"GEMM"`` is ``"gemm"``)."""
    if given in (None, [], ()) and written in (None, [], ()):
        return True
    if isinstance(given, str) and isinstance(written, str):
        return given.lower() == written.lower()
    if isinstance(given, (list, tuple)) and isinstance(written, (list, tuple)):
        return len(given) == len(written) and all(_same_value(a, b) for a, b in zip(given, written))
    return given == written


def quantizing_options(cls: type[QuantizationConfig], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the config's :attr:`~QuantizationConfig.quantized_checkpoint_keys` set: the dict the
    config that writes a checkpoint is built from."""
    return {**cls.quantized_checkpoint_keys, **options}


def check_config_keys(method: str, config: dict[str, Any], *, label: str) -> None:
    """ConfigError when ``method``'s ``from_config`` does not read a key of ``config`` (``fvq check --config``, a
    conformance suite class's ``config``), which would be dropped silently; ``label`` names a key in the message.

    A ``config`` that ``from_config`` (or ``to_dict``) refuses passes here: the caller reports that its own way.
    """
    cls = get_quantization_config(method)
    accepted = keys_asked(cls, {})
    given = KeyTracker(dict(config))
    try:
        built = cls.from_config(given)
        section = built.to_dict() if given.opaque else None
    except Exception:  # noqa: BLE001 - refused, or a plugin bug: reported where the suite builds the config
        return
    # (a checkpoint's bookkeeping keys the config declares it leaves unread — compressed-tensors' status and ratio,
    # transformers' runtime settings — are fine in a section copied from a config.json, as when loading it)
    error = unread_key_error(cls, without_unread(cls, config), given, section,
                             where=describe_method(method), accepted=accepted, label=label)
    if error is not None:
        raise error


def check_options(method: str, options: dict[str, Any]) -> QuantizationConfig:
    """The method's config built from ``options``; ConfigError for a key it does not read or a value it overrides.

    Which keys a config accepts is what its ``from_config`` asks for: with ``{}`` (its keys and
    their defaults) and with ``options`` (keys read only in some modes). A key it never asks
    for, or an alias it does not read because another key was given, would be dropped
    silently; a key its ``to_dict()`` writes back with another value would be overridden.
    ``quant_method`` is refused (``--method`` chooses), except in a compressed-tensors section the method reads.
    """
    cls = get_quantization_config(method)
    where = describe_method(method)
    ct_section = is_compressed_tensors(options)
    if ct_section:
        check_not_applied(options, where)  # (first: a set output_activations also changes which method reads it)
        check_section_reader(method, options)
    elif "config_groups" in options:
        raise ConfigError(
            f"option config_groups for {where}: config_groups is a key of compressed-tensors configs, read in a section "
            "whose quant_method is 'compressed-tensors'; give the whole section, e.g. --config '{\"quant_method\": "
            "\"compressed-tensors\", \"format\": ..., \"config_groups\": {...}, \"ignore\": [...]}', or drop the option"
        )
    elif "quant_method" in options:
        raise ConfigError(
            f"option 'quant_method' ({options['quant_method']!r}) for {where}: the method is chosen by --method "
            f"(method=) and writes its own quant_method; drop the option"
        )
    check_load_time_options(cls, options, where)
    for key, fixed in cls.quantized_checkpoint_keys.items():
        if key in options and not _same_value(options[key], fixed):
            raise ConfigError(
                f"option {key}={json.dumps(options[key])} for {where}: {key!r} says how a checkpoint's tensors are "
                f"stored, and the checkpoint fvq quantize writes has {key}={json.dumps(fixed)} (it holds what "
                f"{cls.__name__}.quantize_weight produces), so the option would be ignored. Drop it; it is a key for "
                "loading a checkpoint that is stored the other way"
            )
    accepted = keys_asked(cls, cls.quantized_checkpoint_keys)
    given = KeyTracker(quantizing_options(cls, options))
    try:
        config = cls.from_config(given)
    except ConfigError as exc:
        if not options or type(exc) is not ConfigError:
            raise
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in options.items())
        raise ConfigError(f"option(s) {shown} for {where}: {exc}") from exc
    written = config.to_dict()
    # (a compressed-tensors section copied from a config.json carries keys its readers leave unread: section_keys)
    checked = without_unread(cls, options) if ct_section else options
    unread = unread_key_error(cls, checked, given, written, where=where, accepted=accepted)
    if unread is not None:
        raise unread
    for key, value in checked.items():
        # (a compressed-tensors section's groups and ignore list are written in the method's own spelling — defaults
        # filled in, groups of one scheme merged; build_config checks that every module reads back as planned — and
        # the keys its readers leave unread, not in checked, describe the checkpoint it was copied from:
        # quantization_status is written "compressed" whatever it says, section_keys)
        if ct_section and key in ("config_groups", "ignore"):
            continue
        if key in written and not _same_value(value, written[key]):
            raise ConfigError(
                f"option {key}={json.dumps(value)}: {where} ignores this value; it writes {key}="
                f"{json.dumps(written[key])} into the quantization_config whatever the option says. Drop the "
                f"option (or use a method that writes {key}={json.dumps(value)})"
            )
    return config


def check_section_reader(method: str, section: dict[str, Any]) -> None:
    """ConfigError when the compressed-tensors ``section`` given as options is not one ``method`` reads: the plugins
    claim these sections by their scheme (``override_quantization_method``: fp8 the float8 ones, awq W4A16), as when
    loading a checkpoint, so ``method`` would not write the checkpoint the section describes. The message names a
    method to pass only where that method's ``from_config`` accepts the section (fp8 claims the sections no other
    plugin claims only to say why it cannot read them); otherwise it quotes the refusals."""
    reader = method_for_quant_section(section, None)
    if reader == method:
        return
    where = f"option quant_method={json.dumps(section['quant_method'])} for {describe_method(method)}"
    claimers = list(dict.fromkeys([reader, *claiming_methods(section, None)]))
    refusals = {name: _reading_problem(name, section) for name in dict.fromkeys([*claimers, method])}
    readers = [name for name in claimers if refusals[name] is None]
    if readers:
        raise ConfigError(
            f"{where}: the compressed-tensors config given (format {section.get('format')!r}) is read by method "
            f"{readers[0]!r}, not {method!r}; pass --method {readers[0]}, or give a config of a scheme {method!r} reads"
        )
    quoted = "; ".join(f"{name!r}: {problem}" for name, problem in refusals.items() if problem is not None)
    raise ConfigError(
        f"{where}: no installed method reads the compressed-tensors config given (format {section.get('format')!r}), "
        f"so no method writes the checkpoint it describes. Their refusals — {quoted}. Quantize with method {method!r} "
        "by its own options (without the compressed-tensors config), or install a plugin that reads this scheme (fvq "
        "plugins lists the methods installed)"
    )


def _reading_problem(method: str, section: dict[str, Any]) -> str | None:
    """Why ``method``'s ``from_config`` refuses ``section`` (its message), or None when it reads it."""
    try:
        get_quantization_config(method).from_config(dict(section))
    except FastVideoQuantError as exc:
        return str(exc)
    return None


def check_load_time_options(cls: type[QuantizationConfig], options: dict[str, Any], where: str) -> None:
    """ConfigError for an option the config declares load-time only (:attr:`~QuantizationConfig.load_time_keys`):
    it changes no tensor ``quantize_weight`` writes, and written into the checkpoint's ``quantization_config`` it
    would impose that choice on everyone who loads it."""
    from fastvideo_quant.plugins.declarations import check_load_time_keys

    given = [k for k in check_load_time_keys(cls, where) if k in options]
    if not given:
        return
    shown = " ".join(f"{k}={json.dumps(options[k])}" for k in given)
    override = ", ".join(f"{k!r}: {options[k]!r}" for k in given)  # (Python literals: True, not true)
    what = f"{given[0]!r} is a load-time setting" if len(given) == 1 else \
        f"{' and '.join(repr(k) for k in given)} are load-time settings"
    raise ConfigError(
        f"option {shown} for {where}: {what} of {cls.__name__} (listed in its load_time_keys). It chooses how "
        "loaded layers compute and changes no tensor quantize_weight writes; fvq quantize would only record it in the "
        "checkpoint's quantization_config, forcing it on everyone who loads the checkpoint. Drop the option here and "
        f"set it when loading: resolve_quant_config(checkpoint=DST, load_options={{{override}}}), then build the "
        "model with that config (fvq bench and fvq check take it in --config)"
    )


def build_config(method: str, options: dict[str, Any], not_converted: list[str], quantized_modules: list[str],
                 check_section: Callable[[dict[str, Any], QuantizationConfig], None] | None = None,
                 kept_entries: Sequence[str] = (),
                 ) -> tuple[QuantizationConfig, dict[str, Any]]:
    """The method's config from ``options`` and the ``quantization_config`` dict it writes, checked to round-trip.

    ``check_section`` is called with the dict and the config read back from it before the round trip is checked:
    ``fvq quantize`` refuses there a skip list that names quantized modules
    (:func:`~fastvideo_quant.quantize.plan.check_skip_shadowing`), which the round trip would blame on the plugin.
    ``kept_entries`` (a compressed-tensors ``ignore``'s ``re:`` patterns, and its entries naming no module of the
    checkpoint, ``lm_head``) join the skip list after ``not_converted``, as given: a model that has such a module keeps
    it in float, and a pattern still reads as the config said it."""
    cls = get_quantization_config(method)
    # The skip list goes in twice: under Hugging Face's generic key, for plugins whose
    # from_config reads it, and as the contract attribute, for plugins whose to_dict
    # writes it under their format's own key. The round trip below checks the result.
    skip_list = list(dict.fromkeys([*not_converted, *kept_entries]))
    config = cls.from_config({"modules_to_not_convert": skip_list, **quantizing_options(cls, options)})
    config.modules_to_not_convert = skip_list
    section = config.to_dict()
    # What resolve_quant_config does on load, minus the availability check: quantizing
    # may work where the method's kernels cannot run (e.g. no bitsandbytes, no GPU).
    selected_name = method_for_quant_section(section, None)
    if selected_name != method:
        raise QuantizeError(
            f"{cls.__name__}.to_dict() wrote {section}, but reading it back selects method "
            f"{selected_name!r}; the plugin for {method!r} must write a quant_method that selects it"
        )
    selected = cls.from_config(section)
    if check_section is not None:
        check_section(section, selected)
    lost = [m for m in not_converted if not builds_unquantized(selected, m)]
    wrongly = [m for m in quantized_modules if selected.is_layer_skipped(m)]
    # (a compressed-tensors config refuses to build a layer no group targets and ignore does not name)
    untargeted = [m for m in quantized_modules if m not in wrongly and not _builds_quantized(selected, m)]
    ignored = [m for m in lost if selected.is_layer_skipped(m)]
    if ignored:  # the skip list round-trips: get_quant_method does not ask it
        raise QuantizeError(_skip_list_ignored(cls, method, section, selected, ignored))
    if lost or wrongly:
        raise QuantizeError(
            f"{cls.__name__}: quantization_config {section} does not round-trip modules_to_not_convert: "
            + (f"modules left unquantized that would load as quantized layers: {lost[:5]}; " if lost else "")
            + (f"quantized modules that would load as skipped: {wrongly[:5]}; " if wrongly else "")
            + "the plugin's to_dict()/from_config() must store modules_to_not_convert"
        )
    if untargeted:
        raise QuantizeError(
            f"{cls.__name__}: read back, quantization_config {section} does not build quantized modules as quantized "
            f"layers (is_layer_skipped is False for them; {_why_not_built(selected, untargeted[0])}): {untargeted[:5]}; "
            "they would not load their quantized tensors. The plugin's to_dict() must write targets that name every "
            "module quantize_weight was asked for"
        )
    return config, section


def _skip_list_ignored(cls: type[QuantizationConfig], method: str, section: dict[str, Any],
                       selected: QuantizationConfig, ignored: list[str]) -> str:
    """The error for a config whose skip list round-trips (``is_layer_skipped`` is True for ``ignored`` on the config
    read back) while its ``get_quant_method`` still returns the quantized method for them (vLLM's style: ``if
    isinstance(layer, LinearBase): return Method(self)``)."""
    with torch.device("meta"):
        probe = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32, prefix=ignored[0])
    found = selected.get_quant_method(probe, prefix=ignored[0])
    got = "None" if found is None else type(found).__name__
    return (f"{describe_method(method)}: {cls.__name__}.get_quant_method ignores the skip list: the "
            f"quantization_config {section} keeps modules_to_not_convert (read back, is_layer_skipped is True for "
            f"{ignored[:5]}), but get_quant_method returns {got} for {'it' if len(ignored) == 1 else 'them'}, so "
            "modules written unquantized would load as quantized layers. get_quant_method must honour "
            f"is_layer_skipped: return self.linear_method_or_skip(layer, prefix, lambda: "
            f"{'MyLinearMethod' if found is None else got}(...)) (it returns the "
            "unquantized method for a skipped layer)")


def _builds_quantized(config: QuantizationConfig, module: str) -> bool:
    """Whether a linear layer named ``module`` built with ``config`` gets a quantized method (not the unquantized one,
    and not a ConfigError: a compressed-tensors config refuses a layer no group targets)."""
    try:
        return not builds_unquantized(config, module)
    except ConfigError:
        return False


def _why_not_built(config: QuantizationConfig, module: str) -> str:
    """``"built unquantized"``, or the ConfigError building ``module`` with ``config`` raised."""
    try:
        builds_unquantized(config, module)
    except ConfigError as exc:
        return f"building {module!r} raised: {exc}"
    return f"{module!r} is built unquantized"


def builds_unquantized(config: QuantizationConfig, module: str) -> bool:
    """Whether a linear layer named ``module`` built with ``config`` gets the unquantized method. ConfigError where the
    config refuses to build it (a compressed-tensors config whose groups do not target it and whose ``ignore`` does
    not name it)."""
    with torch.device("meta"):
        probe = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32, prefix=module)
    return isinstance(config.get_quant_method(probe, prefix=module), UnquantizedLinearMethod)
