"""The pluggy plugin manager: loading entry points, building the registry once.

Plugins load lazily, on the first use of the registry, and once. Environment:

* ``FVQ_PLUGINS=a,b`` — allowlist: load only these plugins (by plugin or distribution name).
* ``FVQ_DISABLE_PLUGINS=a,b`` — blocklist: skip these.
* ``FVQ_DISABLE_PLUGIN_AUTOLOAD=1`` (or ``true`` / ``yes``; ``0``, ``false`` and
  anything else leave autoload on) — load no entry points at all (plugins can
  still be added with :func:`register_plugin`).

A plugin's name is its entry point's, or ``distribution:entry-point`` for a third party's entry point named like
another distribution's (:mod:`~fastvideo_quant.plugins.entry_points`), so no entry point knocks out another.
A name in either list matching no installed plugin or distribution warns
(:class:`~fastvideo_quant.plugins.failures.PluginSelectionWarning`), listing the available ones.

A plugin that fails to load (an import that raises — ``SystemExit`` too; only ``KeyboardInterrupt`` propagates —, no or
misspelled hook, a registration the ``register`` callback refuses) is left out and recorded
(:func:`get_plugin_failures`); the build warns once per failure
(:class:`~fastvideo_quant.plugins.failures.PluginLoadWarning`), so the other plugins' methods still work. Two plugins
registering one method name leave that name unusable (``Registry.conflicts``), whichever loaded first.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import threading
import traceback
from types import ModuleType
from typing import Any

import pluggy

from fastvideo_quant.errors import FastVideoQuantError, PluginError, plugin_packages, stops_the_process, warn_at_caller
from fastvideo_quant.plugins import hookspecs
from fastvideo_quant.plugins.admission import admit, run_hooks
from fastvideo_quant.plugins.declarations import missing_abstract
from fastvideo_quant.plugins.entry_points import (
    NamedEntryPoint,
    autoload_disabled,
    installed,
    not_selected_reason,
    warn_unknown_names,
)
from fastvideo_quant.plugins.failures import (
    PluginFailure,
    PluginLoadWarning,
    defined_at,
    describe_plugin,
    entry_point_packages,
    exception_line,
    fix_hint,
    packages_of,
)
from fastvideo_quant.plugins.registry import BUILTIN_DISTRIBUTION, Registry

_lock = threading.RLock()
_extra: list[tuple[object, str]] = []


@dataclasses.dataclass(frozen=True)
class _State:
    """One consistent build: readers take it whole, so a concurrent reset() cannot mix two builds."""

    pm: pluggy.PluginManager
    registry: Registry
    dists: dict[str, md.Distribution | None]  # loaded or failed plugin name -> its distribution (None: in-process)
    failures: tuple[PluginFailure, ...]
    entry_points: dict[str, md.EntryPoint]  # loaded or failed plugin name -> its entry point (none: in-process)


_state: _State | None = None


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What ``get_plugins()`` reports about one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    methods: list[str]
    entry_point: str | None = None  # its entry point's value (``module:attr``); None: in-process

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _failure(name: str, dist: md.Distribution | None, entry_point: str | None, problem: str,
             fix: str | None = None, exc: BaseException | None = None) -> PluginFailure:
    # A traceback only where the plugin's code raised: our own refusals (a PluginError with no cause) are whole.
    raised = exc is not None and (not isinstance(exc, PluginError) or exc.__cause__ is not None)
    return PluginFailure(name, dist.name if dist else None, dist.version if dist else None, entry_point, problem,
                         fix or fix_hint(name, dist), "".join(traceback.format_exception(exc)) if raised else None)


def _load_entry_points(pm: pluggy.PluginManager, dists: dict[str, md.Distribution | None],
                       failures: list[PluginFailure]) -> dict[str, md.EntryPoint]:
    """Import and admit every selected entry point; one that fails is recorded in ``failures`` and left out.
    Returns each loaded or failed plugin's entry point, by plugin name."""
    loaded: dict[str, md.EntryPoint] = {}
    named = installed()
    warn_unknown_names(named)
    for entry in named:
        if not_selected_reason(entry) is None:
            loaded[entry.plugin] = entry.entry_point
            dists[entry.plugin] = entry.dist
            _load_one(pm, entry, failures)
    return loaded


def _load_one(pm: pluggy.PluginManager, entry: NamedEntryPoint, failures: list[PluginFailure]) -> None:
    ep, name = entry.entry_point, entry.plugin
    where = describe_plugin(name, ep.dist)
    try:
        plugin = ep.load()
    except BaseException as exc:  # SystemExit too: a plugin's ``sys.exit`` at import must not end the host
        if stops_the_process(exc):
            raise
        failures.append(_failure(name, ep.dist, ep.value, f"{where} failed to import {ep.value}: "
                                 f"{exception_line(exc, entry_point_packages(ep.value))}", exc=exc))
        return
    try:
        admit(pm, plugin, name, where, ep.value, entry_name=ep.name)
    except PluginError as exc:
        failures.append(_failure(name, ep.dist, ep.value, str(exc), exc=exc))


