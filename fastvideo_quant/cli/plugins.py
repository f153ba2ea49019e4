"""``fvq plugins [--all] [--json] [--traceback]``: installed plugins, their methods, and whether each can run here.

A plugin that fails to load is an ``error`` line with its message (``--traceback`` adds the traceback of the
exception behind it, as JSON always does); the others are still listed. Two plugins registering one method name
both list, with an ``error: conflict`` line naming both and their distributions. ``--all`` adds entry points that the
FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / FVQ_DISABLE_PLUGIN_AUTOLOAD variables keep
from loading.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastvideo_quant.errors import stops_the_process

HELP = "list installed quantization plugins, their methods, and why a method cannot run here"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plugins", help=HELP, description=HELP + ".")
    p.add_argument("--all", action="store_true",
                   help="also list entry points blocked or disabled by FVQ_PLUGINS / FVQ_DISABLE_PLUGINS / "
                        "FVQ_DISABLE_PLUGIN_AUTOLOAD")
    p.add_argument("--json", action="store_true", help="print JSON (one object per plugin or entry point)")
    p.add_argument("--traceback", action="store_true",
                   help="print the traceback behind each plugin that failed to load (for its author)")
    return p


def method_availability(config_cls: type) -> tuple[bool, str]:
    """Whether the method can run on this machine, and why (or how)."""
    import torch

    try:
        reason = config_cls.unavailable_reason()
        if reason:
            return False, f"missing dependency: {reason}"
        need, cpu = config_cls.get_min_capability(), config_cls.cpu_support()
    except BaseException as exc:  # a plugin's bug (a sys.exit too) is reported, not raised
        if stops_the_process(exc):
            raise
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


def declarations(config_cls: type) -> dict[str, Any]:
    """What the config class declares (checked when it was registered): activation dtypes, minimum GPU
    capability, CPU support and the accuracy it promises."""
    from fastvideo_quant.quantization.base import states_tolerance

    tol = config_cls.tolerance
    return {"act_dtypes": [str(d).removeprefix("torch.") for d in config_cls.get_supported_act_dtypes()],
            "min_capability": config_cls.get_min_capability(), "cpu_support": config_cls.cpu_support(),
            "tolerance": {"max_rel_error": tol.max_rel_error, "min_sqnr_db": tol.min_sqnr_db,
                          "stated": states_tolerance(config_cls),
                          "dtypes": {str(d).removeprefix("torch."): {"max_rel_error": t.max_rel_error,
                                                                     "min_sqnr_db": t.min_sqnr_db}
                                     for d, t in tol.dtypes.items()}}}


def _method_row(reg, registry) -> dict[str, Any]:
    ok, why = method_availability(reg.config_cls)
    others = [r for r in registry.conflicts.get(reg.name, []) if r.plugin != reg.plugin]
    if others:
        ok, why = False, "conflict: also registered by " + ", ".join(registry.plugins[r.plugin] for r in others)
    return {"name": reg.name, "available": ok, "reason": why, "weight_loader_v2": reg.weight_loader_v2,
            "method_classes": [m.__name__ for m in reg.methods], **declarations(reg.config_cls)}


def _rows_of(state) -> list[dict[str, Any]]:
    """A ``loaded`` row per plugin of one build, with its methods and whether each can run here."""
    from fastvideo_quant.plugins.manager import plugin_infos

    registry = state.registry
    regs = [*registry.by_name.values(), *(r for rs in registry.conflicts.values() for r in rs)]
    rows = []
    for info in plugin_infos(state):
        methods = [_method_row(r, registry) for r in sorted(regs, key=lambda r: r.name) if r.plugin == info.name]
        rows.append({"name": info.name, "status": "loaded", "distribution": info.distribution,
                     "version": info.version, "entry_point": info.entry_point, "hooks": info.hooks,
                     "methods": methods})
    return rows


def collect() -> list[dict[str, Any]]:
    """One dict per plugin (loaded, or ``error``: failed to load), per method name two plugins register
    (``conflict``), and per entry point not selected (``not loaded``)."""
    from fastvideo_quant.plugins import list_entry_points, manager

    state = manager._ensure(warn=False)  # the failures are this command's output, not warnings
    rows = _rows_of(state)
    for f in state.failures:
        rows.append({"name": f.name, "status": "error", "distribution": f.distribution, "version": f.version,
                     "entry_point": f.entry_point, "error": f.message, "traceback": f.traceback})
    for method, regs in sorted(state.registry.conflicts.items()):
        rows.append({"name": method, "status": "conflict", "distribution": None, "version": None,
                     "entry_point": None, "plugins": [r.plugin for r in regs],
                     "error": state.registry.conflict_message(method)})
    for e in list_entry_points():
        if not e.selected:
            rows.append({"name": e.plugin, "status": "not loaded", "distribution": e.distribution,
                         "version": e.version, "entry_point": e.value, "reason": e.reason})
    return rows


def _bounds(tol: dict[str, Any]) -> str:
    return ", ".join(f"{k}={tol[k]}" for k in ("max_rel_error", "min_sqnr_db") if tol.get(k) is not None)


def _details(m: dict[str, Any]) -> list[str]:
    """The declarations of one method, as two indented lines."""
    need = m["min_capability"]
    gpu = f"compute capability >= {need // 10}.{need % 10}" if need else "any CUDA GPU"
    parts = [f"{dtype} {_bounds(t)}" for dtype, t in m["tolerance"].get("dtypes", {}).items()]
    outer = _bounds(m["tolerance"])
    if outer:
        parts.append(f"other dtypes {outer}" if parts else outer)
    tol = "; ".join(parts) or "not stated"
    if not m["tolerance"].get("stated", True):  # (QuantizationConfig's default: fvq check fails it)
        tol += " (not stated on the class: QuantizationConfig's default; state one per dtype)"
    cpu = f"CPU: {m['cpu_support'] or 'no CPU path'}"
    cpu = "" if cpu == m["reason"] else f"; {cpu}"  # said already by the availability line above
    loader = "v2" if m["weight_loader_v2"] else "v1"
    if not m.get("method_classes", [None]):  # (register(Config) alone: fvq check fails it, [registration: ...])
        loader += (" (no method class registered: the layers cannot tell how its parameters load; call register("
                   "Config, MyLinearMethod, weight_loader_v2=...))")
    return [f"        activation dtypes: {', '.join(m['act_dtypes'])}; GPU: {gpu}{cpu}",
            f"        tolerance: {tol}; weight loader: {loader}"]


def render(rows: list[dict[str, Any]], show_all: bool, tracebacks: bool = False) -> str:
    lines = []
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r.get("distribution") else "(in-process)"
        if r["status"] == "loaded":
            lines.append(f"{r['name']}  [{dist}]  hooks: {', '.join(r['hooks']) or '-'}")
            for m in r["methods"]:
                state = "available" if m["available"] else "unavailable"
                lines.append(f"    {m['name']}: {state} - {m['reason']}")
                lines += _details(m)
            if not r["methods"]:
                lines.append("    (registers no methods)")
        elif r["status"] == "error":
            lines.append(f"error: {r['error']}")  # the message names the plugin and its distribution
            if tracebacks and r.get("traceback"):
                lines += ["    " + line for line in r["traceback"].rstrip().splitlines()]
        elif r["status"] == "conflict":
            lines.append(f"error: conflict: {r['error']}")
        elif show_all:
            lines.append(f"{r['name']}  [{dist}]  not loaded: {r['reason']}")
    if not lines:
        lines.append("no plugins loaded" + ("" if show_all else " (--all shows entry points kept from loading)"))
    if not tracebacks and any(r["status"] == "error" and r.get("traceback") for r in rows):
        lines.append("(fvq plugins --traceback shows the traceback behind each error)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = collect()
    if not args.all:
        rows_out = [r for r in rows if r["status"] != "not loaded"]
    else:
        rows_out = rows
    print(json.dumps(rows_out, indent=2) if args.json else render(rows_out, args.all, args.traceback))
    return 1 if any(r["status"] in ("error", "conflict") for r in rows) else 0
