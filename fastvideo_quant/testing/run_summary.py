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


class RunSummary:
    """A pytest plugin object counting what the session's tests did; writes it to ``path`` at the end."""

    def __init__(self, path: str, not_runnable: tuple[str, str] | None) -> None:
        self.path = Path(path)
        self.not_runnable = not_runnable
        self.counts: collections.Counter[str] = collections.Counter()
        self.skips: collections.Counter[str] = collections.Counter()
        self.failures: list[dict[str, Any]] = []
        self.deselected = 0

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

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        data = {"counts": dict(self.counts), "deselected": self.deselected, "skips": dict(self.skips.most_common()),
                "failures": self.failures, "exitstatus": int(exitstatus),
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
    exception without one), and its one-line summary."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else report.longreprtext
    found = CONTRACT.findall(message)
    line = message.strip().splitlines() or [""]
    return {"test": report.nodeid.rsplit("::", 1)[-1], "contract": found[-1] if found else None, "line": line[0]}
