"""A weight stored as torch.bool is corrupt, not quantized: no 'stored quantized ... build them with the config it
was written with' line, whatever the layers were built with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization.selection import resolve_quant_config


def _error(tmp_path, config) -> str:
    save_file({"proj.weight": torch.randn(32, 64) > 0, "proj.bias": torch.randn(32)}, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 32, params_dtype=torch.bfloat16, quant_config=config, prefix="proj")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    return str(info.value)


@pytest.mark.parametrize("method", [None, "fp8"])
def test_a_bool_weight_is_called_corrupt_not_quantized(tmp_path, method) -> None:
    text = _error(tmp_path, resolve_quant_config(method) if method else None)
    assert ("tensor(s) 'proj.weight' are stored as torch.bool, which is no weight format, quantized or not (a bool "
            "holds only True or False): the checkpoint is corrupt, not quantized; expected a float tensor "
            "(torch.bfloat16), found torch.bool") in text, text
    assert "stored quantized" not in text, text


def test_a_bool_buffer_of_the_model_loads_from_a_bool_tensor(tmp_path) -> None:
    """A persistent bool buffer (a mask) is ordinary state: its bool tensor loads (the corrupt-tensor line refused it)."""
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    save_file({"proj.weight": torch.randn(32, 64), "proj.bias": torch.randn(32), "mask": mask},
              str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 32, params_dtype=torch.bfloat16, prefix="proj")
    model.register_buffer("mask", torch.zeros(4, 4, dtype=torch.bool))
    load_checkpoint(model, tmp_path)
    assert torch.equal(model.mask, mask)
