"""An installed plugin distribution made on disk for a test: a module and a dist-info whose entry point (group
``fastvideo_quant``) names it, put on ``sys.path`` for the test only."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def install(tmp_path: Path, monkeypatch, *, name: str, version: str, module: str, source: str,
            entry: str, value: str | None = None) -> None:
    """Distribution ``name`` ``version`` with ``module``.py holding ``source`` (dedented) and the entry point
    ``entry = value`` (default: the module). A module of that name imported by an earlier test is dropped, so the
    plugin system imports this one."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[fastvideo_quant]\n{entry} = {value or module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
