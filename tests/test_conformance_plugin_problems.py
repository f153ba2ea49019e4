"""``pytest --fvq-method NAME`` on a method two distributions register, or whose plugin failed to import: a plugin
problem, reported as such with exit status 1, as ``fvq check`` does. It was a usage error (exit 4, the status of
"NOT checked" too) advising to "pass the keys its from_config needs with --fvq-config". Only a config from_config
refuses keeps that advice; a misspelled method name stays a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns pytest / fvq check

HERE = Path(__file__).parent
SUITE = "fastvideo_quant.testing.conformance.test_suite"
DUPE = '''
import toy_method

from fastvideo_quant.plugins import hookimpl


class DupeConfig(toy_method.ToyConfig):
    @classmethod
    def get_name(cls):
        return "toy-dupe"


@hookimpl
def register_quantization_methods(register):
    register(DupeConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)
'''
BROKEN = 'raise ImportError("toy_broken needs the toy-kernels package")\n'


def _dist(root: Path, name: str, entry: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[fastvideo_quant]\n{entry} = {module}\n")


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, str]:
    """An environment with two distributions registering 'toy-dupe' and one whose plugin fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "fvq-dupe-a", "dupe_a", "fvq_dupe_a", DUPE)
    _dist(site, "fvq-dupe-b", "dupe_b", "fvq_dupe_b", DUPE)
    _dist(site, "fvq-toy-broken", "toy_broken", "fvq_toy_broken", BROKEN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FVQ_")}
    return dict(env, PYTHONPATH=os.pathsep.join([str(site), str(HERE), env.get("PYTHONPATH", "")]), COLUMNS="400")


def run_suite(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "-k", "reachable", *args, "--pyargs", SUITE],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


def fvq_check(env: dict[str, str], method: str) -> int:
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", method, "-k", "reachable"],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode


def test_a_method_two_distributions_register_is_a_plugin_failure(installed, tmp_path: Path) -> None:
    rc, out = run_suite(installed, tmp_path, "--fvq-method", "toy-dupe")
    assert rc == 1 == fvq_check(installed, "toy-dupe"), out
    assert "--fvq-method 'toy-dupe': a plugin problem, not a usage error" in out, out
    assert "'dupe_a' (distribution 'fvq-dupe-a'" in out and "'dupe_b' (distribution 'fvq-dupe-b'" in out, out
    assert "FVQ_DISABLE_PLUGINS=" in out, out  # the conflict's own remedy
    assert "--fvq-config" not in out and "from_config" not in out and "passed" not in out, out


def test_a_method_whose_plugin_failed_to_import_is_a_plugin_failure(installed, tmp_path: Path) -> None:
    rc, out = run_suite(installed, tmp_path, "--fvq-method", "toy_broken")
    assert rc == 1 == fvq_check(installed, "toy_broken"), out
    assert "--fvq-method 'toy_broken': a plugin problem, not a usage error" in out, out
    assert "'toy_broken'" in out and "fvq-toy-broken" in out and "toy_broken needs the toy-kernels package" in out, out
    assert "--fvq-config" not in out and "passed" not in out, out


def test_a_misspelled_method_stays_a_usage_error(tmp_path: Path) -> None:
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("FVQ_")}, COLUMNS="400")
    rc, out = run_suite(env, tmp_path, "--fvq-method", "unquantised")
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "--fvq-method 'unquantised': unknown quantization method 'unquantised'" in out, out
    assert "plugin problem" not in out, out


def test_a_misspelled_method_stays_a_usage_error_beside_a_failed_plugin(installed, tmp_path: Path) -> None:
    """Another plugin's failure (toy_broken's) does not make a misspelling a plugin problem. (Was: exit status 1, "a
    plugin problem, not a usage error", whenever any plugin had failed to load.)"""
    rc, out = run_suite(installed, tmp_path, "--fvq-method", "unquantised")
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "--fvq-method 'unquantised': unknown quantization method 'unquantised'" in out, out
    assert "plugin problem" not in out, out


def test_a_config_from_config_refuses_keeps_the_config_advice(tmp_path: Path) -> None:
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("FVQ_")}, COLUMNS="400")
    rc, out = run_suite(env, tmp_path, "--fvq-method", "awq", "--fvq-config", '{"group_size": 7}')
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "fix --fvq-config" in out and "plugin problem" not in out, out
