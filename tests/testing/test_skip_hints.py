"""A skip that asks for a declaration says how to make it where the suite runs: an option when the suite runs by
``--fvq-method`` (``fvq check``: ``--set``; pytest: ``--fvq-set``), a class attribute in a plugin's test class."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMPILE_SKIP = "method does not declare torch.compile support"


def _pytest(tmp_path: Path, *args: str) -> str:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "-rs", "-k", "torch_compile", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, COLUMNS="400"))  # (short-summary lines whole)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_the_suite_run_by_option_names_the_option(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "--fvq-method", "unquantized", "--pyargs", "fastvideo_quant.testing.conformance.test_suite")
    assert f"{COMPILE_SKIP} (--fvq-set supports_torch_compile=true)" in out, out


def test_a_plugin_test_class_names_the_class_attribute(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(
        "from fastvideo_quant.testing.conformance import ConformanceTests\n\n\n"
        "class TestMine(ConformanceTests):\n    method = 'unquantized'\n")
    out = _pytest(tmp_path, str(tmp_path / "test_mine.py"))
    assert f"{COMPILE_SKIP} (set supports_torch_compile = True on the test class)" in out, out