def _builtin(dist: md.Distribution | None) -> bool:
    return dist is not None and dist.name == BUILTIN_DISTRIBUTION


def _build() -> _State:
    """Load the plugins and build the registry: every selected entry point, then the in-process plugins. A plugin
    that fails at any step is recorded and left out; the others are built as if it were not installed."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    dists: dict[str, md.Distribution | None] = {}
    failures: list[PluginFailure] = []
    eps = {} if autoload_disabled() else _load_entry_points(pm, dists, failures)
    for plugin, name in _extra:
        where = describe_plugin(name, None)
        if name in dists:
            failures.append(_failure(name, None, None, f"{where} has the name of {describe_plugin(name, dists[name])}; "
                                     "plugin names must be unique, so it is left out",
                                     "pass register_plugin another name"))
            continue
        dists[name] = None
        try:
            admit(pm, plugin, name, where, None)
        except PluginError as exc:
            failures.append(_failure(name, None, None, str(exc), exc=exc))
    registry = Registry()
    # Built-ins register first, so a third party's message can name the built-in method it collides with.
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: not _builtin(dists.get(item[0]))):
        dist = dists.get(name)
        try:
            run_hooks(pm, registry, name, plugin, dist.name if dist else None, describe_plugin(name, dist))
        except PluginError as exc:
            pm.unregister(name=name)
            failures.append(_failure(name, dist, eps[name].value if name in eps else None, str(exc), exc=exc))
    return _State(pm, registry, dists, tuple(failures), eps)


def _warn(state: _State) -> None:
    """One PluginLoadWarning per plugin left out and per method name two plugins registered."""
    for failure in state.failures:
        warn_at_caller(PluginLoadWarning(failure.warning))
    for name in sorted(state.registry.conflicts):
        warn_at_caller(PluginLoadWarning(state.registry.conflict_message(name)))


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, loading plugins on first use."""
    return _ensure().pm


def get_registry() -> Registry:
    """The method registry, loading plugins on first use (warning once per plugin that failed to load)."""
    return _ensure().registry


def get_plugin_failures() -> list[PluginFailure]:
    """The plugins that failed to load and were left out, each with its message."""
    return list(_ensure().failures)


def failure_named(name: object) -> PluginFailure | None:
    """The failure of the plugin named ``name``, else of one whose entry point is ``name`` (``distribution:name``) —
    the plugin likeliest to provide method ``name`` —, or None."""
    state = _ensure()
    named = [f for f in state.failures if f.name == name]
    named += [f for f in state.failures if f.name in state.entry_points and state.entry_points[f.name].name == name]
    return next(iter(named), None)


