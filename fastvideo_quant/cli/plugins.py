"""``fvq plugins [--all] [--json]``: installed plugins, their methods, and whether each can run here.

A plugin that fails to load is an ``error`` line with its message (not a
traceback); the others are still listed. ``--all`` adds entry points that the
FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / FVQ_DISABLE_PLUGIN_AUTOLOAD variables keep
from loading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _broken_entry_points(selected: list) -> dict[str, str]:
    """Load each selected entry point alone to find which ones fail, with their messages."""
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.plugins import manager

    errors = {}
    for ep in selected:
        with _env(FVQ_PLUGINS=ep.name, FVQ_DISABLE_PLUGINS=None):
            manager.reset()
            try:
                manager.get_registry()
            except PluginError as exc:
                errors[ep.name] = str(exc)
    manager.reset()
    return errors


def collect() -> list[dict[str, Any]]:
    """One dict per plugin (loaded or error) and per entry point not selected."""
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.plugins import get_plugins, get_registry, list_entry_points, manager

    eps = list_entry_points()
    selected = [e for e in eps if e.selected]
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    registry = None
    try:
        infos = get_plugins()
        registry = get_registry()
    except PluginError as first:
        errors = _broken_entry_points(selected) or {"?": str(first)}
        with _env(FVQ_DISABLE_PLUGINS=",".join(filter(None, [os.environ.get("FVQ_DISABLE_PLUGINS"), *errors]))):
            manager.reset()
            try:
                infos = get_plugins()
                registry = get_registry()  # built under the same blocklist
            except PluginError as exc:  # e.g. two plugins register the same method name
                infos, errors = [], {**errors, "(together)": str(exc)}
        manager.reset()
    by_ep = {e.name: e for e in eps}
    for info in infos:
        methods = []
        for m in info.methods:
            reg = registry.by_name[m]
            ok, why = method_availability(reg.config_cls)
            methods.append({"name": m, "available": ok, "reason": why, "weight_loader_v2": reg.weight_loader_v2})
        ep = by_ep.get(info.name)
        rows.append({"name": info.name, "status": "loaded", "distribution": info.distribution,
                     "version": info.version, "entry_point": ep.value if ep else None, "hooks": info.hooks,
                     "methods": methods})
    for name, msg in errors.items():
        ep = by_ep.get(name)
        rows.append({"name": name, "status": "error", "distribution": ep.distribution if ep else None,
                     "version": ep.version if ep else None, "entry_point": ep.value if ep else None, "error": msg})
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
    return 1 if any(r["status"] == "error" for r in rows) else 0
