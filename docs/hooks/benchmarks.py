"""mkdocs hook: put the latest committed benchmark tables into docs/benchmarks.md.

``fvq bench`` writes ``benchmarks/results/<method>_<gpu>_<date>[_<tag>].md`` (``fastvideo_quant.bench.result_stem``).
At build time the marker ``<!-- fvq:benchmark-tables -->`` in benchmarks.md is replaced by the newest table of each
``<method>_<gpu>`` (a probe such as ``awq-chain`` or ``layer-chain`` is a method of its own), so the page never goes
stale and nothing generated is committed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

MARKER = "<!-- fvq:benchmark-tables -->"
#: ``<method>_<gpu>`` (the key), the date, and an optional ``_<tag>`` naming the run.
_NAME = re.compile(r"^(?P<key>.+)_(?P<date>\d{4}-\d{2}-\d{2})(?:_(?P<tag>.+))?$")


def commit_times(results_dir: Path) -> dict[str, int]:
    """File name → time (Unix seconds) of the last commit that touched it, for the files under ``results_dir``;
    empty when git or the repository is not there (a source tarball)."""
    try:
        out = subprocess.run(["git", "log", "--format=%x00%ct", "--name-only", "--relative", "--", "."],
                             cwd=results_dir, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    times: dict[str, int] = {}
    for block in out.split("\0")[1:]:  # newest commit first: a file's first appearance is its last commit
        stamp, *names = block.split("\n")
        for name in filter(None, names):
            times.setdefault(Path(name).name, int(stamp))
    return times


def latest_results(results_dir: Path, committed: Mapping[str, int] | None = None) -> list[Path]:
    """The newest ``.md`` result per ``<method>_<gpu>``, sorted by name.

    Newest is the latest date in the name; among files of that date (tagged runs: ``_run1``, ``_shipped``), the one
    with the most result rows (a re-run of a few points, ``_m12``, does not stand for the whole table), then the one
    committed last (``committed``: file name → commit time, by default from git), a file not committed yet counting
    as newer than any committed one; then the name. A name without a date is its own key.
    """
    if committed is None:
        committed = commit_times(results_dir)
    newest = max(committed.values(), default=0) + 1
    latest: dict[str, tuple[tuple[str, int, int, str], Path]] = {}
    for path in results_dir.glob("*.md"):
        match = _NAME.match(path.stem)
        key, date = (match["key"], match["date"]) if match else (path.stem, "")
        rank = (date, _rows(path), committed.get(path.name, newest), path.name)
        if key not in latest or rank > latest[key][0]:
            latest[key] = (rank, path)
    return sorted(p for _, p in latest.values())


def _rows(path: Path) -> int:
    """The result rows of a table file: lines of a markdown table whose first cell is a number."""
    return sum(1 for line in path.read_text().splitlines() if re.match(r"^\|\s*\d", line))


def render(results_dir: Path) -> str:
    """Markdown for the tables (headings moved down two levels to sit under the page's sections)."""
    paths = latest_results(results_dir)
    if not paths:
        return f"_No results are committed under `{results_dir.name}/` yet; run `fvq bench` on a GPU._\n"
    parts = []
    for path in paths:
        text = re.sub(r"^(#+) ", lambda m: "#" * min(len(m[1]) + 2, 6) + " ", path.read_text(), flags=re.M)
        parts.append(f"<!-- from benchmarks/results/{path.name} -->\n{text.strip()}\n\n"
                     f"Source: `benchmarks/results/{path.name}`\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    results = Path(config["config_file_path"]).parent / "benchmarks" / "results"
    return markdown.replace(MARKER, render(results))
