"""``fvq check METHOD``: run the conformance suite against an installed method; non-zero exit unless it conforms.

Exit status: 0 conforms (on the whole suite, or on the tests a ``-k`` selected: the verdict says which);
1 a contract failed (or the run did not finish), or the method is unknown or its plugin failed to load; 2 usage
error (bad --config or --set, a config from_config refuses or a --config key it does not read, a -k that selects no
test); 3 pytest is not installed
(the suite needs the ``test`` extra); 4 not checked: the method cannot run on this machine (a missing dependency,
no GPU or one too old, no CPU path), so only the checks that need no layer ran, or every selected test skipped.

Runs ``pytest --fvq-method METHOD --pyargs fastvideo_quant.testing.conformance.test_suite``
in a subprocess, isolated from the current directory's pytest configuration
(empty ini, no plugin autoload), so the result depends only on the method.
``--config`` / ``--set`` go on as ``--fvq-config`` / ``--fvq-set``, with ``--fvq-cli`` so the suite's
usage errors name the options the user typed, and ``--fvq-summary`` so the verdict can say what ran: the counts,
each distinct reason tests skipped, the contracts that failed, what ``-k`` left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fastvideo_quant.cli import GivenOnce
from fastvideo_quant.testing import run_summary

HELP = "run the plugin conformance suite against a quantization method (exit status 1 on failure)"
#: Exit status when the suite cannot run at all because pytest is not installed (not a conformance failure).
EXIT_NO_PYTEST = 3
#: Exit status when the method cannot run on this machine (its layers were not checked) or every selected test
#: skipped: not a pass, not a failure.
EXIT_NOT_CHECKED = 4
# fastvideo-quant is installed from its source checkout (it is not on PyPI), so the extra is named as the README does.
INSTALL_TEST_EXTRA = 'pip install -e ".[test]" in the fastvideo-quant source checkout (or just: pip install pytest)'



def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check", help=HELP, description=HELP + ".")
    p.add_argument("method", metavar="METHOD", help="registered method name (see `fvq plugins`)")
    p.add_argument("--config", action=GivenOnce, default=None, metavar="JSON",
                   help="dict for the method's from_config (default {}; given once)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="ATTR=VALUE",
                   help="suite class attribute, e.g. output_size=256 or act_dtypes='[\"bfloat16\"]' (repeatable)")
    p.add_argument("-k", dest="keyword", default=None, help="only tests matching this pytest -k expression")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    p.add_argument("--tb", choices=("auto", "long", "short", "line", "native", "no"), default=None,
                   help="pytest's traceback style; a failure shows the contract it broke, and --tb=long also the "
                        "suite's frames")
    return p


def pytest_command(args: argparse.Namespace, rootdir: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "fastvideo_quant.testing.pytest_plugin", "-p", "no:cacheprovider",
           "-c", str(Path(rootdir) / "pytest.ini"), "--rootdir", rootdir, "-ra",
           "--fvq-method", args.method, "--fvq-cli", "--fvq-summary", str(Path(rootdir) / SUMMARY),
           "--pyargs", "fastvideo_quant.testing.conformance.test_suite"]
    if args.config is not None:
        cmd += ["--fvq-config", args.config]
    for item in args.settings:
        cmd += ["--fvq-set", item]
    if args.keyword:
        cmd += ["-k", args.keyword]
    cmd += ["-x"] if args.exitfirst else []
    cmd += [f"--tb={args.tb}"] if args.tb else []
    return cmd + (["-v"] if args.verbose else ["-q"])


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("pytest") is None:
        print(f"fvq check: error: the conformance suite runs under pytest, which is not installed in "
              f"{sys.executable}; install the test extra: {INSTALL_TEST_EXTRA}", file=sys.stderr)
        return EXIT_NO_PYTEST
    if args.config is not None:
        from fastvideo_quant.cli import config_object

        try:
            config_object(args.config)
        except ValueError as exc:
            print(f"fvq check: error: --config {args.config!r}: {exc}", file=sys.stderr)
            return 2
    from fastvideo_quant.quantization.selection import method_problem

    problem = method_problem(args.method)
    if problem:
        print(f"fvq check: error: {problem}", file=sys.stderr)
        return 1  # as every fvq command: a method it cannot run (unknown, its plugin failed to load) is a refusal
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with tempfile.TemporaryDirectory(prefix="fvq-check-") as rootdir:
        (Path(rootdir) / "pytest.ini").write_text("[pytest]\n")
        print(f"fvq check: running the conformance suite against {args.method!r}", flush=True)
        rc = subprocess.call(pytest_command(args, rootdir), env=env, cwd=rootdir)
        summary = run_summary.read(Path(rootdir) / SUMMARY)
    text, status = verdict(args, rc, summary)
    print(f"fvq check: {args.method!r}: {text}")
    return status


#: The file in the run's temporary folder the suite's summary is written to.
SUMMARY = "summary.json"


def verdict(args: argparse.Namespace, rc: int, summary: dict | None) -> tuple[str, int]:
    """What the run showed about the method, and the exit status, from pytest's exit status ``rc`` and the run's
    summary (:mod:`fastvideo_quant.testing.run_summary`; None when the session ended before writing it)."""
    if rc == 4:
        return "usage error (see above)", 2
    if summary is None:  # (the suite's plugin writes one whenever the session ends normally)
        return f"did not finish: the run wrote no summary of what ran (pytest exit status {rc}; see above)", 1
    counts, not_runnable = summary["counts"], summary["not_runnable"]
    if rc == 5:
        selects = f"-k {args.keyword!r} selects none of the suite's tests" if args.keyword else "no test was collected"
        return f"no test ran: {selects}", 2
    if rc == 1:
        return "FAILED: " + _counts(counts, summary["deselected"], args.keyword) + _failures(summary["failures"]), 1
    if rc != 0:
        return f"did not finish (pytest exit status {rc}; see above)", 1
    if not_runnable:
        ran = counts.get("passed", 0)
        return (f"NOT checked on this machine: {not_runnable['reason']}. Only the {ran} tests that need no layer "
                f"ran and passed; the {counts.get('skipped', 0)} that build layers were skipped. To check it, run "
                f"fvq check {args.method} {not_runnable['remedy']}"), EXIT_NOT_CHECKED
    selected = f" by -k {args.keyword!r}: run without -k to check the whole suite" if args.keyword else ""
    if not counts.get("passed"):
        return (f"NOT checked: every selected test skipped ({_counts(counts, summary['deselected'], args.keyword)})"
                + _skips(summary["skips"])), EXIT_NOT_CHECKED
    if summary["deselected"]:
        ran = _counts(counts, 0, None)  # (passed and skipped: "conforms on the 13 selected tests" said 17 were 13)
        head = f"conforms on the tests selected ({ran}; {summary['deselected']} deselected{selected})"
    else:
        head = f"conforms ({_counts(counts, 0, None)})"
    return (head + _goldens(summary.get("goldens") or [], summary.get("goldens_left_out") or [])
            + _skips(summary["skips"])), 0


def _counts(counts: dict[str, int], deselected: int, keyword: str | None) -> str:
    shown = [f"{counts[k]} {k}" for k in ("failed", "error", "passed", "skipped") if counts.get(k)]
    shown += [f"{deselected} deselected" + (f" by -k {keyword!r}" if keyword else "")] if deselected else []
    return ", ".join(shown) or "no test ran"


def _goldens(names: list[str], left_out: list[str]) -> str:
    """The golden checkpoints the method read as their formats' tools mean them (the suite's library's that its plugin
    claims, and the suite class's own): which formats the verdict vouches for; and those the config's load-time
    options left out, with why (it does not vouch for them)."""
    read = f"\n  golden checkpoints read: {len(names)} ({'; '.join(names)})" if names else ""
    return read + (f"\n  golden checkpoints left out for the load-time options: {'; '.join(left_out)}" if left_out
                   else "")


def _skips(skips: dict[str, int]) -> str:
    """One line per distinct reason tests skipped (a CUDA-only check on a CPU machine, an undeclared capability)."""
    return "".join(f"\n  skipped {n}: {reason}" for reason, n in skips.items())


def _failures(failures: list[dict]) -> str:
    """One line per contract broken (with how many tests and one of them), and per exception without a contract; the
    tensor-parallel contracts last (a bug of one layer fails them too, and the one-layer contract says what it is: a
    dropped bias came first as a TP output failure, whose hints are about sharding)."""
    groups: dict[str, list[str]] = {}
    for f in sorted(failures, key=lambda f: _is_tp_contract(f.get("contract") or "")):
        key = run_summary.failure_group(f)
        groups.setdefault(key, []).append(f["test"])
    return "".join(f"\n  {key} in {len(tests)} test{'s' if len(tests) > 1 else ''}: {', '.join(tests[:3])}"
                   + (", ..." if len(tests) > 3 else "") for key, tests in groups.items())


def _is_tp_contract(contract: str) -> bool:
    """Whether a contract is one of the tensor-parallel checks' (``tensor parallel: ...``, ``loading at TP=2``)."""
    return contract.startswith("tensor parallel") or "at TP=" in contract
