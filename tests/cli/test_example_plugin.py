"""The example third-party plugin, installed the way a user installs it, is discovered, selected, listed and conforms."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fvq-example-int8wo"
PACKAGE = "fvq_example_int8wo"

DISCOVER = """
import json, sys
from fastvideo_quant.plugins import get_plugins
from fastvideo_quant.quantization import resolve_quant_config
info = {p.name: p.to_dict() for p in get_plugins()}["example_int8wo"]
cfg = resolve_quant_config(checkpoint=sys.argv[1])
print(json.dumps({"info": info, "config": type(cfg).__name__, "module": type(cfg).__module__}))
"""


@pytest.fixture
def example_in_process(tmp_path: Path, monkeypatch):
    """This checkout's example registered in-process (the installed way is the slow test below).

    Isolated from an installed copy (``pip install [-e] docs/examples/fvq-example-int8wo``) and from the
    ``*.egg-info`` such an install leaves in the example folder: its entry point is blocked with
    FVQ_DISABLE_PLUGINS, and the package is imported from a clean copy, so the test runs this checkout's code
    and never registers the name twice."""
    from fastvideo_quant import plugins

    blocked = os.environ.get("FVQ_DISABLE_PLUGINS", "")
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", ",".join(filter(None, [blocked, "example_int8wo"])))
    shutil.copytree(EXAMPLE / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)  # an installed copy imported earlier
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = importlib.import_module(f"{PACKAGE}.hooks")
    assert Path(hooks.__file__).is_relative_to(tmp_path), hooks.__file__
    plugins.register_plugin(hooks, "example_int8wo")
    yield
    plugins.unregister_plugin("example_int8wo")
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]  # the copy goes with tmp_path


@pytest.fixture
def leftover_egg_info(tmp_path_factory, monkeypatch) -> None:
    """What ``pip install -e docs/examples/fvq-example-int8wo`` leaves (also after uninstalling): the example's
    ``*.egg-info`` on sys.path, so its entry point ``example_int8wo`` is discovered."""
    site = tmp_path_factory.mktemp("site")
    egg = site / "fvq_example_int8wo.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: fvq-example-int8wo\nVersion: 0.1.0\n")
    (egg / "entry_points.txt").write_text(f"[fastvideo_quant]\nexample_int8wo = {PACKAGE}.hooks\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FVQ_PLUGINS", raising=False)
    monkeypatch.delenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_in_process_example_despite_an_installed_one(leftover_egg_info, example_in_process) -> None:
    """An installed example (or its leftover egg-info) used to make the fixture fail with 'Plugin name already
    registered: example_int8wo'; the in-process copy of this checkout is the one registered."""
    from fastvideo_quant.plugins import get_registry
    from fastvideo_quant.testing.conformance import Subject, check_skip_list

    reg = get_registry().by_name["example_int8wo"]
    assert (reg.plugin, reg.distribution) == ("example_int8wo", None)
    check_skip_list(Subject("example_int8wo"))


def test_example_quantizes_a_real_checkpoint_with_a_skip_list(example_in_process, tmp_path: Path) -> None:
    """`fvq quantize --method example_int8wo --skip proj_out` on a checkpoint with embeddings and norms: the skip
    list round-trips and skipped layers load unquantized (the docs' plugin used to pass `fvq check` and fail here)."""
    import torch
    from safetensors.torch import save_file

    from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config
    from fastvideo_quant.quantize import quantize_checkpoint
    from fastvideo_quant.testing.conformance import Subject, check_skip_list

    check_skip_list(Subject("example_int8wo"))
    cfg = DemoConfig(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, num_layers=1,
                     in_channels=16, num_tokens=8)
    src, dst = tmp_path / "src", tmp_path / "q"
    src.mkdir()
    save_file(random_state_dict(cfg, seed=0), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(cfg.to_dict()))
    report = quantize_checkpoint(src, dst, "example_int8wo", skip=["proj_out"])
    section = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert "proj_out" in section["modules_to_not_convert"] and report.modules_to_not_convert
    model = DemoDiT(cfg, torch.float32, resolve_quant_config(checkpoint=dst))
    load_checkpoint(model, dst)
    methods = {type(m.quant_method).__name__ for m in model.modules() if hasattr(m, "quant_method")}
    assert methods == {"Int8WeightOnlyLinearMethod", "UnquantizedLinearMethod"}


def test_example_declares_it_cannot_quantize_on_load(example_in_process) -> None:
    """Its layers take int8 tensors only: a float checkpoint loaded by its name says to quantize it first (it was a
    loader error per layer), and the suite's online-quantization check skips instead of failing."""
    from fastvideo_quant.errors import ConfigError
    from fastvideo_quant.quantization import resolve_quant_config
    from fastvideo_quant.testing.conformance import Subject, check_online_quantization

    with pytest.raises(ConfigError, match="cannot quantize a float checkpoint on load.*fvq quantize SRC --method "
                                          "example_int8wo"):
        resolve_quant_config(method="example_int8wo")
    with pytest.raises(pytest.skip.Exception, match="online_quantization is False"):
        check_online_quantization(Subject("example_int8wo"), "column")


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_example_plugin_installs_and_conforms(tmp_path: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "--target", str(target), str(src)], dict(os.environ), tmp_path)
    assert pip.returncode == 0, pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))
    for var in ("FVQ_PLUGINS", "FVQ_DISABLE_PLUGINS", "FVQ_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(var, None)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "example_int8wo"}}))

    found = run([sys.executable, "-c", DISCOVER, str(ckpt)], env, tmp_path)
    assert found.returncode == 0, found.stderr
    got = json.loads(found.stdout)
    assert got["info"]["distribution"] == "fvq-example-int8wo" and got["info"]["version"] == "0.1.0"
    assert got["info"]["methods"] == ["example_int8wo"]
    assert got["config"] == "Int8WeightOnlyConfig" and got["module"] == "fvq_example_int8wo.method"

    listed = run([sys.executable, "-m", "fastvideo_quant", "plugins", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = {r["name"]: r for r in json.loads(listed.stdout)}["example_int8wo"]
    assert row["distribution"] == "fvq-example-int8wo" and row["methods"][0]["available"] is True

    check = run([sys.executable, "-m", "fastvideo_quant", "check", "example_int8wo"], env, tmp_path)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    assert "'example_int8wo': conforms" in check.stdout and " passed" in check.stdout
