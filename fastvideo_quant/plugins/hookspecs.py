"""Hook specifications of fastvideo_quant.

A plugin is a module (or object) with functions marked ``@hookimpl`` and named
after the specs below; an installed package exposes it through one entry point
in the ``fastvideo_quant`` group. The docs keep one heading per hook equal to its
signature, and a test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:  # the plugin package must not import the quantization package at load
    from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase

PROJECT_NAME = "fastvideo_quant"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterMethod(Protocol):
    """The ``register`` callback passed to :func:`register_quantization_methods`."""

    def __call__(
        self,
        config_cls: type[QuantizationConfig],
        *methods: type[QuantizeMethodBase],
        weight_loader_v2: bool = False,
    ) -> None: ...


@hookspec
def register_quantization_methods(register: RegisterMethod) -> None:
    """Register the quantization methods this plugin provides.

    Called once per plugin, when the registry is first used. Call
    ``register(config_cls, *methods, weight_loader_v2=False)`` once per method:

    :param register: the callback. ``config_cls`` is the method's
        :class:`~fastvideo_quant.quantization.QuantizationConfig` subclass; its
        ``get_name()`` is the method name: lowercase, not ``"none"``, and unique across
        plugins. ``methods`` are the :class:`QuantizeMethodBase` classes its
        ``get_quant_method`` returns; ``weight_loader_v2=True`` declares that their
        parameters are ``fastvideo_quant.parameter`` classes that shard themselves,
        so layers use ``weight_loader_v2`` for them (a subclass keeps its parent's
        choice). The callback validates at once — the name, and the declarations
        ``get_supported_act_dtypes()`` (a non-empty list of model dtypes),
        ``get_min_capability()`` (an int), ``cpu_support()`` and ``tolerance`` — and
        raises :class:`~fastvideo_quant.errors.PluginError` naming this plugin, its
        distribution, the method and the value. A plugin whose registration fails is
        left out whole (and reported); the other plugins load.

    All implementations are called. Return None: the return value is not read, so an implementation returning its
    registrations instead of calling ``register`` registers nothing, and is refused as a load error of its plugin.
    """
