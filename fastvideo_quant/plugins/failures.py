"""A plugin that failed to load: what is recorded, how it is described, and the warning its absence raises.

One broken plugin must not break the others (a pipeline that only wants ``fp8`` should not die because an unrelated
plugin does not import). So a failure is recorded with its message and the plugin is left out; the first use of the
registry warns once per failure (:class:`PluginLoadWarning`), and asking for a method no loaded plugin registers, or
``fvq plugins``, reports it as an error. Nothing is silent.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import inspect
from types import ModuleType, TracebackType
from typing import Any


class PluginLoadWarning(UserWarning):
    """A plugin failed to load, or two plugins registered one method name: those methods are left out."""


class PluginSelectionWarning(UserWarning):
    """``FVQ_PLUGINS`` names something that is neither an installed entry point nor a distribution of one, so it
    selects nothing (a misspelling would otherwise leave the plugin out silently)."""


def describe_plugin(name: str, dist: md.Distribution | None) -> str:
    """``plugin 'x' (distribution 'd' 1.0)``, or ``plugin 'x' (in-process)``: the plugin, once, for messages."""
    if dist is None:
        return f"plugin {name!r} (in-process)"
    return f"plugin {name!r} (distribution {dist.name!r} {dist.version})"


def fix_hint(name: str, dist: md.Distribution | None) -> str:
    """What a user can do about a plugin that does not load, short of fixing its code."""
    if dist is None:
        return f"fix it, or remove it with fastvideo_quant.plugins.unregister_plugin({name!r})"
    return f"fix it (or tell its author), uninstall it (pip uninstall {dist.name}), or skip it with FVQ_DISABLE_PLUGINS={name}"


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """One plugin that failed to load. ``problem`` names the plugin and its distribution once and says what is
    wrong and where; ``fix`` says what a user can do."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    problem: str
    fix: str
    #: The formatted traceback of the exception behind the failure (its causes included), or None when there was
    #: none (a plugin refused for a name clash); ``fvq plugins --traceback`` prints it.
    traceback: str | None = None

    @property
    def message(self) -> str:
        """The error: ``plugin 'x' (distribution 'd' 1.0) failed to import m: ... . Fix it ...``."""
        return f"{self.problem}. {capital(self.fix)}"

    @property
    def warning(self) -> str:
        """The warning a use of the other plugins' methods gives."""
        return f"{self.problem}; its methods are left out (the other plugins' methods work). {capital(self.fix)}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def packages_of(plugin: object) -> set[str]:
    """Top-level package names of a plugin object's own code (a module, a class, or an instance's class)."""
    if isinstance(plugin, ModuleType):
        name = plugin.__name__
    elif isinstance(plugin, type):
        name = plugin.__module__
    else:
        name = type(plugin).__module__
    return {name.split(".")[0]}


def entry_point_packages(value: str) -> set[str]:
    """The top-level package that an entry point's ``module:attr`` value imports."""
    return {value.split(":")[0].strip().split(".")[0]}


def defined_at(function: object) -> str | None:
    """``file:line`` of a function's ``def`` (its first decorator; a classmethod's or a wrapper's function), or None
    when it has no code (a builtin, a partial)."""
    code = getattr(inspect.unwrap(getattr(function, "__func__", function)), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else None


def plugin_location(exc: BaseException, packages: set[str]) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback in the plugin's own code (modules of
    ``packages``), else of the innermost frame outside the import machinery, pluggy and this package; None when
    there is none."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    own = other = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        code, module = tb.tb_frame.f_code, str(tb.tb_frame.f_globals.get("__name__", ""))
        where = f"{code.co_filename}:{tb.tb_lineno}"
        if module.split(".")[0] in packages:
            own = where
        elif not code.co_filename.startswith("<") and module.split(".")[0] not in ("importlib", "pluggy",
                                                                                  "fastvideo_quant"):
            other = where
        tb = tb.tb_next
    return own or other


def exception_line(exc: BaseException, packages: set[str]) -> str:
    """``RuntimeError: boom (at /path/hooks.py:3)``: an exception in one line, with where the plugin raised it."""
    where = plugin_location(exc, packages)
    return f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
