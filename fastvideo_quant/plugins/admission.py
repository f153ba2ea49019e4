"""Admitting one plugin object into the pluggy manager, and running its hooks into the registry.

Each step raises :class:`PluginError` naming the plugin and its distribution once, saying what is wrong in the
plugin's terms (a hook left unmarked, a misspelled hook, a class where an instance belongs) and where; the manager
records it and leaves that plugin out.
"""

from __future__ import annotations

import difflib
import inspect
import re
from types import ModuleType

import pluggy

from fastvideo_quant.errors import PluginError, stops_the_process
from fastvideo_quant.plugins import hookspecs
from fastvideo_quant.plugins.failures import defined_at, exception_line, packages_of, plugin_location
from fastvideo_quant.plugins.registry import Registry

#: The hook names plugins may implement (the hookspecs).
HOOKS = sorted(n for n, f in vars(hookspecs).items()
               if inspect.isfunction(f) and hasattr(f, f"{hookspecs.PROJECT_NAME}_spec"))
REGISTER_HOOK = "register_quantization_methods"


def what_it_is(plugin: object) -> str:
    """``module fvq_x.hooks`` / ``a MyHooks instance``: the plugin object, as its author wrote it."""
    if isinstance(plugin, ModuleType):
        return f"module {plugin.__name__}"
    return f"a {type(plugin).__name__} instance"


def admit(pm: pluggy.PluginManager, plugin: object, name: str, where: str, entry_point: str | None,
          entry_name: str | None = None) -> None:
    """Register ``plugin`` with pluggy under ``name``, checked: an object, with at least one hook, every hook known.
    ``entry_point`` is the ``module:attr`` it was loaded from (None: given to ``register_plugin``), ``entry_name`` its
    entry point's name where that is not ``name`` (a plugin named ``distribution:entry-point``)."""
    entry_name = entry_name or name
    source = f"its entry point '{entry_name} = {entry_point}'" if entry_point else "the object given to register_plugin"
    if isinstance(plugin, type):
        cls = plugin.__qualname__
        fix = (f"point it at a module of @hookimpl functions, or at an instance: HOOKS = {cls}() in {plugin.__module__} "
               f"and the entry point '{entry_name} = {plugin.__module__}:HOOKS'" if entry_point else
               f"pass a module of @hookimpl functions, or an instance: register_plugin({cls}(), {name!r})")
        raise PluginError(f"{where}: {source} is the class {plugin.__module__}.{cls}, not a module or an instance, so "
                          f"its hooks would be called without an instance; {fix}")
    _check_not_registered(pm, plugin, name, where, source)
    try:
        pm.register(plugin, name=name)
    except ValueError as exc:  # pluggy: the name or the object is registered already (checked above)
        raise PluginError(f"{where} could not be registered ({source}): {str(exc).splitlines()[0]}") from exc
    except pluggy.PluginValidationError as exc:  # a hook's arguments do not match its spec
        pm.unregister(name=name)
        raise PluginError(f"{where}: {_invalid_hookimpl(plugin, exc)}") from exc
    unknown = sorted(h.name for h in pm.get_hookcallers(plugin) or [] if not h.has_spec())
    if unknown:
        pm.unregister(name=name)
        raise PluginError(
            f"{where}: {what_it_is(plugin)} marks {', '.join(map(repr, unknown))} @hookimpl, which is not a "
            f"{hookspecs.PROJECT_NAME} hook{_did_you_mean(unknown)}; the hooks: {_signatures()}"
        )
    if not pm.get_hookcallers(plugin):
        pm.unregister(name=name)
        raise PluginError(f"{where} implements no hook: {_why_no_hooks(plugin, source, entry_point is not None)}")
    problem = _register_argument_problem(pm, plugin, name)
    if problem:
        pm.unregister(name=name)
        raise PluginError(f"{where}: {problem}")


