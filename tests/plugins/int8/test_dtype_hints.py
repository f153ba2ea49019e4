"""The bitsandbytes hint of an int8 layer's dtype error is given where it is the fix: an int8 weight read by layers
built to quantize float weights on load; not for a bad SCB, which only layers built with that config read."""

from __future__ import annotations

import json

import pytest
import torch
from fvq_int8 import Int8Config
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization.selection import resolve_quant_config

BNB = {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0}
HINT = "An int8 weight means a bitsandbytes checkpoint"


def _model(config) -> torch.nn.Module:
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 32, bias=False, params_dtype=torch.bfloat16, quant_config=config, prefix="proj")
    return model


def _error(model, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    return str(info.value)


def test_a_float64_scb_in_a_bitsandbytes_checkpoint_gets_no_bitsandbytes_hint(tmp_path) -> None:
    tensors = {f"proj.{k}": v for k, v in Int8Config.from_config(BNB).quantize_weight(torch.randn(32, 64)).items()}
    tensors["proj.SCB"] = tensors["proj.SCB"].double()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": BNB}))
    text = _error(_model(resolve_quant_config(checkpoint=tmp_path)), tmp_path)
    assert "'proj.SCB': expected a float16/bfloat16/float32 tensor, found torch.float64" in text, text
    assert HINT not in text and "load it with its quantization_config" not in text, text


def test_an_int8_weight_into_layers_quantizing_on_load_gets_the_bitsandbytes_hint(tmp_path) -> None:
    save_file({"proj.weight": torch.ones(32, 64, dtype=torch.int8)}, str(tmp_path / "model.safetensors"))
    text = _error(_model(Int8Config()), tmp_path)
    assert ("'proj.weight': expected a float16/bfloat16/float32 tensor, found torch.int8. An int8 weight means a "
            "bitsandbytes checkpoint: load it with its quantization_config (quant_method 'bitsandbytes')") in text, text
