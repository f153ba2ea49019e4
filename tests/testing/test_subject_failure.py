"""A plugin bug found while building the ``--fvq-method`` subject up front (in pytest_configure) is one normal
test failure with its ``[contract: ...]`` line and exit status 1, not a pytest INTERNALERROR traceback.

The toy abstract-method plugin is made an installed distribution by a ``.dist-info`` folder on PYTHONPATH
(an entry point, as pip would write it), so ``fvq check`` in a subprocess finds it like a real plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
METHOD = "toy_abstract_method"
pytestmark = pytest.mark.slow  # spawns pytest / fvq check


@pytest.fixture
def installed_toy(tmp_path: Path) -> dict[str, str]:
    """The environment of a process in which the toy is an installed plugin of distribution fvq-toy-abstract."""
    dist = tmp_path / "fvq_toy_abstract-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fvq-toy-abstract\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[fastvideo_quant]\n{METHOD} = broken_plugins:ABSTRACT_METHOD_PLUGIN\n")
    path = os.pathsep.join([str(tmp_path), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, FVQ_PLUGINS=f"{METHOD},unquantized")
    env.pop("FVQ_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def assert_one_contract_failure(out: str) -> None:
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    line = next((ln for ln in out.splitlines() if ln.startswith("[contract: get_quant_method]")), None)
    assert line is not None, out
    assert f"method {METHOD!r} of plugin {METHOD!r} (distribution 'fvq-toy-abstract')" in line, line
    assert "NoApplyMethod" in line and "apply" in line, line
    assert "how to fix: return an instance of a LinearMethodBase subclass" in out, out
    assert "1 failed" in out and "passed" not in out, out


def test_fvq_check_reports_an_abstract_method_class_as_a_contract_failure(installed_toy) -> None:
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", METHOD],
                          capture_output=True, text=True, timeout=300, env=installed_toy)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert_one_contract_failure(out)
    assert f"{METHOD!r}: FAILED" in out, out


def test_pytest_run_of_the_suite_reports_it_too(installed_toy, tmp_path: Path) -> None:
    """A plugin author running the suite with pytest directly (the plugin autoloaded), ``-k`` selecting one test:
    the same one failure."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    # No -p fastvideo_quant.testing.pytest_plugin: pytest loads it from its pytest11 entry point.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                           "--fvq-method", METHOD, "-k", "reachable", "--pyargs",
                           "fastvideo_quant.testing.conformance.test_suite"],
                          capture_output=True, text=True, timeout=300, env=installed_toy, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert_one_contract_failure(out)
    assert "test_method_builds_a_layer" in out and "the suite's selected test was deselected" in out, out


def test_a_correct_method_runs_the_suite_as_before(installed_toy, tmp_path: Path) -> None:
    """No subject failure: no extra test, nothing deselected by it."""
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "reachable"],
                          capture_output=True, text=True, timeout=300, env=installed_toy)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_method_builds_a_layer" not in out and "1 passed" in out, out
