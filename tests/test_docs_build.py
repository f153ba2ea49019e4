"""The documentation builds with `mkdocs build --strict` (broken links, missing nav pages fail), and its hook."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("fvq_docs_hook", ROOT / "docs" / "hooks" / "benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs / mkdocs-material not installed: pip install -e '.[docs]'")
def test_mkdocs_build_strict(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    page = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "fvq:benchmark-tables" not in page  # the hook replaced the marker


def test_benchmark_hook_picks_newest_table_per_method_and_gpu(tmp_path: Path):
    hook = _hook()
    (tmp_path / "fp8_h100_2026-01-01.md").write_text("# old\n")
    (tmp_path / "fp8_h100_2026-02-01.md").write_text("# fp8 new\n| a |\n")
    (tmp_path / "fp8_h100_2026-02-01_run1.md").write_text("# fp8 rerun\n")
    (tmp_path / "int8_h100_2026-01-05.md").write_text("# int8\n")
    (tmp_path / "int8_h100_2026-01-05.json").write_text("{}")
    assert [p.name for p in hook.latest_results(tmp_path)] == [
        "fp8_h100_2026-02-01.md", "fp8_h100_2026-02-01_run1.md", "int8_h100_2026-01-05.md"]
    text = hook.render(tmp_path)
    assert "### fp8 new" in text and "old" not in text and "### int8" in text
    assert "No results" in hook.render(tmp_path / "empty")