def _ensure(warn: bool = True) -> _State:
    """The current build; the first call builds it and (with ``warn``) warns about what was left out."""
    global _state
    with _lock:
        if _state is None:
            _state = _build()
            if warn:
                _warn(_state)
        return _state


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Add an in-process plugin (a module or object with hookimpls) and rebuild the registry.

    For tests and applications that define methods without packaging them. On error (the plugin fails to load,
    or registers a method name another plugin registers) nothing is added and :class:`PluginError` says why.
    """
    global _state
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        if any(n == name for _, n in _extra):
            raise PluginError(f"plugin {name!r} is already registered in-process; unregister_plugin it first")
        _extra.append((plugin, name))
        try:
            state = _build()
        except BaseException:
            _extra.pop()
            raise
        problem = next((f.problem for f in state.failures if f.name == name), None) or next(
            (state.registry.conflict_message(m, name) for m, regs in sorted(state.registry.conflicts.items())
             if any(r.plugin == name for r in regs)), None)
        if problem is not None:
            _extra.pop()
            reset()
            raise PluginError(problem)
        reset()
        _state = state
        _warn(state)


def ensure_registered(method: str, hooks_module: str | ModuleType) -> None:
    """Register ``method``'s plugin in-process from ``hooks_module`` (its import name, or the module itself) unless an
    installed entry point already did (a bare checkout on PYTHONPATH, a spawned test rank, a bare device machine).

    PluginError, registering nothing, when ``hooks_module`` does not register ``method``: when it is loaded already
    (by an entry point, or in-process) and registers other methods, or when it registers other methods once
    registered here. Either way the name is wrong (registering the module under it would leave ``method`` unknown),
    and the message names the methods it does register."""
    call = f"ensure_registered({method!r}, {hooks_module!r})"
    _check_ensure_arguments(call, method, hooks_module)
    registry = get_registry()
    if method in registry.by_name or method in registry.conflicts:
        return
    module = hooks_module if isinstance(hooks_module, ModuleType) else importlib.import_module(hooks_module)
    state = _ensure()
    owner = state.pm.get_name(module)
    if owner is not None:
        methods = next((i.methods for i in plugin_infos(state) if i.name == owner), [])
        raise PluginError(
            f"{call}: module {module.__name__} is already registered, as "
            f"{describe_plugin(owner, state.dists.get(owner))}, and "
            + (f"registers methods {methods}, not {method!r}; pass one of those names (what its config class's "
               "get_name() returns)" if methods else
               f"registers no method (its register_quantization_methods did not call register), so not {method!r} "
               "either")
        )
    register_plugin(module, method)
    registry = get_registry()
    if method in registry.by_name or method in registry.conflicts:
        return
    methods = next((i.methods for i in get_plugins() if i.name == method), [])
    unregister_plugin(method)
    raise PluginError(
        f"{call}: module {module.__name__} registers "
        + (f"methods {methods}, not {method!r}, so it was not registered; pass one of those names (what its config "
           "class's get_name() returns)" if methods else
           f"no method (its register_quantization_methods did not call register), so not {method!r} either; it was "
           "not registered")
    )


def _check_ensure_arguments(call: str, method: object, hooks_module: object) -> None:
    """PluginError for an :func:`ensure_registered` argument of the wrong kind, naming it."""
    if not isinstance(method, str) or not method:
        raise PluginError(f"{call}: method must be a method name (a str, what the config class's get_name() returns), "
                          f"found {type(method).__name__} {method!r}")
    if not isinstance(hooks_module, ModuleType) and (not isinstance(hooks_module, str) or not hooks_module):
        raise PluginError(f"{call}: hooks_module must be the hooks module's import name (a str, e.g. "
                          f"'fvq_my_method.hooks') or the module itself, found {type(hooks_module).__name__} "
                          f"{hooks_module!r}")


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin added with :func:`register_plugin`."""
    with _lock:
        _extra[:] = [(p, n) for p, n in _extra if n != name]
        reset()


def reset() -> None:
    """Forget loaded plugins; the next use reloads them (e.g. after changing FVQ_* variables), and the entry points'
    packages whose frames warnings skip are read again."""
    global _state
    with _lock:
        _state = None
    plugin_packages.cache_clear()


def get_plugins() -> list[PluginInfo]:
    """Name, distribution, version, hooks and methods of each loaded plugin."""
    return plugin_infos(_ensure())


