"""The installed entry points of the ``fastvideo_quant`` group: the plugin name each loads as, and which the FVQ_*
variables select.

A plugin is one distribution's entry point. Its name is the entry point's name, unless another installed distribution
has an entry point of that name: then a third party's plugin is named ``distribution:entry-point`` (the built-in
distribution keeps its bare names; two third parties are both qualified). So a third party's ``fp8 = ...`` entry point
neither knocks out the built-in fp8 plugin nor is knocked out by it, whatever the order on sys.path, and each plugin's
messages, fixes and ``FVQ_DISABLE_PLUGINS`` advice name it alone. The name depends on what is installed, not on the
FVQ_* variables, so it is the same in ``fvq plugins --all`` as in the plugin's own messages.

``FVQ_PLUGINS`` / ``FVQ_DISABLE_PLUGINS`` take plugin names, ``distribution:entry-point`` names, distribution names
and bare entry-point names (every distribution's plugin of that entry point: a block list fails closed). A name
matching none selects or blocks nothing; in ``FVQ_PLUGINS`` it warns
(:class:`~fastvideo_quant.plugins.failures.PluginSelectionWarning`), in ``FVQ_DISABLE_PLUGINS`` only where it looks
meant for an installed plugin, saying which name to write (an import package's name, a name spelled otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
import re
from collections import defaultdict
from typing import Any

from fastvideo_quant.errors import warn_at_caller
from fastvideo_quant.plugins import hookspecs
from fastvideo_quant.plugins.failures import PluginSelectionWarning
from fastvideo_quant.plugins.registry import BUILTIN_DISTRIBUTION

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: Values of FVQ_DISABLE_PLUGIN_AUTOLOAD that disable autoload (case-insensitive); "0", "false", "" and the rest do not.
TRUE_VALUES = ("1", "true", "yes")


@dataclasses.dataclass(frozen=True)
class NamedEntryPoint:
    """One installed entry point and the plugin name it loads as."""

    plugin: str
    entry_point: md.EntryPoint

    @property
    def dist(self) -> md.Distribution | None:
        return self.entry_point.dist

    @property
    def answers_to(self) -> set[str]:
        """The names FVQ_PLUGINS / FVQ_DISABLE_PLUGINS select it by: its plugin name, its distribution's, and its
        entry point's bare name and ``distribution:entry-point`` — so a block list fails closed: ``mine`` blocks every
        distribution's ``mine`` (a second one installed later does not unblock the first), and ``dist:mine`` only that
        one (``fastvideo-quant:fp8``: the built-in alone)."""
        dist = {self.dist.name, f"{self.dist.name}:{self.entry_point.name}"} if self.dist is not None else set()
        return {self.plugin, self.entry_point.name} | dist


def _owner(ep: md.EntryPoint) -> str:
    """What tells apart entry points of one name: the distribution (the entry point's value where it has none)."""
    return ep.dist.name if ep.dist is not None else ep.value


def installed() -> list[NamedEntryPoint]:
    """Every installed entry point of the group, each once (a distribution found twice on sys.path — a stale copy on
    PYTHONPATH — is the first found, as its import would be), named as the module docstring says."""
    seen: dict[tuple[str, str], md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault((_owner(ep), ep.name), ep)
    owners: dict[str, set[str]] = defaultdict(set)
    for owner, name in seen:
        owners[name].add(owner)
    return [NamedEntryPoint(name if len(owners[name]) == 1 or owner == BUILTIN_DISTRIBUTION else f"{owner}:{name}", ep)
            for (owner, name), ep in seen.items()]


def env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def autoload_disabled() -> bool:
    return os.environ.get("FVQ_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in TRUE_VALUES


def not_selected_reason(named: NamedEntryPoint) -> str | None:
    """Why the FVQ_* variables keep the entry point from loading, or None when it loads."""
    if autoload_disabled():
        return f"FVQ_DISABLE_PLUGIN_AUTOLOAD is set ({os.environ['FVQ_DISABLE_PLUGIN_AUTOLOAD']})"
    allow = env_names("FVQ_PLUGINS")
    if named.answers_to & (env_names("FVQ_DISABLE_PLUGINS") or set()):
        return f"listed in FVQ_DISABLE_PLUGINS={os.environ['FVQ_DISABLE_PLUGINS']}"
    if allow is not None and not named.answers_to & allow:
        return f"not listed in FVQ_PLUGINS={os.environ['FVQ_PLUGINS']}"
    return None


#: What a name matching nothing means, per variable (FVQ_PLUGINS's wording is older).
_CONSEQUENCE = {"FVQ_PLUGINS": "", "FVQ_DISABLE_PLUGINS": ", so they block nothing"}


def warn_unknown_names(named: list[NamedEntryPoint]) -> None:
    """FVQ_PLUGINS naming no installed plugin or distribution would select nothing, silently: warn, naming them (and
    the name to write, for a typo or an import package's name). FVQ_DISABLE_PLUGINS likewise, only where a name is
    recognisably meant for an installed plugin: blocking one that is not installed is a common precaution."""
    known = set().union(*(n.answers_to for n in named))
    allow, block = env_names("FVQ_PLUGINS"), env_names("FVQ_DISABLE_PLUGINS") or set()
    if allow == set():  # (set, but to nothing: the allowlist then lets no plugin load)
        warn_at_caller(f"FVQ_PLUGINS is set but names no plugin ({os.environ['FVQ_PLUGINS']!r}), so no plugin loads, the "
                       "built-in ones included; unset it to load every installed plugin, or name the ones to load",
                       PluginSelectionWarning)
    both = sorted((allow or set()) & block)
    if both:
        warn_at_caller(f"FVQ_PLUGINS and FVQ_DISABLE_PLUGINS both name {both}: FVQ_DISABLE_PLUGINS wins, so they do not "
                       "load; remove them from one of the two", PluginSelectionWarning)
    for var, consequence in _CONSEQUENCE.items():
        unknown = sorted((env_names(var) or set()) - known)
        hints = [h for h in (_hint(name, named) for name in unknown) if h]
        if not unknown or (var == "FVQ_DISABLE_PLUGINS" and not hints):
            continue  # (blocking a plugin that is not installed — "make sure it is off" — blocks what it means to)
        warn_at_caller(
            f"{var}={os.environ[var]} names {unknown}, which match no installed entry point or distribution of the "
            f"{ENTRY_POINT_GROUP!r} group{consequence}; " + "".join(f"{h}; " for h in hints)
            + f"available entry points: {sorted(n.plugin for n in named)} (see `fvq plugins --all`)",
            PluginSelectionWarning,
        )


def _canonical(name: str) -> str:
    """``name`` lowercase without separators: 'fp-8', 'FP_8' and 'fp8' are one name spelled otherwise."""
    return re.sub(r"[-_.\s]+", "", name).lower()


def _hint(name: str, named: list[NamedEntryPoint]) -> str | None:
    """Which name to write for ``name``, where it is recognisably meant for installed plugins."""
    named = sorted(named, key=lambda n: n.plugin)  # (not sys.path order)
    namesakes = [n for n in named if n.entry_point.name == name]  # (qualified, or ``name`` would be known)
    if namesakes:
        return f"{name!r} is the entry point of {_described(namesakes)}, of different distributions: name {_either(namesakes)}"
    imported = [n for n in named if name in _import_names(n.entry_point)]
    if imported:
        return f"{name!r} is an import name of {_described(imported)}, not a plugin name: name {_either(imported)}"
    for n in named:
        for what, known in (("plugin", n.plugin), ("distribution", n.dist.name if n.dist else None)):
            if known is not None and _canonical(known) == _canonical(name):
                return f"{name!r} is {what} {known!r} spelled otherwise: name {known!r}"
    return None


def _import_names(ep: md.EntryPoint) -> set[str]:
    """``fvq_fp8`` and ``fvq_fp8.hooks`` for the entry point ``fvq_fp8.hooks``: what a user may take for its name."""
    parts = ep.module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _described(named: list[NamedEntryPoint]) -> str:
    return " and ".join(f"plugin {n.plugin!r}" + (f" (distribution {n.dist.name!r})" if n.dist else "") for n in named)


def _either(named: list[NamedEntryPoint]) -> str:
    return " or ".join(repr(n.plugin) for n in named)


@dataclasses.dataclass(frozen=True)
class EntryPointStatus:
    """One entry point of the ``fastvideo_quant`` group and whether the FVQ_* variables let it load."""

    name: str  # the entry point's name
    value: str
    distribution: str | None
    version: str | None
    selected: bool
    reason: str | None  # why it is not selected
    plugin: str  # the name it loads as: ``name``, or ``distribution:name`` beside another distribution's namesake

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_entry_points() -> list[EntryPointStatus]:
    """Every installed entry point of the group, selected or not (by FVQ_PLUGINS / FVQ_DISABLE_PLUGINS /
    FVQ_DISABLE_PLUGIN_AUTOLOAD) and why; loads nothing. For ``fvq plugins --all``."""
    out = []
    for named in installed():
        ep, dist, reason = named.entry_point, named.dist, not_selected_reason(named)
        out.append(EntryPointStatus(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None,
                                    reason is None, reason, named.plugin))
    return out
