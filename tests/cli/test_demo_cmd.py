"""``fvq demo`` usage errors: refused up front (exit 2, one line; an unknown method exit 1, as every command), before
anything is quantized or written."""

from __future__ import annotations

import json
from pathlib import Path

import fake_dist
import pytest
import torch

from fastvideo_quant.cli import main
from fastvideo_quant.demo import run as demo_run
from fastvideo_quant.errors import ConfigError

SMALL = ["--hidden-size", "64", "--num-heads", "4", "--num-kv-heads", "2", "--intermediate-size", "128",
         "--num-layers", "1", "--in-channels", "16", "--num-tokens", "8"]


@pytest.fixture
def no_quantizing(monkeypatch):
    """Fail the test if the demo gets as far as quantizing anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("the demo started quantizing before refusing its arguments")
    monkeypatch.setattr(demo_run, "quantize_checkpoint", refuse)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_device_cuda_without_cuda_is_a_usage_error(capsys, monkeypatch, no_quantizing):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--device", "cuda", *SMALL]) == 2
    assert "fvq demo: error: --device 'cuda': no CUDA device is visible" in one_line_error(capsys)


def test_tp_the_model_cannot_be_split_over_is_refused_up_front(capsys, no_quantizing):
    assert main(["demo", "--tp", "3", *SMALL]) == 2
    err = one_line_error(capsys)
    assert "--tp 3" in err and "num_heads 4, num_kv_heads 2" in err and "TP sizes that work: [1, 2, 4]" in err
    with pytest.raises(ConfigError, match=r"tp 3: .*TP sizes that work: \[1, 2, 4\]"):
        demo_run.run_demo(demo_run.DemoConfig(num_heads=4, num_kv_heads=2, intermediate_size=128), tp=3)


def test_non_empty_workdir_is_refused(tmp_path: Path, capsys, no_quantizing):
    ckpt = tmp_path / "my-checkpoint"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert main(["demo", "--workdir", str(ckpt), *SMALL]) == 2
    assert f"--workdir {str(ckpt)!r} is not empty" in one_line_error(capsys)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json"]  # nothing written into it
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--workdir", str(tmp_path / "file"), *SMALL]) == 2
    assert "is not a directory" in one_line_error(capsys)


def test_previous_demo_workdir_is_reused(tmp_path: Path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--method", "unquantized", "--workdir", str(work), *SMALL]) == 0
    assert json.loads((work / "bf16" / "config.json").read_text())["model_type"] == "fvq-demo-dit"
    assert main(["demo", "--method", "unquantized", "--workdir", str(work), *SMALL]) == 0
    assert "unquantized" in capsys.readouterr().out


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch):
    """An installed distribution fvq-broken 0.0.1 whose plugin module raises on import."""
    from fastvideo_quant import plugins

    fake_dist.install(tmp_path, monkeypatch, name="fvq-broken", version="0.0.1", module="fvq_broken_mod",
                      source="raise RuntimeError('boom at import')\n", entry="fvq-broken")
    for var in ("FVQ_PLUGINS", "FVQ_DISABLE_PLUGINS", "FVQ_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    yield
    plugins.reset()


BROKEN = "plugin 'fvq-broken' (distribution 'fvq-broken' 0.0.1) failed to import fvq_broken_mod: RuntimeError: boom at import"


def test_a_broken_plugin_leaves_another_plugins_method_running_with_one_warning_line(capsys, broken_plugin):
    assert main(["demo", "--method", "fp8", *SMALL]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "fp8  " in captured.out
    assert [line for line in captured.err.splitlines() if line.strip()] == [next(
        line for line in captured.err.splitlines() if line.startswith(f"fvq demo: warning: {BROKEN} (at "))], captured.err
    assert "its methods are left out" in captured.err and "FVQ_DISABLE_PLUGINS=fvq-broken" in captured.err


def test_every_method_with_a_broken_plugin_fails_naming_it(capsys, monkeypatch, broken_plugin):
    """`FVQ_DISABLE_PLUGINS` (or --method) leaves it out; without, the demo of every method reports it: exit 1."""
    monkeypatch.setenv("FVQ_PLUGINS", "fp8,fvq-broken")  # keep the run short: fp8 and the broken plugin
    assert main(["demo", *SMALL]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "warning" not in captured.err, captured.err
    assert f"fvq demo: error: {BROKEN} (at " in captured.err and "; its methods did not run. " in captured.err
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-broken")
    from fastvideo_quant import plugins

    plugins.reset()
    assert main(["demo", *SMALL]) == 0


def test_asking_for_a_method_no_loaded_plugin_registers_names_the_broken_plugin(capsys, broken_plugin, no_quantizing):
    assert main(["demo", "--method", "brokenm", *SMALL]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the demo starts
    err = next(line for line in captured.err.splitlines() if line.startswith("fvq demo: error: "))
    assert "unknown quantization method 'brokenm'; available: [" in err
    assert f"{BROKEN} (at " in err and "it may be the plugin that provides it" in err


@pytest.mark.parametrize("argv", [["--method", "fp9"], ["--method", "fp8", "--method", "fp9"]])
def test_unknown_method_is_refused_up_front_with_the_close_name(capsys, no_quantizing, argv):
    """It ran the demo — banner, an empty table row, a FAILED line, exit 1 — where quantize, check and bench refuse
    the name before doing anything."""
    assert main(["demo", *argv, *SMALL]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err, captured
    assert captured.err.startswith("fvq demo: error: unknown quantization method 'fp9'; available: [")
    assert "Did you mean 'fp8'?" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err


@pytest.mark.parametrize("argv", [["quantize", "src", "--out", "dst", "--method", "fp9"], ["check", "fp9"],
                                  ["bench", "--method", "fp9"], ["demo", "--method", "fp9"]])
def test_every_command_suggests_the_close_method_name(capsys, no_quantizing, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"fvq {argv[0]}: error: unknown quantization method 'fp9'" in err and "Did you mean 'fp8'?" in err, err


@pytest.mark.parametrize("args, said", [
    (["--hidden-size", "0"], "--hidden-size must be a positive int, found 0"),
    (["--num-heads", "0"], "--num-heads must be a positive int, found 0"),
    (["--in-channels", "-3"], "--in-channels must be a positive int, found -3"),
    (["--num-tokens", "0"], "--num-tokens must be a positive int, found 0"),
    (["--hidden-size", "66"], "--hidden-size 66 is not a multiple of --num-heads 4"),
    (["--num-kv-heads", "3"], "--num-heads 4 is not a multiple of --num-kv-heads 3"),
])
def test_model_sizes_it_cannot_be_built_with_are_refused_up_front(capsys, no_quantizing, args, said):
    """--hidden-size 0 was a ZeroDivisionError traceback, --in-channels -3 torch's negative-dimension error, and
    --num-tokens 0 ran, printed a cosine of 0 and reported AWQ as FAILED in its plugin."""
    assert main(["demo", *SMALL, *args]) == 2
    assert f"fvq demo: error: {said}" in one_line_error(capsys)


def test_the_python_entry_point_checks_the_sizes_too(no_quantizing):
    with pytest.raises(ConfigError, match=r"^hidden_size must be a positive int, found 0$"):
        demo_run.main(demo_run.DemoConfig(hidden_size=0))
