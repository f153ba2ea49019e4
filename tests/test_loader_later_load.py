"""A strict=False load processes the complete layers; a later load may fill the rest (the documented recipe)."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from test_loader_atomic import CheckedMethod, Net, checked_plugin, toy_checkpoint  # noqa: F401 - the fixture

from fastvideo_quant.errors import CheckpointWarning, ModelStateError, NotProcessedError
from fastvideo_quant.loader import load_checkpoint


def _split(tmp_path) -> dict[str, torch.Tensor]:
    tensors = toy_checkpoint(tmp_path / "all")
    for part, keep in (("part-1", lambda n: not n.startswith("out.")), ("part-2", lambda n: n.startswith("out."))):
        (tmp_path / part).mkdir()
        save_file({n: t for n, t in tensors.items() if keep(n)}, str(tmp_path / part / "m.safetensors"))
    return tensors


def test_later_load_fills_the_layers_a_strict_false_load_left_unprocessed(tmp_path) -> None:
    tensors = _split(tmp_path)
    net = Net()
    with pytest.warns(CheckpointWarning, match="or load a checkpoint that holds them"):
        report = load_checkpoint(net, tmp_path / "part-1", strict=False)
    assert report.unprocessed == ["out"] and CheckedMethod.processed == ["blocks.0.proj", "blocks.1.proj"]
    with pytest.raises(NotProcessedError, match="load a checkpoint that holds them"):
        net.out(torch.randn(2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(net, tmp_path / "part-2")  # strict: what part-1 wrote counts
    assert report.missing == [] and CheckedMethod.processed == ["blocks.0.proj", "blocks.1.proj", "out"]
    assert torch.equal(net.out.weight, tensors["out.weight"])
    net.out(torch.randn(2, 8))


def test_later_load_into_a_processed_layer_is_refused_naming_it(tmp_path) -> None:
    _split(tmp_path)
    net = Net()
    with pytest.warns(CheckpointWarning):
        load_checkpoint(net, tmp_path / "part-1", strict=False)
    before = net.blocks[0].proj.weight.clone()
    with pytest.raises(ModelStateError) as err:
        load_checkpoint(net, tmp_path / "all")
    text = str(err.value)
    assert "holds tensors for 2 layer(s) that were already processed: 'blocks.0.proj' ('blocks.0.proj.weight'" in text
    assert "nothing was loaded" in text and "A later load may write only into layers not processed yet" in text
    assert torch.equal(net.blocks[0].proj.weight, before)
    assert not getattr(net.out, "_fvq_weights_processed", False)