def _defined_at(function: object) -> str:
    """``file:line`` of a function's ``def`` (its first decorator), or its qualified name when unknown."""
    return defined_at(function) or getattr(function, "__qualname__", repr(function))


def _expected(hook: str) -> str:
    """The signature to write for ``hook``, as a function and as a method; for the register hook, how to use it."""
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    use = (", calling register(config_cls, *method_classes, weight_loader_v2=False) once per method"
           if hook == REGISTER_HOOK else "")
    return f"expected {hook}({args}) (a method of an instance: {hook}(self, {args})){use}"


def _hook_function(plugin: object, hook: str) -> object | None:
    """The function of ``plugin`` marked ``@hookimpl`` for ``hook`` (named after it, or with ``specname=hook``)."""
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    named = getattr(plugin, hook, None)
    if callable(named) and getattr(named, marker, None) is not None:
        return named
    for attr in dir(plugin):
        fn = getattr(plugin, attr, None)
        if callable(fn) and (getattr(fn, marker, None) or {}).get("specname") == hook:
            return fn
    return None


def _invalid_hookimpl(plugin: object, exc: pluggy.PluginValidationError) -> str:
    """What pluggy refused, in the plugin's terms: the hook function as written, its file:line, the arguments the
    hook does not pass, and the signature to write (pluggy's own message only names the module)."""
    pluggy_says = "; ".join(str(exc).splitlines())
    found = re.search(r"hook '(\w+)'", str(exc))
    hook = found.group(1) if found else None
    fn = _hook_function(plugin, hook) if hook in HOOKS else None
    if fn is None:
        return (f"invalid hook implementation in {what_it_is(plugin)}: {pluggy_says}; the hooks' signatures: "
                f"{_signatures()}")
    spec = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    args = list(inspect.signature(fn).parameters)  # (a bound method's, without self: as pluggy reads it)
    extra, missing = [a for a in args if a not in spec], [a for a in spec if a not in args]
    if extra:
        why = (f"takes {', '.join(map(repr, extra))}, which the hook does not pass (it passes only "
               f"{', '.join(map(repr, spec))}, by name)")
        if len(extra) == 1 and len(missing) == 1:
            why += f": rename {extra[0]!r} to {missing[0]!r}"
        elif not missing:
            why += f": drop {', '.join(map(repr, extra))}"
    else:
        why = f"pluggy refuses: {pluggy_says}"
    return f"{what_it_is(plugin)} implements {hook}({', '.join(args)}) at {_defined_at(fn)}, which {why}; {_expected(hook)}"


