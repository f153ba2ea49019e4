"""mkdocs hook: put the latest committed benchmark tables into docs/benchmarks.md.

``fvq bench`` writes ``benchmarks/results/<method>_<gpu>_<date>.md``. At build time
the marker ``<!-- fvq:benchmark-tables -->`` in benchmarks.md is replaced by the newest
table of each (method, GPU), so the page never goes stale and nothing generated is committed.
"""

from __future__ import annotations

import re
from pathlib import Path

MARKER = "<!-- fvq:benchmark-tables -->"
_NAME = re.compile(r"^(?P<pre>.+)_(?P<date>\d{4}-\d{2}-\d{2})(?P<post>.*)$")


def latest_results(results_dir: Path) -> list[Path]:
    """The newest ``.md`` result per ``<method>_<gpu>[<suffix>]`` (by the date in its name), sorted by name.

    A suffix after the date (``_run1``) marks a separate run and is kept as its own table.
    """
    latest: dict[str, tuple[str, Path]] = {}
    for path in sorted(results_dir.glob("*.md")):
        match = _NAME.match(path.stem)
        key, date = (match["pre"] + match["post"], match["date"]) if match else (path.stem, "")
        if key not in latest or date > latest[key][0]:
            latest[key] = (date, path)
    return sorted(p for _, p in latest.values())


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
