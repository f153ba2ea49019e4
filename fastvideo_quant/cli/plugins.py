"""``fvq plugins [--all] [--json]``: installed plugins, their methods, and whether each can run here.

A plugin that fails to load is an ``error`` line with its message (not a
traceback); the others are still listed. Two plugins registering one method name
both list, with an ``error: conflict`` line naming both and their distributions. ``--all`` adds entry points that the
FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / FVQ_DISABLE_PLUGIN_AUTOLOAD variables keep
from loading.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "list installed quantization plugins, their methods, and why a method cannot run here"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plugins", help=HELP, description=HELP + ".")
    p.add_argument("--all", action="store_true",
                   help="also list entry points blocked or disabled by FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / "
                        "FVQ_DISABLE_PLUGIN_AUTOLOAD")
    p.add_argument("--json", action="store_true", help="print JSON (one object per plugin or entry point)")
    return p


def method_availability(config_cls: type) -> tuple[bool, str]:
    """Whether the method can run on this machine, and why (or how)."""
    import torch

    try:
        reason = config_cls.unavailable_reason()
        if reason:
            return False, f"missing dependency: {reason}"
        need, cpu = config_cls.get_min_capability(), config_cls.cpu_support()
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, not raised
        return False, f"error: {config_cls.__name__} raised {type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        name = torch.cuda.get_device_name()
        if major * 10 + minor < need:
            return False, f"needs GPU compute capability >= {need // 10}.{need % 10}; {name} has {major}.{minor}"
        return True, f"GPU: {name} (sm_{major}{minor})"
    if cpu is None:
        return False, "needs a CUDA GPU (no CPU path) and none is visible"
    return True, f"CPU: {cpu}"


def _rows_of(state) -> list[dict[str, Any]]:
    """A ``loaded`` row per plugin of one build, with its methods and whether each can run here."""
    from fastvideo_quant.plugins import list_entry_points
    from fastvideo_quant.plugins.manager import plugin_infos

    by_ep = {e.name: e for e in list_entry_points()}
    rows = []
    for info in plugin_infos(state):
        methods = []
        for m in info.methods:
            reg = state.registry.by_name[m]
            ok, why = method_availability(reg.config_cls)
            methods.append({"name": m, "available": ok, "reason": why, "weight_loader_v2": reg.weight_loader_v2})
        ep = by_ep.get(info.name)
        rows.append({"name": info.name, "status": "loaded", "distribution": info.distribution,
                     "version": info.version, "entry_point": ep.value if ep else None, "hooks": info.hooks,
                     "methods": methods})
    return rows


def _rows_one_by_one(selected: list, together: str) -> list[dict[str, Any]]:
    """When the plugins fail to load together: each entry point (and the in-process plugins) built alone, so good
    plugins still list, a plugin that fails alone is an ``error`` row, and a failure only together (two plugins
    registering one method name) is a ``conflict`` row naming both plugins and their distributions."""
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.plugins import manager

    rows: list[dict[str, Any]] = []
    for ep in [*selected, None]:
        try:
            state = manager.build_isolated(ep.name if ep is not None else None)
        except PluginError as exc:
            rows.append({"name": ep.name if ep else "(in-process plugins)", "status": "error",
                         "distribution": ep.distribution if ep else None, "version": ep.version if ep else None,
                         "entry_point": ep.value if ep else None, "error": str(exc)})
            continue
        rows += _rows_of(state)
    if not any(r["status"] == "error" for r in rows):
        owners: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            for m in r["methods"]:
                owners.setdefault(m["name"], []).append(r)
        for method, rs in owners.items():
            if len(rs) < 2:
                continue
            who = " and ".join(f"plugin {r['name']!r} ({_dist(r)})" for r in rs)
            for r in rs:
                for m in r["methods"]:
                    if m["name"] == method:
                        m.update(available=False, reason="conflict: also registered by "
                                 + ", ".join(f"{o['name']!r} ({_dist(o)})" for o in rs if o is not r))
            rows.append({"name": method, "status": "conflict", "distribution": None, "version": None,
                         "entry_point": None, "plugins": [r["name"] for r in rs],
                         "error": f"method {method!r} is registered by {who}; method names must be unique, so "
                                  f"neither can be used. Uninstall one, or block one with "
                                  f"FVQ_DISABLE_PLUGINS={_blockable(rs)}"})
        if not any(r["status"] == "conflict" for r in rows):  # fails only together, for another reason
            rows.append({"name": "(all plugins together)", "status": "error", "distribution": None,
                         "version": None, "entry_point": None, "error": together})
    return rows


def _blockable(rows: list[dict[str, Any]]) -> str:
    """The plugin to suggest blocking: a third-party one rather than a built-in."""
    return next((r["name"] for r in rows if r.get("distribution") != "fastvideo-quant"), rows[-1]["name"])


def _dist(row: dict[str, Any]) -> str:
    return f"distribution {row['distribution']!r} {row['version']}" if row.get("distribution") else "in-process"


def collect() -> list[dict[str, Any]]:
    """One dict per plugin (loaded or error), per method conflict, and per entry point not selected."""
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.plugins import list_entry_points, manager

    eps = list_entry_points()
    try:
        state = manager._ensure()
    except PluginError as together:
        rows = _rows_one_by_one([e for e in eps if e.selected], str(together))
    else:
        rows = _rows_of(state)
    for e in eps:
        if not e.selected:
            rows.append({"name": e.name, "status": "not loaded", "distribution": e.distribution,
                         "version": e.version, "entry_point": e.value, "reason": e.reason})
    return rows


def render(rows: list[dict[str, Any]], show_all: bool) -> str:
    lines = []
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r.get("distribution") else "(in-process)"
        if r["status"] == "loaded":
            lines.append(f"{r['name']}  [{dist}]  hooks: {', '.join(r['hooks']) or '-'}")
            for m in r["methods"]:
                state = "available" if m["available"] else "unavailable"
                lines.append(f"    {m['name']}: {state} - {m['reason']}")
            if not r["methods"]:
                lines.append("    (registers no methods)")
        elif r["status"] == "error":
            lines.append(f"error: plugin {r['name']!r} [{dist}]: {r['error']}")
        elif r["status"] == "conflict":
            lines.append(f"error: conflict: {r['error']}")
        elif show_all:
            lines.append(f"{r['name']}  [{dist}]  not loaded: {r['reason']}")
    if not lines:
        lines.append("no plugins loaded" + ("" if show_all else " (--all shows entry points kept from loading)"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = collect()
    if not args.all:
        rows_out = [r for r in rows if r["status"] != "not loaded"]
    else:
        rows_out = rows
    print(json.dumps(rows_out, indent=2) if args.json else render(rows_out, args.all))
    return 1 if any(r["status"] in ("error", "conflict") for r in rows) else 0
