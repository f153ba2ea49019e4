"""What ``fvq quantize`` (and the conformance suite) need of a method's config before it quantizes anything: a
``quantize_weight`` that takes the call they make, and the attributes ``QuantizationConfig.__init__`` sets.

Both are checked on the config ``from_config`` returned, before any tensor is read, so a plugin written with another
signature (``quantize_weight(self, weight)``) or an ``__init__`` that forgets ``super().__init__()`` is one error
naming the class, where it is defined and the fix, not a TypeError per tensor or an AttributeError deep in
``is_layer_skipped``.
"""

from __future__ import annotations

import inspect

from fastvideo_quant.plugins.failures import defined_at

#: How ``fvq quantize`` and the suite call ``quantize_weight`` (keywords by name).
QUANTIZE_WEIGHT_SIGNATURE = "quantize_weight(weight, *, prefix='', activations=None)"
#: The fix for a ``quantize_weight`` that cannot take that call.
QUANTIZE_WEIGHT_FIX = (f"define {QUANTIZE_WEIGHT_SIGNATURE.replace('(', '(self, ', 1)}: weight is one float [out, in] "
                       "tensor, prefix the module's name, activations its calibration inputs [tokens, in] or None; "
                       "return {name: tensor} keyed by the parameter names create_weights registers")
#: The attributes ``QuantizationConfig.__init__`` sets, which the skip-list code reads on every config.
BASE_ATTRIBUTES = ("packed_modules_mapping", "modules_to_not_convert")


def _at(fn: object) -> str:
    """`` at path/to/file.py:17`` where ``fn`` is defined, or ``""``."""
    where = defined_at(fn)
    return f" at {where}" if where else ""


def quantize_weight_problem(config: object, owner: str = "") -> str | None:
    """Why ``config.quantize_weight`` cannot be called as ``quantize_weight(weight, prefix=..., activations=...)``
    (its signature, where it is defined, and the TypeError the call would raise), or None; ``owner`` (``plugin 'x'
    (distribution 'y')``) is named with it. A ``**kwargs`` catch-all takes the keywords; a signature inspect cannot
    read is left to the call."""
    fn = getattr(config, "quantize_weight", None)
    if fn is None:
        return None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(object(), prefix="", activations=None)
    except TypeError as exc:
        cls = type(config).__name__
        of = f", of {owner}," if owner else ""
        return (f"{cls}.quantize_weight{_at(getattr(type(config), 'quantize_weight', fn))}{of} has the signature "
                f"quantize_weight{signature}, but it is called as {QUANTIZE_WEIGHT_SIGNATURE} (prefix and "
                f"activations by keyword), so every call fails with TypeError: {exc}")
    return None


def init_problem(config: object) -> str | None:
    """Why ``config`` lacks the attributes ``QuantizationConfig.__init__`` sets (an ``__init__`` of its own that
    does not call ``super().__init__()``), or None."""
    missing = [a for a in BASE_ATTRIBUTES if not hasattr(config, a)]
    if not missing:
        return None
    from fastvideo_quant.quantization.base import QuantizationConfig

    cls = type(config)
    owner = next((k for k in cls.__mro__ if "__init__" in vars(k)), QuantizationConfig)
    init = (f"{owner.__name__}.__init__{_at(vars(owner)['__init__'])} does not call super().__init__()"
            if owner is not QuantizationConfig else "QuantizationConfig.__init__ was not run")
    names = " and ".join(missing) + (" attributes" if len(missing) > 1 else " attribute")
    return (f"the {cls.__name__} from_config returned has no {names}, which QuantizationConfig.__init__ "
            f"sets: {init}, so is_layer_skipped (every get_quant_method through linear_method_or_skip, and "
            "fvq quantize --skip) fails with AttributeError")


def init_fix(config: object) -> str:
    """How to fix what :func:`init_problem` found."""
    from fastvideo_quant.quantization.base import QuantizationConfig

    owner = next((k for k in type(config).__mro__ if "__init__" in vars(k)), QuantizationConfig)
    if owner is QuantizationConfig:
        return (f"build the config in {type(config).__name__}.from_config with cls(...), so that "
                "QuantizationConfig.__init__ sets packed_modules_mapping and modules_to_not_convert")
    return (f"call super().__init__() in {owner.__name__}.__init__ (it sets packed_modules_mapping and "
            "modules_to_not_convert)")


def check_quantizing_config(method: str, config: object) -> None:
    """QuantizeError, before any tensor is read, for a config ``fvq quantize`` cannot use: one lacking what
    ``QuantizationConfig.__init__`` sets, or a ``quantize_weight`` that cannot take the call (every tensor would
    fail the same way, and "--skip the tensor" would skip them all)."""
    from fastvideo_quant.errors import QuantizeError
    from fastvideo_quant.plugins.manager import describe_method

    where = describe_method(method)
    problem = init_problem(config)
    if problem:
        raise QuantizeError(f"{where}: {problem}. No tensor was read and nothing was written. Fix the plugin: "
                            f"{init_fix(config)}")
    problem = quantize_weight_problem(config)
    if problem:
        raise QuantizeError(f"{where}: {problem}. No tensor was read and nothing was written. Fix the plugin: "
                            f"{QUANTIZE_WEIGHT_FIX}")
