"""The documentation builds with `mkdocs build --strict` (broken links, missing nav pages fail), and its hook."""

from __future__ import annotations

import importlib.util
import os
import shutil
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


def _results(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / name).write_text(f"# {name}\n")
    return tmp_path


def test_benchmark_hook_keys_on_method_and_gpu(tmp_path: Path):
    """One table per ``<method>_<gpu>`` (a tagged run is not a key of its own; a probe name is), the latest date."""
    results = _results(tmp_path, [
        "fp8_h100_2026-01-01.md", "fp8_h100_2026-02-01.md", "fp8_h100_2026-02-01_run1.md", "fp8_h200_2026-01-01.md",
        "fp8-chain_h100_2026-01-03.md", "tp_block_tp2_h100_2026-01-01.md", "int8_h100_2026-01-05.md", "notes.md"])
    (tmp_path / "int8_h100_2026-03-01.json").write_text("{}")  # not a table
    committed = {name: 1 for name in os.listdir(tmp_path)}  # one commit: a date's runs are told apart by name
    assert [p.name for p in _hook().latest_results(results, committed)] == [
        "fp8-chain_h100_2026-01-03.md", "fp8_h100_2026-02-01_run1.md", "fp8_h200_2026-01-01.md",
        "int8_h100_2026-01-05.md", "notes.md", "tp_block_tp2_h100_2026-01-01.md"]


def test_benchmark_hook_orders_one_dates_runs_by_commit(tmp_path: Path):
    hook = _hook()
    results = _results(tmp_path, ["awq_h200_2026-01-01.md", "awq_h200_2026-02-01_a.md", "awq_h200_2026-02-01_b.md"])
    newest = lambda committed: [p.name for p in hook.latest_results(results, committed)]  # noqa: E731
    # the later date wins however late the older file was committed; on one date, the run committed last
    assert newest({"awq_h200_2026-01-01.md": 9, "awq_h200_2026-02-01_a.md": 2, "awq_h200_2026-02-01_b.md": 1}) == [
        "awq_h200_2026-02-01_a.md"]
    # a file not committed yet is newer than any committed one
    assert newest({"awq_h200_2026-02-01_b.md": 5}) == ["awq_h200_2026-02-01_a.md"]


def test_benchmark_hook_prefers_the_whole_table_over_a_rerun_of_some_points(tmp_path: Path):
    """On one date, a run of a few points (``_m12``) committed after the full table does not replace it."""
    full = "# awq\n| K | N | M |\n|---|---|---|\n" + "".join(f"| 5120 | 5120 | {m} |\n" for m in (1, 4, 8, 16))
    (tmp_path / "awq_h200_2026-02-01_cluster.md").write_text(full)
    (tmp_path / "awq_h200_2026-02-01_m12.md").write_text("# awq\n| K | N | M |\n|---|---|---|\n| 5120 | 5120 | 12 |\n")
    committed = {"awq_h200_2026-02-01_cluster.md": 1, "awq_h200_2026-02-01_m12.md": 2}
    assert [p.name for p in _hook().latest_results(tmp_path, committed)] == ["awq_h200_2026-02-01_cluster.md"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_benchmark_hook_reads_commit_times_from_git(tmp_path: Path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *args, **kw: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                             env={**env, **kw})
    git("init", "-q")
    for name, when in (("awq_h200_2026-02-01_b.md", "1700000000"), ("awq_h200_2026-02-01_a.md", "1700000100")):
        (results / name).write_text("# t\n")
        git("add", str(results / name))
        git("commit", "-q", "-m", name, GIT_COMMITTER_DATE=f"@{when} +0000")
    hook = _hook()
    assert hook.commit_times(results) == {"awq_h200_2026-02-01_b.md": 1700000000, "awq_h200_2026-02-01_a.md": 1700000100}
    assert [p.name for p in hook.latest_results(results)] == ["awq_h200_2026-02-01_a.md"]
    assert hook.commit_times(tmp_path / "missing") == {}


def test_benchmark_hook_renders_tables(tmp_path: Path):
    hook = _hook()
    (tmp_path / "fp8_h100_2026-01-01.md").write_text("# old\n")
    (tmp_path / "fp8_h100_2026-02-01.md").write_text("# fp8 new\n| a |\n")
    (tmp_path / "int8_h100_2026-01-05.md").write_text("# int8\n")
    text = hook.render(tmp_path)
    assert "### fp8 new" in text and "old" not in text and "### int8" in text
    assert "No results" in hook.render(tmp_path / "empty")
