"""A checkpoint tensor loads into a persistent buffer of its name (``inv_freq``, ``position_ids``), checked like a
parameter and through the same all-or-nothing checks; a non-persistent buffer takes none, and a buffer that no
tensor provides is not missing (the model computes it)."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, CheckpointWarning
from fastvideo_quant.loader import load_checkpoint


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.rotary = torch.nn.Module()
        self.rotary.register_buffer("inv_freq", torch.zeros(4))
        self.register_buffer("position_ids", torch.zeros(16, dtype=torch.int64))
        self.register_buffer("scale", torch.full((2,), 5.0))  # never in the checkpoint: the model computes it
        self.register_buffer("cache", torch.zeros(3), persistent=False)


def tensors() -> dict[str, torch.Tensor]:
    return {"proj.weight": torch.randn(8, 8), "proj.bias": torch.randn(8),
            "rotary.inv_freq": torch.arange(4, dtype=torch.float32), "position_ids": torch.arange(16)}


def test_persistent_buffers_load_and_unprovided_ones_are_not_missing(tmp_path):
    t = tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(net, tmp_path)  # strict
    assert torch.equal(net.rotary.inv_freq, t["rotary.inv_freq"])
    assert torch.equal(net.position_ids, t["position_ids"]) and net.position_ids.dtype == torch.int64
    assert torch.equal(net.proj.weight, t["proj.weight"])
    assert torch.equal(net.scale, torch.full((2,), 5.0))  # no tensor provides it: kept, not missing
    assert {"rotary.inv_freq", "position_ids"} <= set(report.loaded)
    assert report.missing == [] and report.unexpected == []


def test_buffer_in_a_bf16_model_is_cast_like_a_parameter(tmp_path):
    t = tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    net = Net().to(torch.bfloat16)
    load_checkpoint(net, tmp_path)
    assert net.rotary.inv_freq.dtype == torch.bfloat16
    assert torch.equal(net.rotary.inv_freq, t["rotary.inv_freq"].to(torch.bfloat16))


def test_mis_shaped_buffer_is_reported_with_the_other_problems_and_nothing_is_written(tmp_path):
    t = tensors()
    t["rotary.inv_freq"] = torch.arange(6, dtype=torch.float32)  # wrong shape
    t["position_ids"] = torch.arange(16, dtype=torch.float32)  # float into an int64 buffer
    t["proj.bias"] = torch.randn(5)  # a parameter's wrong shape, reported beside them
    del t["proj.weight"]  # and a missing parameter
    save_file(t, str(tmp_path / "model.safetensors"))
    net = Net()
    before = {n: v.clone() for n, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(net, tmp_path)
    msg = str(info.value)
    assert "4 problem(s); nothing was loaded" in msg
    assert "missing tensor for parameter 'proj.weight'" in msg
    assert ("tensor 'rotary.inv_freq' (model.safetensors) → 'rotary.inv_freq': rotary.inv_freq (persistent buffer): "
            "expected shape (4,), found (6,)\n") in msg + "\n"  # (said once: not restated as the whole shape)
    assert "→ 'position_ids': position_ids (persistent buffer): expected an integer tensor (torch.int64), found " \
           "torch.float32" in msg
    assert "→ 'proj.bias': expected shape (8,), found (5,)" in msg
    assert "unexpected tensor" not in msg
    assert all(torch.equal(v.view(torch.uint8), before[n].view(torch.uint8)) for n, v in net.state_dict().items())


def test_non_persistent_buffers_tensor_is_unexpected_and_says_why(tmp_path):
    t = tensors() | {"cache": torch.ones(3)}
    save_file(t, str(tmp_path / "model.safetensors"))
    net = Net()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(net, tmp_path)
    msg = str(info.value)
    assert "1 problem(s)" in msg
    assert "unexpected tensor 'cache': no parameter of the model takes it (cache is a buffer the model " \
           "marks non-persistent, register_buffer(..., persistent=False)" in msg
    assert torch.equal(net.cache, torch.zeros(3)) and torch.equal(net.rotary.inv_freq, torch.zeros(4))
    with pytest.warns(CheckpointWarning, match=r"1 of them are named after buffers the model marks non-persistent .*'cache'"):
        report = load_checkpoint(net, tmp_path, strict=False)
    assert report.unexpected == ["cache"]
    assert torch.equal(net.cache, torch.zeros(3))
    assert torch.equal(net.rotary.inv_freq, t["rotary.inv_freq"])
