"""What a conformance run did, for ``fvq check``'s verdict: outcome counts, the distinct skip reasons, the contracts
that failed, the tests a ``-k`` left out, and whether the method could run on this machine at all.

The pytest plugin registers :class:`RunSummary` when given ``--fvq-summary PATH`` (``fvq check`` does) and it
writes the JSON there when the session ends; :func:`read` loads it back. No torch import: pytest loads this
plugin in every session.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

#: The contract named by a failure's message (:class:`~fastvideo_quant.testing.conformance.ConformanceFailure`).
CONTRACT = re.compile(r"\[contract: ([^\]]+)\]")
#: The ``user_properties`` key under which the pytest plugin records whether an exception without a contract line
#: has a frame of the plugin's code in its traceback (:func:`raised_in`).
RAISED_IN = "fvq_raised_in"
#: The ``user_properties`` key under which a passing golden-checkpoint test records the goldens it read
#: (:mod:`~fastvideo_quant.testing.conformance.golden`), for the verdict's ``golden checkpoints read`` line.
GOLDENS = "fvq_goldens"
#: The ``user_properties`` key under which it records the library's goldens the suite class's load-time options left
#: out, each with why (the verdict names them).
GOLDENS_LEFT_OUT = "fvq_goldens_left_out"


class TestCounts:
    """A pytest plugin object counting what the session's tests did (``counts``: passed, skipped, failed, error; the
    skip reasons, the failures, the tests a ``-k`` left out)."""

    __test__ = False  # (not a test class, whatever its name)

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.skips: collections.Counter[str] = collections.Counter()
        self.failures: list[dict[str, Any]] = []
        self.deselected = 0
        self.goldens: dict[str, None] = {}  # (names in the order first read)
        self.goldens_left_out: dict[str, None] = {}

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped:
            self.counts["skipped"] += 1
            self.skips[_skip_reason(report)] += 1
        elif report.failed:
            self.counts["failed" if report.when == "call" else "error"] += 1
            self.failures.append(_failure(report))
        elif report.when == "call":
            self.counts["passed"] += 1
            for key, value in getattr(report, "user_properties", []) or []:
                if key == GOLDENS:
                    self.goldens.update(dict.fromkeys(value))
                elif key == GOLDENS_LEFT_OUT:
                    self.goldens_left_out.update(dict.fromkeys(value))


class RunSummary(TestCounts):
    """:class:`TestCounts` written to ``path`` when the session ends, with whether the method could run here."""

    def __init__(self, path: str, not_runnable: tuple[str, str] | None) -> None:
        super().__init__()
        self.path = Path(path)
        self.not_runnable = not_runnable

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        data = {"counts": dict(self.counts), "deselected": self.deselected, "skips": dict(self.skips.most_common()),
                "failures": self.failures, "exitstatus": int(exitstatus), "goldens": list(self.goldens),
                "goldens_left_out": list(self.goldens_left_out),
                "not_runnable": None if self.not_runnable is None else {
                    "reason": self.not_runnable[0], "remedy": self.not_runnable[1]}}
        self.path.write_text(json.dumps(data, indent=1))


def read(path: Path) -> dict[str, Any] | None:
    """The summary a session wrote to ``path``, or None when it wrote none (it ended before its last hook)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _failure(report) -> dict[str, Any]:
    """The test, the contract its message names (the innermost, where a check wraps another's failure; None for an
    exception without one), its one-line summary, and for an exception without a contract whether a frame of the
    plugin's code is in its traceback (``raised_in``: ``"plugin"``, ``"not the plugin"``, or None when unknown)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else report.longreprtext
    found = CONTRACT.findall(message)
    line = message.strip().splitlines() or [""]
    raised_in = dict(getattr(report, "user_properties", []) or []).get(RAISED_IN)
    return {"test": report.nodeid.rsplit("::", 1)[-1], "contract": found[-1] if found else None, "line": line[0],
            "raised_in": None if found else raised_in}


def failure_group(failure: dict[str, Any]) -> str:
    """How the verdict names a failure: ``[contract: ...]``, else the exception's line and where it was raised, which
    is the plugin's code only when a frame of it is in the traceback (an exception in the suite's own computations,
    or in the core, is not blamed on the plugin)."""
    if failure.get("contract"):
        return f"[contract: {failure['contract']}]"
    if failure.get("raised_in") == "not the plugin":
        return (f"{failure['line']} (no [contract: ...] line, and no frame of the plugin's code in its traceback: "
                "raised by fastvideo-quant (the suite or the core) or a library it calls; its traceback is above)")
    return f"{failure['line']} (no [contract: ...] line: an exception from the plugin's code; its traceback is above)"


def plugin_packages(method: str | None) -> set[str]:
    """Top-level packages of the code of the plugin registering ``method``: the modules of its config and method
    classes and of the classes they derive from (a toy built on a built-in plugin's classes runs that code as its
    own), and of its hooks; not fastvideo_quant's, torch's or the standard library's."""
    import sys

    from fastvideo_quant.plugins import get_plugin_manager, get_registry
    from fastvideo_quant.plugins.failures import packages_of

    reg = get_registry().by_name.get(method) if method else None
    if reg is None:
        return set()
    tops = {k.__module__.split(".")[0] for c in (reg.config_cls, *reg.methods) for k in c.__mro__}
    hooks = get_plugin_manager().get_plugin(reg.plugin)
    tops |= packages_of(hooks) if hooks is not None else set()
    return {t for t in tops if t not in ("fastvideo_quant", "torch", "builtins") and t not in sys.stdlib_module_names}


def raised_in(exc: BaseException, packages: set[str]) -> str:
    """``"plugin"`` when a frame of ``packages`` is in the traceback of ``exc`` or of an exception it was raised from,
    else ``"not the plugin"``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in packages:
                return "plugin"
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return "not the plugin"
