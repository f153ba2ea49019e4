"""The installed entry points of the ``fastvideo_quant`` group: the plugin name each loads as, and which the FVQ_*
variables select.

A plugin is one distribution's entry point. Its name is the entry point's name, unless another installed distribution
has an entry point of that name: then a third party's plugin is named ``distribution:entry-point`` (the built-in
distribution keeps its bare names; two third parties are both qualified). So a third party's ``fp8 = ...`` entry point
neither knocks out the built-in fp8 plugin nor is knocked out by it, whatever the order on sys.path, and each plugin's
messages, fixes and ``FVQ_DISABLE_PLUGINS`` advice name it alone. The name depends on what is installed, not on the
FVQ_* variables, so it is the same in ``fvq plugins --all`` as in the plugin's own messages.

``FVQ_PLUGINS`` / ``FVQ_DISABLE_PLUGINS`` take plugin names and distribution names; a name in ``FVQ_PLUGINS`` matching
neither warns (:class:`~fastvideo_quant.plugins.failures.PluginSelectionWarning`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
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
        """The names FVQ_PLUGINS / FVQ_DISABLE_PLUGINS select it by: its plugin name and its distribution's."""
        return {self.plugin} | ({self.dist.name} if self.dist is not None else set())


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


def warn_unknown_names(named: list[NamedEntryPoint]) -> None:
    """FVQ_PLUGINS naming no installed plugin or distribution would load nothing silently: warn, naming them."""
    allow = env_names("FVQ_PLUGINS")
    if not allow:
        return
    unknown = sorted(allow - set().union(*(n.answers_to for n in named)))
    if unknown:
        warn_at_caller(
            f"FVQ_PLUGINS={os.environ['FVQ_PLUGINS']} names {unknown}, which match no installed entry point or "
            f"distribution of the {ENTRY_POINT_GROUP!r} group; available entry points: "
            f"{sorted(n.plugin for n in named)} (see `fvq plugins --all`)",
            PluginSelectionWarning,
        )


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
