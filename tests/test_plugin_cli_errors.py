"""Every ``fvq`` command with a plugin that fails to load, or a method no plugin can provide: one line per error or
warning, never a traceback, and the exit status docs/guide/cli.md gives (1: the command refuses or fails; the
other plugins' methods still run). ``fvq plugins`` and ``fvq demo`` are covered in tests/cli/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fake_dist
import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.cli import main

BROKEN = "plugin 'fvq-broken' (distribution 'fvq-broken' 0.0.1) failed to import fvq_broken_mod: RuntimeError: boom"

TAKES_FP8 = """
    from fastvideo_quant.plugins import hookimpl
    from fvq_unquantized import UnquantizedConfig, UnquantizedLinearMethod

    class MyFp8Config(UnquantizedConfig):
        @classmethod
        def get_name(cls):
            return "fp8"

    @hookimpl
    def register_quantization_methods(register):
        register(MyFp8Config, UnquantizedLinearMethod, weight_loader_v2=True)
"""


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    """A fresh registry (conftest.fresh_plugins); this file's fvq_broken_mod is not left imported for later files."""
    yield
    sys.modules.pop("fvq_broken_mod", None)


def install(tmp_path: Path, monkeypatch, src: str) -> None:
    """The distribution fvq-broken 0.0.1 with the entry point fvq-broken = fvq_broken_mod (``src``)."""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-broken", version="0.0.1", module="fvq_broken_mod", source=src,
                      entry="fvq-broken")
    plugins.reset()


def stderr_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def checkpoint(directory: Path) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file({"proj.weight": torch.randn(64, 64).to(torch.bfloat16)}, str(directory / "model.safetensors"))
    return directory


def test_quantize_with_another_method_runs_and_warns_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    install(tmp_path, monkeypatch, "raise RuntimeError('boom')\n")
    src = checkpoint(tmp_path / "bf16")
    assert main(["quantize", str(src), "--method", "fp8", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"fvq quantize: warning: {BROKEN} (at "), lines
    assert (tmp_path / "out" / "config.json").is_file()


def test_quantize_with_a_method_no_plugin_provides_exits_1_naming_the_broken_plugin(tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    install(tmp_path, monkeypatch, "raise RuntimeError('boom')\n")
    src = checkpoint(tmp_path / "bf16")
    assert main(["quantize", str(src), "--method", "myw8", "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    error = stderr_lines(capsys)[-1]
    assert error.startswith("fvq quantize: error: unknown quantization method 'myw8'; available: ["), error
    assert f"{BROKEN} (at " in error and "it may be the plugin that provides it" in error, error


def test_bench_names_an_unknown_method_before_asking_for_a_gpu(capsys) -> None:
    assert main(["bench", "--method", "nosuch"]) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("fvq bench: error: unknown quantization method 'nosuch'"), lines


def test_a_plugin_error_a_command_does_not_catch_is_one_line_exit_1(tmp_path, monkeypatch, capsys) -> None:
    """A method name two plugins register: `fvq bench` lets the PluginError through; fvq prints it in one line."""
    install(tmp_path, monkeypatch, TAKES_FP8)
    assert main(["bench", "--method", "fp8"]) == 1
    lines = stderr_lines(capsys)
    assert lines[-1].startswith("fvq bench: error: method 'fp8' is registered by plugin 'fp8' (distribution "
                                "'fastvideo-quant' "), lines
    assert lines[-1].endswith("or block one with FVQ_DISABLE_PLUGINS=fvq-broken"), lines
