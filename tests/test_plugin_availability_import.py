"""int8's availability imports bitsandbytes (once per process) instead of only finding it: an installed bitsandbytes
whose import raises made `fvq plugins` say ``int8: available`` and the first load fail with an error blaming the
method. Now the method is unavailable with the import error (module, exception type and message) as the reason."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fvq_int8 import bnb_path
from fvq_int8 import config as config_mod
from fvq_int8.config import Int8Config

#: What a bitsandbytes without its native library raises on import (the message is bitsandbytes' own style).
BROKEN_BNB = ('import os\nopen(os.environ["BNB_IMPORTS"], "a").write("x")\n'
              'raise RuntimeError("CUDA Setup failed despite GPU being available.\\nInspect the output above")\n')

PROBE = """
import json, os
from fastvideo_quant.errors import MethodUnavailableError
from fastvideo_quant.quantization import resolve_quant_config
from fvq_int8.config import Int8Config
reasons = [Int8Config.unavailable_reason() for _ in range(3)]
try:
    resolve_quant_config("int8")
    refused = None
except MethodUnavailableError as exc:
    refused = str(exc)
print(json.dumps({"reasons": reasons, "refused": refused, "imports": len(open(os.environ["BNB_IMPORTS"]).read())}))
"""


@pytest.fixture
def broken_bnb_env(tmp_path: Path) -> dict[str, str]:
    """A process environment in which ``bitsandbytes`` is found, and its import raises (counted in a file)."""
    (tmp_path / "bitsandbytes").mkdir()
    (tmp_path / "bitsandbytes" / "__init__.py").write_text(BROKEN_BNB)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
               BNB_IMPORTS=str(tmp_path / "imports"))
    for var in ("FVQ_PLUGINS", "FVQ_DISABLE_PLUGINS", "FVQ_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(var, None)
    return env


@pytest.fixture
def fresh_import_problem():
    """``import_problem``'s per-process answer forgotten before and after the test."""
    bnb_path.import_problem.cache_clear()
    yield
    bnb_path.import_problem.cache_clear()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=180)


EXPECTED = ("the int8 method needs bitsandbytes (>= 0.46), which is installed but does not import: import "
            "bitsandbytes.functional raised RuntimeError: CUDA Setup failed despite GPU being available. Inspect the "
            "output above; fix what that names, or reinstall it: pip install 'bitsandbytes>=0.46'")


def test_fvq_plugins_lists_int8_unavailable_with_the_import_error(broken_bnb_env) -> None:
    proc = run(["-m", "fastvideo_quant", "plugins", "--json"], broken_bnb_env)
    assert proc.returncode == 0, proc.stderr  # an unavailable method is not an error of the listing
    methods = {m["name"]: m for r in json.loads(proc.stdout) if r["status"] == "loaded" for m in r["methods"]}
    assert methods["int8"]["available"] is False
    assert methods["int8"]["reason"].startswith("missing dependency: " + EXPECTED), methods["int8"]["reason"]
    assert all(m["available"] for name, m in methods.items() if name != "int8"), methods

    text = run(["-m", "fastvideo_quant", "plugins"], broken_bnb_env).stdout
    assert "int8: unavailable - missing dependency: " + EXPECTED in text, text


def test_the_import_is_tried_once_and_selection_refuses_the_method_with_its_reason(broken_bnb_env) -> None:
    proc = run(["-c", PROBE], broken_bnb_env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["imports"] == 1, got  # cached: three availability checks and a selection import it once
    assert got["reasons"] == [got["reasons"][0]] * 3 and got["reasons"][0].startswith(EXPECTED), got
    assert "quantization method 'int8'" in got["refused"] and EXPECTED in got["refused"], got


def test_import_problem_is_cached_and_names_module_type_and_message(monkeypatch, fresh_import_problem) -> None:
    calls = []

    def failing_import():
        calls.append(1)
        raise ImportError("libbitsandbytes_cpu.so: cannot open shared object file")

    monkeypatch.setattr(bnb_path, "bnb_functional", failing_import)
    monkeypatch.setattr(config_mod, "bitsandbytes_installed", lambda: True)
    reasons = {Int8Config.unavailable_reason() for _ in range(3)}
    assert len(calls) == 1 and len(reasons) == 1, (calls, reasons)
    assert ("which is installed but does not import: import bitsandbytes.functional raised ImportError: "
            "libbitsandbytes_cpu.so: cannot open shared object file; fix what that names") in reasons.pop()


def test_a_working_bitsandbytes_is_available(fresh_import_problem) -> None:
    pytest.importorskip("bitsandbytes")
    assert Int8Config.unavailable_reason() is None
    assert bnb_path.import_problem() is None


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("bitsandbytes"), reason="needs bitsandbytes installed")
def test_installed_but_blocked_in_sys_modules_is_not_called_not_installed(broken_bnb_env) -> None:
    """``sys.modules['bitsandbytes'] = None`` (a test or a site hook blocking it): find_spec says nothing is there,
    but the distribution is installed, so the reason is the import's error, not 'not installed'."""
    code = ("import sys; sys.modules['bitsandbytes'] = None\n"
            "from fvq_int8.config import Int8Config; print(Int8Config.unavailable_reason())")
    env = dict(broken_bnb_env, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    proc = run(["-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert "is installed but does not import: import bitsandbytes.functional raised ModuleNotFoundError" in proc.stdout
    assert "not installed" not in proc.stdout, proc.stdout
