"""The pluggy plugin manager: loading entry points, building the registry once.

Plugins load lazily, on the first use of the registry, and once. Environment:

* ``FVQ_PLUGINS=a,b`` — allowlist: load only these entry points (by entry-point
  or distribution name).
* ``FVQ_DISABLE_PLUGINS=a,b`` — blocklist: skip these.
* ``FVQ_DISABLE_PLUGIN_AUTOLOAD=1`` (or ``true`` / ``yes``; ``0``, ``false`` and
  anything else leave autoload on) — load no entry points at all (plugins can
  still be added with :func:`register_plugin`).

``FVQ_PLUGINS`` naming no installed entry point or distribution warns, listing the
available ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import threading
import warnings
from typing import Any

import pluggy

from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins import hookspecs
from fastvideo_quant.plugins.registry import Registry

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

_lock = threading.RLock()
_extra: list[tuple[object, str]] = []


@dataclasses.dataclass(frozen=True)
class _State:
    """One consistent build: readers take it whole, so a concurrent reset() cannot mix two builds."""

    pm: pluggy.PluginManager
    registry: Registry
    dists: dict[str, md.Distribution | None]


_state: _State | None = None


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What ``get_plugins()`` reports about one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    methods: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


#: Values of FVQ_DISABLE_PLUGIN_AUTOLOAD that disable autoload (case-insensitive); "0", "false", "" and the rest do not.
TRUE_VALUES = ("1", "true", "yes")


def _autoload_disabled() -> bool:
    return os.environ.get("FVQ_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in TRUE_VALUES


def _warn_unknown_allowlist(eps: list[md.EntryPoint]) -> None:
    """FVQ_PLUGINS naming no installed entry point or distribution would load nothing silently: warn, naming them."""
    allow = _env_names("FVQ_PLUGINS")
    if not allow:
        return
    known = {ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist is not None}
    unknown = sorted(allow - known)
    if unknown:
        warnings.warn(
            f"FVQ_PLUGINS={os.environ['FVQ_PLUGINS']} names {unknown}, which match no installed entry point or "
            f"distribution of the {ENTRY_POINT_GROUP!r} group; available entry points: "
            f"{sorted(ep.name for ep in eps)} (see `fvq plugins --all`)",
            stacklevel=4,
        )


def _not_selected_reason(ep: md.EntryPoint) -> str | None:
    """Why the FVQ_* variables keep ``ep`` from loading, or None when it loads."""
    if _autoload_disabled():
        return f"FVQ_DISABLE_PLUGIN_AUTOLOAD is set ({os.environ['FVQ_DISABLE_PLUGIN_AUTOLOAD']})"
    names = {ep.name}
    if ep.dist is not None:
        names.add(ep.dist.name)
    allow = _env_names("FVQ_PLUGINS")
    block = _env_names("FVQ_DISABLE_PLUGINS") or set()
    if names & block:
        return f"listed in FVQ_DISABLE_PLUGINS={os.environ['FVQ_DISABLE_PLUGINS']}"
    if allow is not None and not names & allow:
        return f"not listed in FVQ_PLUGINS={os.environ['FVQ_PLUGINS']}"
    return None


def _selected(ep: md.EntryPoint) -> bool:
    return _not_selected_reason(ep) is None


def _describe(name: str, dists: dict[str, md.Distribution | None]) -> str:
    dist = dists.get(name)
    if dist is None:
        return f"plugin {name!r}"
    return f"plugin {name!r} (distribution {dist.name!r} {dist.version})"


def _load_entry_points(pm: pluggy.PluginManager, dists: dict[str, md.Distribution | None],
                       only: str | None = None) -> None:
    if _autoload_disabled() and only is None:
        return
    eps = list(md.entry_points(group=ENTRY_POINT_GROUP))
    if only is None:
        _warn_unknown_allowlist(eps)
    for ep in eps:
        if (ep.name != only) if only is not None else not _selected(ep):
            continue
        if pm.get_plugin(ep.name) is not None:
            first = dists.get(ep.name)
            if first is not None and ep.dist is not None and first.name == ep.dist.name:
                continue  # the same distribution seen twice on sys.path
            raise PluginError(
                f"entry point {ep.name!r} of distribution {ep.dist.name if ep.dist else None!r} has the same name as "
                f"{_describe(ep.name, dists)}; plugin names must be unique. Uninstall one, or block one with "
                f"FVQ_DISABLE_PLUGINS"
            )
        dists[ep.name] = ep.dist
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"{_describe(ep.name, dists)} failed to import ({ep.value}): {type(exc).__name__}: {exc}. "
                f"Fix or reinstall it, or skip it with FVQ_DISABLE_PLUGINS={ep.name}"
            ) from exc
        _register_checked(pm, plugin, ep.name, dists)


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str,
                      dists: dict[str, md.Distribution | None]) -> None:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        raise PluginError(
            f"{_describe(name, dists)} has an invalid hook implementation: {exc}. "
            f"Known hooks: {sorted(h for h in dir(hookspecs) if h.startswith('register_'))}"
        ) from exc
    except ValueError as exc:  # pluggy: name already registered
        raise PluginError(f"{_describe(name, dists)} could not be registered: {exc}") from exc


def _build(only: str | None = None, inprocess: bool = True) -> _State:
    """Load the plugins and build the registry: every selected entry point and the in-process plugins, or (for
    ``fvq plugins`` telling a broken or conflicting plugin from good ones) just the entry point ``only`` and / or
    just the in-process plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    dists: dict[str, md.Distribution | None] = {}  # plugin name -> its distribution (None: registered in-process)
    if only != "":
        _load_entry_points(pm, dists, only)
    for plugin, name in _extra if inprocess else []:
        dists.setdefault(name, None)
        _register_checked(pm, plugin, name, dists)
    registry = Registry()
    for impl in pm.hook.register_quantization_methods.get_hookimpls():
        dist = dists.get(impl.plugin_name)
        register = registry.make_register(impl.plugin_name, dist.name if dist else None)
        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{_describe(impl.plugin_name, dists)} raised in register_quantization_methods: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return _State(pm, registry, dists)


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, loading plugins on first use."""
    return _ensure().pm


def get_registry() -> Registry:
    """The method registry, loading plugins on first use."""
    return _ensure().registry


def _ensure() -> _State:
    global _state
    with _lock:
        if _state is None:
            _state = _build()
        return _state


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Add an in-process plugin (a module or object with hookimpls) and rebuild the registry.

    For tests and applications that define methods without packaging them.
    On error nothing is added.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        if any(n == name for _, n in _extra):
            raise PluginError(f"plugin {name!r} is already registered in-process; unregister_plugin it first")
        _extra.append((plugin, name))
        try:
            reset()
            _ensure()
        except Exception:
            _extra.pop()
            reset()
            raise


def ensure_registered(method: str, hooks_module: str) -> None:
    """Register ``method``'s plugin in-process from ``hooks_module`` unless an installed entry point already did
    (a bare checkout on PYTHONPATH, a spawned test rank, a bare device machine)."""
    if method not in get_registry().by_name:
        register_plugin(importlib.import_module(hooks_module), method)


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin added with :func:`register_plugin`."""
    with _lock:
        _extra[:] = [(p, n) for p, n in _extra if n != name]
        reset()


