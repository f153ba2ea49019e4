"""Checks of what a config class declares, made when its plugin registers it.

A wrong declaration accepted at registration surfaces later as an error that contradicts itself ("supports
['bfloat16'] but the model's dtype is torch.bfloat16") or as a bare IndexError far from the plugin. Here it is a
:class:`PluginError` naming the plugin, its distribution, the method, the declaration and the value.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins.failures import exception_line, packages_of

#: Method names that selection gives a meaning of its own: ``resolve_quant_config("none")`` is an unquantized model.
RESERVED_NAMES = {"none": "resolve_quant_config('none') means unquantized"}

#: The dtypes a model (hence a layer's activations) can be in.
MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def call_declaration(config_cls: type, attr: str, where: str) -> Any:
    """``config_cls.attr()``; an exception from it is a PluginError naming the plugin and where it raised."""
    try:
        return getattr(config_cls, attr)()
    except Exception as exc:
        raise PluginError(
            f"{where}: {config_cls.__name__}.{attr}() raised {exception_line(exc, packages_of(config_cls))}"
        ) from exc


def check_name(config_cls: type, where: str, taken: dict[str, str]) -> str:
    """``config_cls.get_name()``, checked: a non-empty lowercase str without spaces, not reserved, and not one of
    ``taken`` (lowercase name → who registered it) case-insensitively."""
    name = call_declaration(config_cls, "get_name", where)
    got = f"{where}: {config_cls.__name__}.get_name() returned {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{got}; expected the method's name, a non-empty str such as 'my_w8'")
    if re.search(r"\s", name):
        suggestion = re.sub(r"\s+", "_", name.strip()).lower()
        raise PluginError(f"{got}; a method name has no spaces (it is matched against a checkpoint's quant_method), "
                          f"e.g. {suggestion!r}")
    if name != name.lower():
        owner = taken.get(name.lower())
        raise PluginError(
            f"{got}; method names are lowercase (a checkpoint's quant_method is matched lowercased): return "
            f"{name.lower()!r}"
            + (f", which {owner} already registers, so choose another name" if owner else "")
        )
    if name in RESERVED_NAMES:
        raise PluginError(f"{got}, a reserved name ({RESERVED_NAMES[name]}); choose another name")
    return name


def check_act_dtypes(config_cls: type, where: str) -> None:
    """``get_supported_act_dtypes()`` is a non-empty list of model dtypes (torch.bfloat16, ...)."""
    value = call_declaration(config_cls, "get_supported_act_dtypes", where)
    got = f"{where}: {config_cls.__name__}.get_supported_act_dtypes() returned {value!r}"
    example = "e.g. [torch.bfloat16, torch.float16]"
    if isinstance(value, torch.dtype):
        raise PluginError(f"{got}; expected a list of torch dtypes: return [{value}]")
    if not isinstance(value, (list, tuple)):
        raise PluginError(f"{got} ({type(value).__name__}); expected a list of torch dtypes, {example}")
    if not value:
        raise PluginError(f"{got}; expected at least one activation dtype, {example}: a method supporting none "
                          "cannot build a layer")
    names = [d for d in value if not isinstance(d, torch.dtype)]
    if names:
        fixed = [f"torch.{d}" if isinstance(d, str) and isinstance(getattr(torch, d, None), torch.dtype) else "?"
                 for d in value]
        hint = f": return [{', '.join(fixed)}]" if "?" not in fixed else f", {example}"
        raise PluginError(f"{got}; {names!r} {'is' if len(names) == 1 else 'are'} not torch dtypes{hint}")
    bad = [d for d in value if d not in MODEL_DTYPES]
    if bad:
        raise PluginError(
            f"{got}; {', '.join(map(str, bad))} {'is' if len(bad) == 1 else 'are'} not a dtype a model runs in: "
            f"activation dtypes are the dtype of x in apply(), one of {', '.join(map(str, MODEL_DTYPES))} (the "
            "weights' storage dtype is not declared here)"
        )


def check_min_capability(config_cls: type, where: str) -> None:
    """``get_min_capability()`` is an int >= 0: the CUDA compute capability times ten."""
    value = call_declaration(config_cls, "get_min_capability", where)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    hint = "e.g. 89 for compute capability 8.9 (sm_89), or 0 for any GPU"
    if isinstance(value, float) and 0 < value < 20:
        hint = f"return {round(value * 10)} for compute capability {value}"
    raise PluginError(f"{where}: {config_cls.__name__}.get_min_capability() returned {value!r}; expected an int >= 0, "
                      f"the CUDA compute capability times ten: {hint}")


def check_cpu_support(config_cls: type, where: str) -> None:
    """``cpu_support()`` is one line (a non-empty str) or None."""
    value = call_declaration(config_cls, "cpu_support", where)
    if value is None or (isinstance(value, str) and value.strip() and "\n" not in value.strip()):
        return
    raise PluginError(f"{where}: {config_cls.__name__}.cpu_support() returned {value!r}; expected one line saying how "
                      "the method runs on CPU (e.g. 'torch matmul on de-quantized weights'), or None when it cannot")


def check_tolerance(config_cls: type, where: str) -> None:
    """The class attribute ``tolerance`` is a Tolerance."""
    from fastvideo_quant.quantization.base import Tolerance

    value = getattr(config_cls, "tolerance", None)
    if not isinstance(value, Tolerance):
        raise PluginError(f"{where}: {config_cls.__name__}.tolerance is {value!r}; expected "
                          "fastvideo_quant.quantization.Tolerance(max_rel_error=..., min_sqnr_db=...)")


def check_key_sets(config_cls: type, where: str) -> None:
    """``unread_checkpoint_keys`` is a set of key names and ``quantized_checkpoint_keys`` a dict keyed by names: a
    string there would be taken letter by letter."""
    unread = getattr(config_cls, "unread_checkpoint_keys", frozenset())
    if not isinstance(unread, (set, frozenset)) or not all(isinstance(k, str) for k in unread):
        raise PluginError(f"{where}: {config_cls.__name__}.unread_checkpoint_keys is {unread!r}; expected a frozenset "
                          "of checkpoint key names, e.g. frozenset({'_load_in_8bit'})")
    fixed = getattr(config_cls, "quantized_checkpoint_keys", {})
    if not isinstance(fixed, dict) or not all(isinstance(k, str) for k in fixed):
        raise PluginError(f"{where}: {config_cls.__name__}.quantized_checkpoint_keys is {fixed!r}; expected a dict "
                          "{key name: its value in the checkpoint quantize_weight writes}")


def check_weight_rel_error(config_cls: type, where: str) -> None:
    """``weight_rel_error`` is None or a number > 0 (the conformance suite's weight-fidelity bound)."""
    value = getattr(config_cls, "weight_rel_error", None)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise PluginError(f"{where}: {config_cls.__name__}.weight_rel_error is {value!r}; expected None or a number > 0 "
                          "(the bound on ||dequantize_weight - float weight|| / ||float weight|| you measured, plus a "
                          "margin)")


def check_declarations(config_cls: type, where: str, taken: dict[str, str]) -> str:
    """Every declaration of ``config_cls`` checked; returns its method name. ``where`` names the plugin."""
    name = check_name(config_cls, where, taken)
    where = f"{where}, method {name!r}"
    check_act_dtypes(config_cls, where)
    check_min_capability(config_cls, where)
    check_cpu_support(config_cls, where)
    check_tolerance(config_cls, where)
    check_key_sets(config_cls, where)
    check_weight_rel_error(config_cls, where)
    return name
