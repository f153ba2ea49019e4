"""``fvq demo`` usage errors: refused up front (exit 2, one line), before anything is quantized or written."""

from __future__ import annotations

import json
from pathlib import Path

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
