"""A model loaded under ``torch.inference_mode()`` (as inference servers load) is an ordinary model afterwards, as a
float layer loaded so is: processing makes no inference tensors, so a later backward (a LoRA, activation
checkpointing) and ``load_state_dict`` (an EMA or teacher update) work. A model built and loaded inside inference
mode still runs there."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import METHODS, Net, config, inputs, loaded, write_checkpoint

from fastvideo_quant.loader import load_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {(m, seed): write_checkpoint(m, root / f"{m}-{seed}", seed) for m in METHODS for seed in (0, 1)}


def _inference_tensors(model: torch.nn.Module) -> list[str]:
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_inference()]


@pytest.mark.parametrize("method", METHODS)
def test_a_model_loaded_under_inference_mode_trains_and_takes_a_state_dict(method, checkpoints):
    model = Net(config(method))
    with torch.inference_mode():
        load_checkpoint(model, checkpoints[method, 0])
    assert _inference_tensors(model) == []
    x = inputs().requires_grad_(True)
    model(x).sum().backward()
    expected = inputs().requires_grad_(True)
    loaded(method, checkpoints[method, 0])(expected).sum().backward()
    assert torch.equal(x.grad, expected.grad)
    other = loaded(method, checkpoints[method, 1])
    model.load_state_dict(other.state_dict())
    assert torch.equal(model(inputs()), other(inputs()))


@pytest.mark.parametrize("method", METHODS)
def test_a_model_built_and_loaded_inside_inference_mode_runs_there(method, checkpoints):
    with torch.inference_mode():
        model = Net(config(method))
        load_checkpoint(model, checkpoints[method, 0])
        out = model(inputs())
    assert torch.equal(out, loaded(method, checkpoints[method, 0])(inputs()).detach())