def _register_argument_problem(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Why ``plugin``'s register hook could register nothing: pluggy admits an implementation taking a subset of the
    spec's arguments, but one without ``register`` has no way to register a method."""
    for impl in pm.hook.register_quantization_methods.get_hookimpls():
        if impl.plugin_name == name and "register" not in impl.argnames:
            return (f"{what_it_is(plugin)} implements {REGISTER_HOOK}({', '.join(impl.argnames)}) at "
                    f"{_defined_at(impl.function)}, which takes no 'register' argument, so it cannot register any "
                    f"method; {_expected(REGISTER_HOOK)}")
    return None


def _check_not_registered(pm: pluggy.PluginManager, plugin: object, name: str, where: str, source: str) -> None:
    """A plugin object is registered once, under one name; a name names one plugin. Said in the plugin's terms
    (pluggy's ValueError shows the object's repr and its hook table)."""
    other = pm.get_name(plugin)
    if other is not None:
        raise PluginError(
            f"{where} could not be registered ({source}): {what_it_is(plugin)} is already registered, as plugin "
            f"{other!r}, and a plugin object registers once, under one name; its methods are those plugin {other!r} "
            "registers (fvq plugins lists them)"
        )
    if pm.has_plugin(name):
        raise PluginError(f"{where} could not be registered ({source}): the name {name!r} is taken by "
                          f"{what_it_is(pm.get_plugin(name))}; plugin names must be unique")


def _signatures() -> str:
    return ", ".join(f"{h}({', '.join(inspect.signature(getattr(hookspecs, h)).parameters)})" for h in HOOKS)


def _did_you_mean(names: list[str]) -> str:
    close = sorted({m for n in names for m in difflib.get_close_matches(n, HOOKS, n=1, cutoff=0.6)})
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _why_no_hooks(plugin: object, source: str, from_entry_point: bool) -> str:
    """Why pluggy found no hook in ``plugin``: an unmarked function named like a hook, a near miss, or none at all."""
    functions = [n for n in dir(plugin) if not n.startswith("_") and callable(getattr(plugin, n, None))]
    unmarked = [n for n in functions if n in HOOKS]
    if unmarked:
        return (f"{what_it_is(plugin)} has {', '.join(unmarked)}, but not marked @hookimpl, so it is never called; "
                "mark it with @fastvideo_quant.plugins.hookimpl")
    near = sorted({n for n in functions for _ in difflib.get_close_matches(n, HOOKS, n=1, cutoff=0.75)})
    if near:
        return (f"{what_it_is(plugin)} has {', '.join(near)}, which is not a hook name and not marked @hookimpl"
                f"{_did_you_mean(near)}; name it after the hook and mark it with @fastvideo_quant.plugins.hookimpl")
    fix = ("point the entry point at the module holding your @fastvideo_quant.plugins.hookimpl functions (e.g. "
           "my_plugin.hooks)" if from_entry_point else "pass the module or object holding your "
           "@fastvideo_quant.plugins.hookimpl functions")
    return f"{what_it_is(plugin)} ({source}) has no function marked @hookimpl (hooks: {_signatures()}); {fix}"


def run_hooks(pm: pluggy.PluginManager, registry: Registry, name: str, plugin: object, distribution: str | None,
              where: str) -> None:
    """Call ``plugin``'s ``register_quantization_methods`` with a callback bound to it, and add what it registered
    to ``registry`` — all of it, or (on PluginError) none."""
    staged = registry.begin(name, distribution, where)
    packages = packages_of(plugin)
    hook_args = {"register": staged.register}
    for impl in pm.hook.register_quantization_methods.get_hookimpls():
        if impl.plugin_name != name:
            continue
        try:
            returned = impl.function(*(hook_args[arg] for arg in impl.argnames))  # its arguments, as pluggy calls
        except PluginError as exc:  # a registration the callback refused: say where the plugin made it
            at = plugin_location(exc, packages)
            raise PluginError(f"{exc} (registered at {at})" if at else str(exc)) from exc
        except BaseException as exc:  # SystemExit too: a plugin's ``sys.exit`` must not end the host
            if stops_the_process(exc):
                raise
            raise PluginError(f"{where} raised in register_quantization_methods: "
                              f"{exception_line(exc, packages)}") from exc
        if returned is not None:
            raise PluginError(_returned_problem(where, impl.function, returned, [r.name for r in staged.items]))
    registry.add(staged)


def _returned_problem(where: str, function: object, returned: object, registered: list[str]) -> str:
    """A register hook that returned something (``return [(MyConfig, MyMethod)]``): its return value is not read,
    so the plugin would load registering nothing (or not what it returned), and be listed as such."""
    shown = repr(returned)
    shown = shown if len(shown) <= 200 else shown[:197] + "..."
    head = (f"{where}: its {REGISTER_HOOK} (at {_defined_at(function)}) returned {shown} ({type(returned).__name__}) "
            "instead of None; the hook's return value is not read, so ")
    if registered:
        return (head + f"whatever it returns is dropped (it registered {registered} through register()): return "
                "nothing, and call register(config_cls, *method_classes, weight_loader_v2=...) for each method")
    return (head + "nothing was registered: call register(config_cls, *method_classes, weight_loader_v2=...) once per "
            "method inside the hook instead of returning them")