def reset() -> None:
    """Forget loaded plugins; the next use reloads them (e.g. after changing FVQ_* variables)."""
    global _state
    with _lock:
        _state = None


def get_plugins() -> list[PluginInfo]:
    """Name, distribution, version, hooks and methods of each loaded plugin."""
    return plugin_infos(_ensure())


def build_isolated(entry_point: str | None) -> _State:
    """The plugins of one entry point alone (``None``: the in-process plugins alone), built aside: the global
    state is untouched. Raises :class:`PluginError` as a full build would."""
    with _lock:
        return _build(only=entry_point, inprocess=False) if entry_point is not None else _build(only="")


def plugin_infos(state: _State) -> list[PluginInfo]:
    """``get_plugins()`` of one build."""
    pm, registry = state.pm, state.registry
    infos = []
    for name, plugin in pm.list_name_plugin():
        dist = state.dists.get(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        methods = sorted(r.name for r in registry.by_name.values() if r.plugin == name)
        infos.append(
            PluginInfo(name, dist.name if dist else None, dist.version if dist else None, hooks, methods)
        )
    return infos


@dataclasses.dataclass(frozen=True)
class EntryPointStatus:
    """One entry point of the ``fastvideo_quant`` group and whether the FVQ_* variables let it load."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    selected: bool
    reason: str | None  # why it is not selected

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_entry_points() -> list[EntryPointStatus]:
    """Every installed entry point of the group, selected or not (by FVQ_PLUGINS / FVQ_DISABLE_PLUGINS /
    FVQ_DISABLE_PLUGIN_AUTOLOAD) and why; loads nothing. For ``fvq plugins --all``."""
    out = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        reason = _not_selected_reason(ep)
        dist = ep.dist
        out.append(EntryPointStatus(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None,
                                    reason is None, reason))
    return out


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


def _missing_abstract(cls: type) -> list[str]:
    """Abstract methods ``cls`` leaves unimplemented (also ones deleted after the class was made)."""
    names = set(getattr(cls, "__abstractmethods__", ()) or ())
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False) and getattr(
                    value, "__isabstractmethod__", False):
                names.add(name)
    return sorted(names)


def quant_method_for(quant_config: Any, layer: object, prefix: str) -> Any:
    """``quant_config.get_quant_method(layer, prefix)``, checked: a plugin bug (an abstract method class, a class
    instead of an instance, a method missing ``apply``/``create_weights``) is a :class:`PluginError` naming the
    plugin, its distribution, the method class and what it lacks, not a bare ``TypeError`` later."""
    from fastvideo_quant.quantization.base import QuantizeMethodBase

    config_cls = type(quant_config)
    where = f"{config_cls.__name__}.get_quant_method(layer {prefix!r} ({type(layer).__name__}))"
    try:
        method = quant_config.get_quant_method(layer, prefix=prefix)
    except TypeError as exc:
        if "abstract" not in str(exc):
            raise
        raise PluginError(
            f"{describe_method_owner(config_cls)}: {where} raised {exc}; the method class it instantiates must "
            "implement every abstract method of LinearMethodBase (create_weights, apply)"
        ) from exc
    if method is None:
        return None
    if isinstance(method, type):
        missing = _missing_abstract(method) if issubclass(method, QuantizeMethodBase) else []
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
    missing = _missing_abstract(type(method))
    if missing:
        raise PluginError(
            f"{describe_method_owner(config_cls)}: {where} returned a {type(method).__name__}, which does not "
            f"implement the abstract methods {missing}; implement them in {type(method).__name__}"
        )
    return method
