"""Checks of what a config class declares, made when its plugin registers it.

A wrong declaration accepted at registration surfaces later as an error that contradicts itself ("supports
['bfloat16'] but the model's dtype is torch.bfloat16") or as a bare IndexError far from the plugin. Here it is a
:class:`PluginError` naming the plugin, its distribution, the method, the declaration and the value.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import torch

from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins.failures import defined_at, exception_line, packages_of

#: Method names that selection gives a meaning of its own: ``resolve_quant_config("none")`` is an unquantized model.
RESERVED_NAMES = {"none": "resolve_quant_config('none') means unquantized"}

#: The dtypes a model (hence a layer's activations) can be in.
MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def call_declaration(config_cls: type, attr: str, where: str) -> Any:
    """``config_cls.attr()``; an exception from it is a PluginError naming the plugin and where it raised."""
    try:
        return getattr(config_cls, attr)()
    except Exception as exc:
        hint = (f"; {attr} is called on the class (at registration, before any config exists), so make it a "
                f"@classmethod{_source_of(config_cls, attr)}: @classmethod def {attr}(cls)"
                if _instance_method(config_cls, attr, exc) else "")
        raise PluginError(
            f"{where}: {config_cls.__name__}.{attr}() raised {exception_line(exc, packages_of(config_cls))}{hint}"
        ) from exc


def _instance_method(config_cls: type, attr: str, exc: Exception) -> bool:
    """Whether ``exc`` is the TypeError of calling an instance method (``def get_name(self)``, FastVideo's style) on
    the class: a plain function needing a first argument, which the class call does not pass."""
    raw = inspect.getattr_static(config_cls, attr, None)
    if not isinstance(exc, TypeError) or not inspect.isfunction(raw):
        return False
    first = next(iter(inspect.signature(raw).parameters.values()), None)
    return first is not None and first.default is first.empty and first.kind in (
        first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)


def _source_of(config_cls: type, attr: str) -> str:
    """`` (path/to/config.py:12)`` where ``config_cls.attr`` is defined, or ``""``."""
    where = defined_at(inspect.getattr_static(config_cls, attr, None))
    return f" ({where})" if where else ""


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
    """The class attribute ``tolerance`` is a Tolerance bounding every declared activation dtype (its outer bound, or
    one of ``dtypes``), each bound a real number (run after :func:`check_act_dtypes`). A bound in ``dtypes`` for a dtype
    the config does not declare is allowed: a subclass narrowing its parent's dtypes keeps the parent's tolerance."""
    from fastvideo_quant.quantization.base import Tolerance

    value = getattr(config_cls, "tolerance", None)
    got = f"{where}: {config_cls.__name__}.tolerance is {value!r}"
    example = "fastvideo_quant.quantization.Tolerance(max_rel_error=..., min_sqnr_db=...)"
    if not isinstance(value, Tolerance):
        raise PluginError(f"{got}; expected {example}")
    for name, tol in [("", value), *((f"tolerance.dtypes[{d}].", t) for d, t in value.dtypes.items())]:
        for field in ("max_rel_error", "min_sqnr_db"):
            bound = getattr(tol, field)
            ok = bound is None or (isinstance(bound, int | float) and not isinstance(bound, bool)
                                   and math.isfinite(bound) and (field != "max_rel_error" or bound >= 0))
            if not ok:
                kind = "a number >= 0" if field == "max_rel_error" else "a finite number (decibels)"
                raise PluginError(f"{got}; expected {name}{field} to be None or {kind}, found {bound!r} "
                                  f"({type(bound).__name__})")
    unbounded = value.unbounded(config_cls.get_supported_act_dtypes())  # (check_act_dtypes ran first)
    if unbounded:
        for_what = f" for {[str(d) for d in unbounded]}" if value.dtypes else ""
        raise PluginError(f"{got}, which states no bound{for_what} (max_rel_error and min_sqnr_db are both None), "
                          "so apply() would be checked against nothing; expected at least one: "
                          f"{example}, set to what you measured plus a margin")


#: Class attributes that are flags. A string there is truthy whatever it says: ``online_quantization = "no"`` reads as
#: True.
FLAG_ATTRIBUTES = ("online_quantization", "supports_torch_compile")
_SAYS_TRUE, _SAYS_FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off", "")


def check_flags(config_cls: type, where: str) -> None:
    """Each of :data:`FLAG_ATTRIBUTES` is a real bool."""
    for attr in FLAG_ATTRIBUTES:
        value = getattr(config_cls, attr, False)
        if isinstance(value, bool):
            continue
        raise PluginError(f"{where}: {config_cls.__name__}.{attr} is {value!r} ({type(value).__name__}); expected a "
                          f"bool, True or False (this value reads as {bool(value)}): set it to {meant_bool(value)}")


def meant_bool(value: object) -> str:
    """The bool a flag given as something else most likely meant: ``"True"`` (``"yes"``, ``1``), ``"False"``
    (``"no"``, ``"False"``, ``0``) or, when it says neither, ``"True or False"``."""
    said = str(value).strip().lower()
    return "True" if said in _SAYS_TRUE else "False" if said in _SAYS_FALSE else "True or False"


def check_config_filenames(config_cls: type, where: str) -> None:
    """``get_config_filenames()`` is a list of file names (selection reads each; a str would be read letter by
    letter)."""
    value = call_declaration(config_cls, "get_config_filenames", where)
    if isinstance(value, list | tuple) and all(isinstance(f, str) and f for f in value):
        return
    raise PluginError(f"{where}: {config_cls.__name__}.get_config_filenames() returned {value!r}; expected a list of "
                      "the file names besides config.json that hold the method's config (AutoAWQ's "
                      "['quant_config.json']), or [] for none")


def check_key_sets(config_cls: type, where: str) -> None:
    """``unread_checkpoint_keys`` is a set of key names, ``quantized_checkpoint_keys`` a dict keyed by names and
    ``load_time_keys`` a tuple of names: a string there would be taken letter by letter."""
    unread = getattr(config_cls, "unread_checkpoint_keys", frozenset())
    if not isinstance(unread, (set, frozenset)) or not all(isinstance(k, str) for k in unread):
        raise PluginError(f"{where}: {config_cls.__name__}.unread_checkpoint_keys is {unread!r}; expected a frozenset "
                          "of checkpoint key names, e.g. frozenset({'_load_in_8bit'})")
    fixed = getattr(config_cls, "quantized_checkpoint_keys", {})
    if not isinstance(fixed, dict) or not all(isinstance(k, str) for k in fixed):
        raise PluginError(f"{where}: {config_cls.__name__}.quantized_checkpoint_keys is {fixed!r}; expected a dict "
                          "{key name: its value in the checkpoint quantize_weight writes}")
    check_load_time_keys(config_cls, where)


def check_load_time_keys(config_cls: type, where: str) -> tuple[str, ...]:
    """``load_time_keys`` is a tuple of key names (returned); registration checks it, and ``fvq quantize`` again
    before it reads it (a class attribute may change after registration)."""
    load_time = getattr(config_cls, "load_time_keys", ())
    if not isinstance(load_time, tuple) or not all(isinstance(k, str) and k for k in load_time):
        raise PluginError(f"{where}: {config_cls.__name__}.load_time_keys is {load_time!r}; expected a tuple of the "
                          "config key names that choose how loaded layers compute, e.g. ('fp8_compute',)")
    return load_time


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
    check_config_filenames(config_cls, where)
    check_tolerance(config_cls, where)
    check_flags(config_cls, where)
    check_key_sets(config_cls, where)
    check_weight_rel_error(config_cls, where)
    return name


def missing_abstract(cls: type) -> list[str]:
    """Abstract methods ``cls`` leaves unimplemented (also ones deleted after the class was made)."""
    names = set(getattr(cls, "__abstractmethods__", ()) or ())
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False) and getattr(
                    value, "__isabstractmethod__", False):
                names.add(name)
    return sorted(names)


def _abstract_spec(cls: type, name: str) -> str:
    """``@staticmethod get_config_filenames(), declared by QuantizationConfig: Files in ...``: how the class that
    ``cls`` takes the abstract ``name`` from declares it."""
    owner = next(k for k in cls.__mro__ if name in vars(k))
    raw = vars(owner)[name]
    decorator = next((f"@{d.__name__} " for d in (staticmethod, classmethod) if isinstance(raw, d)), "")
    func = getattr(raw, "__func__", raw)
    try:
        params = ", ".join(_param(p) for p in inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = "..."
    doc = (inspect.getdoc(func) or "").split("\n")[0]
    return f"{decorator}{name}({params}), declared by {owner.__name__}" + (f": {doc.rstrip('.')}" if doc else "")


def _param(p: inspect.Parameter) -> str:
    """A parameter as written, without its annotation: ``x``, ``bias=None``, ``**extra_weight_attrs``."""
    star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    return star + p.name + ("" if p.default is p.empty else f"={p.default!r}")


def check_not_abstract(cls: type, role: str, where: str, registered_with: type | None = None) -> None:
    """``cls`` implements every abstract method of its base classes: an abstract class passes ``register`` and then
    fails on first use, in the plugin's name but with a TypeError that blames the user's config."""
    missing = missing_abstract(cls)  # inspect.isabstract's __abstractmethods__, and methods deleted since
    if not missing:
        return
    with_config = f" (registered with {registered_with.__name__})" if registered_with else ""
    specs = "; ".join(_abstract_spec(cls, name) for name in missing)
    raise PluginError(
        f"{where}: {role} {cls.__module__}.{cls.__qualname__}{with_config} is abstract: it does not implement "
        f"{missing}, so it cannot be instantiated and every use of the method would fail; implement in "
        f"{cls.__name__}: {specs}"
    )
