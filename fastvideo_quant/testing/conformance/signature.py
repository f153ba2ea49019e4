"""Contract: ``create_weights`` has the signature the layers call it with.

Every layer calls it by keyword (``LinearBase._create_weights``), so the names of its parameters are part of the
contract. The layer refuses a signature that cannot take the call with a PluginError; the suite reports it as a
``[contract: create_weights]`` failure naming the method class, its plugin and distribution, the layer, and the
expected and the found signature (a TypeError raised at the call is explained the same way).
"""

from __future__ import annotations

import inspect

import torch

from fastvideo_quant.layers.base import CREATE_WEIGHTS_SIGNATURE, create_weights_call_problem

EXPECTED = CREATE_WEIGHTS_SIGNATURE


def check_create_weights_signature(subject, method: object | None, where: str, cause: BaseException | None = None
                                   ) -> None:
    """A ``[contract: create_weights]`` failure naming the method class, its plugin and distribution, the layer, the
    expected and the found signature when the layers cannot call ``method.create_weights``; nothing otherwise."""
    problem = None if method is None else create_weights_call_problem(method)
    if problem is None:
        return
    fn = type(method).create_weights
    raise subject.fail(
        "create_weights", where,
        f"{type(method).__name__}.create_weights{_location(fn)}, of {subject.owner()}, has the signature "
        f"create_weights{_signature(fn)}, but layers call {EXPECTED} by keyword, so its parameter names are part "
        f"of the contract; the layers' call fails with TypeError: {problem}",
        f"define {EXPECTED} (extra_weight_attrs holds the weight_loader to give every parameter)",
    ) from cause


def method_for(quant_config, kind: str) -> object | None:
    """The method instance ``quant_config.get_quant_method`` gives a layer named like the suite's ``kind`` layer,
    asked directly (not through the plugin manager, which may refuse it), or None if it gives none."""
    from fastvideo_quant.layers.linear import ReplicatedLinear

    prefix = f"conformance.{kind}"
    try:
        with torch.device("meta"):
            probe = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32, prefix=prefix)
        method = quant_config.get_quant_method(probe, prefix)
    except Exception:  # noqa: BLE001 - only asked to explain another error, which stands
        return None
    return None if method is None or isinstance(method, type) else method


def _signature(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _location(fn) -> str:
    """`` at path/to/method.py:17`` where ``fn`` is defined, or ``""``."""
    try:
        return f" at {inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return ""
