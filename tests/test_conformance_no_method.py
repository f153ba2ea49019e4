"""The shipped conformance suite module run by pytest with no ``--fvq-method``: it checks nothing, so it must not
pass green. It was "94 skipped", exit 0, the reason shown only under ``-rs``; it is now a usage error (exit 4)
naming the option and the methods to choose from. A plugin's own ``ConformanceTests`` subclass, which names its
method in the class, is not affected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns pytest

SUITE = "fastvideo_quant.testing.conformance"


def run_pytest(tmp_path: Path, *args: str) -> tuple[int, str]:
    """pytest in a subprocess, isolated from this repository's configuration (the plugin autoloaded)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FVQ_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, env=dict(env, COLUMNS="400"), cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("extra", [(), ("-k", "test_apply")], ids=["whole-suite", "k-test_apply"])
def test_the_suite_module_without_a_method_is_a_usage_error(tmp_path: Path, extra: tuple[str, ...]) -> None:
    rc, out = run_pytest(tmp_path, *extra, "--pyargs", SUITE)
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "skipped" not in out and "passed" not in out, out
    assert "checks the method named by --fvq-method, and none was given" in out, out
    assert "pass --fvq-method NAME, one of [" in out and "'unquantized'" in out, out
    assert "fvq check NAME" in out and "subclass ConformanceTests" in out, out


def test_under_xdist_it_is_one_failing_test(tmp_path: Path) -> None:
    """A usage error on an xdist worker would be an INTERNALERROR: there it is one failing test with the message."""
    rc, out = run_pytest(tmp_path, "-q", "-n", "2", "-k", "reachable or create_weights", "--pyargs", SUITE)
    assert rc == pytest.ExitCode.TESTS_FAILED and "INTERNALERROR" not in out, out
    assert "1 failed" in out and "passed" not in out and "skipped" not in out, out
    assert "checks the method named by --fvq-method, and none was given" in out, out


def test_collect_only_without_a_method_lists_the_suite(tmp_path: Path) -> None:
    """Listing the suite's tests runs none of them: no error."""
    rc, out = run_pytest(tmp_path, "--collect-only", "-q", "-k", "reachable", "--pyargs", SUITE)
    assert rc == 0 and "test_reachable" in out, out


def test_a_plugin_test_class_naming_its_method_still_runs(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(
        "from fastvideo_quant.testing.conformance import ConformanceTests\n\n\n"
        "class TestMine(ConformanceTests):\n    method = 'unquantized'\n")
    rc, out = run_pytest(tmp_path, "-q", "-k", "reachable", str(tmp_path / "test_mine.py"))
    assert rc == 0 and "1 passed" in out and "--fvq-method" not in out, out


def test_with_a_method_the_suite_runs(tmp_path: Path) -> None:
    rc, out = run_pytest(tmp_path, "-q", "--fvq-method", "unquantized", "-k", "reachable", "--pyargs", SUITE)
    assert rc == 0 and "1 passed" in out, out
