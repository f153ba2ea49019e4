"""``fvq check METHOD``: run the conformance suite against an installed method; non-zero exit on failure.

Exit status: 0 conforms, 1 a contract failed, 2 usage error (unknown method, bad --config or --set,
a config from_config refuses),
3 pytest is not installed (the suite needs the ``test`` extra).

Runs ``pytest --fvq-method METHOD --pyargs fastvideo_quant.testing.conformance.test_suite``
in a subprocess, isolated from the current directory's pytest configuration
(empty ini, no plugin autoload), so the result depends only on the method.
``--config`` / ``--set`` go on as ``--fvq-config`` / ``--fvq-set``, with ``--fvq-cli`` so the suite's
usage errors name the options the user typed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HELP = "run the plugin conformance suite against a quantization method (exit status 1 on failure)"
#: Exit status when the suite cannot run at all because pytest is not installed (not a conformance failure).
EXIT_NO_PYTEST = 3
# fastvideo-quant is installed from its source checkout (it is not on PyPI), so the extra is named as the README does.
INSTALL_TEST_EXTRA = 'pip install -e ".[test]" in the fastvideo-quant source checkout (or just: pip install pytest)'



def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check", help=HELP, description=HELP + ".")
    p.add_argument("method", metavar="METHOD", help="registered method name (see `fvq plugins`)")
    p.add_argument("--config", default=None, metavar="JSON", help="dict for the method's from_config (default {})")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="ATTR=VALUE",
                   help="suite class attribute, e.g. output_size=256 or act_dtypes='[\"bfloat16\"]' (repeatable)")
    p.add_argument("-k", dest="keyword", default=None, help="only tests matching this pytest -k expression")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    return p


def pytest_command(args: argparse.Namespace, rootdir: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "fastvideo_quant.testing.pytest_plugin", "-p", "no:cacheprovider",
           "-c", str(Path(rootdir) / "pytest.ini"), "--rootdir", rootdir, "-ra",
           "--fvq-method", args.method, "--fvq-cli", "--pyargs", "fastvideo_quant.testing.conformance.test_suite"]
    if args.config is not None:
        cmd += ["--fvq-config", args.config]
    for item in args.settings:
        cmd += ["--fvq-set", item]
    if args.keyword:
        cmd += ["-k", args.keyword]
    cmd += ["-x"] if args.exitfirst else []
    return cmd + (["-v"] if args.verbose else ["-q"])


def _known(method: str) -> str | None:
    """An error message when ``method`` is not registered (or plugins fail to load), else None."""
    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.quantization.selection import get_quantization_config

    try:
        get_quantization_config(method)
    except FastVideoQuantError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("pytest") is None:
        print(f"fvq check: error: the conformance suite runs under pytest, which is not installed in "
              f"{sys.executable}; install the test extra: {INSTALL_TEST_EXTRA}", file=sys.stderr)
        return EXIT_NO_PYTEST
    if args.config is not None:
        try:
            if not isinstance(json.loads(args.config), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            print(f"fvq check: error: --config {args.config!r}: {exc}; pass e.g. '{{\"group_size\": 64}}'",
                  file=sys.stderr)
            return 2
    problem = _known(args.method)
    if problem:
        print(f"fvq check: error: {problem}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with tempfile.TemporaryDirectory(prefix="fvq-check-") as rootdir:
        (Path(rootdir) / "pytest.ini").write_text("[pytest]\n")
        print(f"fvq check: running the conformance suite against {args.method!r}", flush=True)
        rc = subprocess.call(pytest_command(args, rootdir), env=env, cwd=rootdir)
    verdicts = {0: "conforms", 4: "usage error (see above)", 5: "no tests ran"}
    verdict = verdicts.get(rc, "FAILED (see the [contract: ...] lines above)")
    print(f"fvq check: {args.method!r}: {verdict}")
    return 0 if rc == 0 else 2 if rc == 4 else 1