def plugin_infos(state: _State) -> list[PluginInfo]:
    """``get_plugins()`` of one build."""
    pm, registry = state.pm, state.registry
    registered = [*registry.by_name.values(), *(r for rs in registry.conflicts.values() for r in rs)]
    infos = []
    for name, plugin in pm.list_name_plugin():
        dist = state.dists.get(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        methods = sorted(r.name for r in registered if r.plugin == name)
        ep = state.entry_points.get(name)
        infos.append(PluginInfo(name, dist.name if dist else None, dist.version if dist else None, hooks, methods,
                                ep.value if ep else None))
    return infos


def unregistered_method_notes() -> list[str]:
    """What may explain a method name that no loaded plugin registers, one sentence each: the plugins that failed
    to load, and the loaded plugins that registered no method."""
    state = _ensure()
    notes = [f"{f.problem}; it may be the plugin that provides it: {f.fix}" for f in state.failures]
    # A plugin whose method name collides with another's registers it under that name, unusable: a likely provider.
    notes += [state.registry.conflict_message(name) for name in sorted(state.registry.conflicts)]
    for info in plugin_infos(state):
        if not info.methods:
            notes.append(f"{describe_plugin(info.name, state.dists.get(info.name))} is loaded but registered no "
                         "method (its register_quantization_methods did not call register)")
    return notes


def describe_method(method: str) -> str:
    """``method 'x' of plugin 'p' (distribution 'd')`` for messages; just ``method 'x'`` when no loaded plugin
    registered it (or the plugins failed to load: that failure is reported on its own)."""
    try:
        reg = get_registry().by_name.get(method)
    except PluginError:
        reg = None
    return reg.described if reg is not None else f"method {method!r}"


def owner_while_loading(config_cls: type) -> str:
    """:func:`describe_method_owner` once the registry is built; while plugins load (a registration check may build a
    config), the class's module, without asking for the registry being built."""
    if _state is None:
        return f"{config_cls.__module__}.{config_cls.__name__} (while plugins load)"
    return describe_method_owner(config_cls)


def describe_method_owner(config_cls: type) -> str:
    """``plugin 'x' (distribution 'y')`` of the plugin that registered ``config_cls``, for error messages."""
    try:
        registry = get_registry()
    except PluginError:
        registry = None
    reg = next((r for r in registry.by_name.values() if r.config_cls is config_cls), None) if registry else None
    if reg is None:
        return f"{config_cls.__module__}.{config_cls.__name__} (not registered by any loaded plugin)"
    return reg.described


def quant_method_for(quant_config: Any, layer: object, prefix: str) -> Any:
    """``quant_config.get_quant_method(layer, prefix)``, checked: a plugin bug (an abstract method class, a class
    instead of an instance, a method missing ``apply``/``create_weights``) is a :class:`PluginError` naming the
    plugin, its distribution, the method class and what it lacks, not a bare ``TypeError`` later."""
    from fastvideo_quant.quantization.base import QuantizeMethodBase

    config_cls = type(quant_config)
    where = f"{config_cls.__name__}.get_quant_method(layer {prefix!r} ({type(layer).__name__}))"
    try:
        method = quant_config.get_quant_method(layer, prefix=prefix)
    except FastVideoQuantError:
        raise  # said on purpose (a skip list naming some parts of a fused layer is the checkpoint's ConfigError)
    except Exception as exc:
        raise _get_quant_method_error(quant_config, where, exc) from exc
    if method is None:
        return None
    if isinstance(method, type):
        missing = missing_abstract(method) if issubclass(method, QuantizeMethodBase) else []
        raise PluginError(
            f"{describe_method_owner(config_cls)}: {where} returned the class {method.__name__}, expected an instance"
            + (f"; {method.__name__} also lacks the abstract methods {missing}" if missing else "")
            + f"; return {method.__name__}(...)"
        )
    if not isinstance(method, QuantizeMethodBase):
        raise PluginError(
            f"{describe_method_owner(config_cls)}: {where} returned {type(method).__name__}, expected an instance of "
            "a fastvideo_quant.quantization.LinearMethodBase subclass (or None for a layer it does not handle)"
        )
    missing = missing_abstract(type(method))
    if missing:
        raise PluginError(
            f"{describe_method_owner(config_cls)}: {where} returned a {type(method).__name__}, which does not "
            f"implement the abstract methods {missing}; implement them in {type(method).__name__}"
        )
    return method


#: ``PluginError.contract`` of an exception a config's ``get_quant_method`` raised that is a bug of its own.
RAISED_IN_GET_QUANT_METHOD = "get_quant_method: raised"


def _get_quant_method_error(quant_config: Any, where: str, exc: Exception) -> PluginError:
    """What an exception from a config's ``get_quant_method`` means, naming the plugin and its distribution: an
    abstract method class, a config whose ``__init__`` skipped ``super().__init__()`` (``is_layer_skipped`` reads
    what it sets), or a bug of its own. ``contract`` says which, for the conformance suite's ``[contract: ...]``."""
    from fastvideo_quant.quantization.base import QuantizationConfig
    from fastvideo_quant.quantize.contract import BASE_ATTRIBUTES, init_fix

    config_cls = type(quant_config)
    raised = f"{describe_method_owner(config_cls)}: {where} raised {exception_line(exc, packages_of(config_cls))}"
    missing = [a for a in BASE_ATTRIBUTES if not hasattr(quant_config, a)]
    if isinstance(exc, TypeError) and "abstract" in str(exc):
        contract, message = "get_quant_method", (f"{raised}; the method class it instantiates must implement every "
                                                 "abstract method of LinearMethodBase (create_weights, apply)")
    elif isinstance(exc, AttributeError) and missing:
        init_owner = next(k for k in config_cls.__mro__ if "__init__" in vars(k))
        at = defined_at(vars(init_owner)["__init__"])
        init = (f"{init_owner.__name__}.__init__{f' at {at}' if at else ''} does not call super().__init__()"
                if init_owner is not QuantizationConfig else "QuantizationConfig.__init__ was not run")
        names = " and ".join(missing) + (" attributes" if len(missing) > 1 else " attribute")
        contract, message = "config: __init__", (f"{raised}: {init}, so the config has no {names}, which "
                                                 "QuantizationConfig.__init__ sets (is_layer_skipped reads them); "
                                                 f"{init_fix(quant_config)}")
    else:
        contract, message = RAISED_IN_GET_QUANT_METHOD, (f"{raised}; a bug in the plugin's get_quant_method: the "
                                                         "exception it raised is chained below")
    error = PluginError(message)
    error.contract = contract
    return error
