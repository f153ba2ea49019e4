"""Stored tensors of another fp8 variant than the config declares: one hint a setting, naming the config key and the
value the tensors imply (``Fp8Config.stored_tensor_hints``). Shapes are read from real safetensors files written here.
The loader puts the hints first in a failed load's CheckpointError (before: one line a tensor — "expected a scalar,
found (256, 1)", "unexpected tensor ...input_scale" — with nothing pointing at the key)."""

from __future__ import annotations

import re

import pytest
import torch
from fvq_fp8 import Fp8Config
from safetensors import safe_open
from safetensors.torch import save_file

MODULES = {f"blocks.{i}.{m}": (256, 256) for i in range(3) for m in ("attn.q_proj", "attn.k_proj", "mlp.down_proj")}
MODULES["proj_out"] = (64, 256)


def _checkpoint(tmp_path, scale: str, input_scale: bool = False, scale_name: str = "weight_scale") -> dict:
    """name → (dtype, shape) of a checkpoint whose weight scales are ``scale``: tensor, channel or block (128x128)."""
    tensors = {}
    for module, (out, inp) in MODULES.items():
        tensors[f"{module}.weight"] = torch.zeros(out, inp, dtype=torch.float8_e4m3fn)
        shape = {"tensor": (), "channel": (out, 1), "block": (-(-out // 128), -(-inp // 128))}[scale]
        tensors[f"{module}.{scale_name}"] = torch.ones(shape)
        if input_scale:
            tensors[f"{module}.input_scale"] = torch.ones(())
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    with safe_open(str(path), "pt") as f:
        return {n: (None, tuple(f.get_slice(n).get_shape())) for n in f.keys()}


def _ct(strategy="tensor", dynamic=True, block=None):
    weights = {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": False}
    if block:
        weights["block_structure"] = block
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": weights,
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": dynamic}}}}


FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic"}


@pytest.mark.parametrize("config,stored,expected", [
    (FP8, {"scale": "channel"}, r"10 per-channel \(\[out, 1\]\) weight scale\(s\), e.g. 'blocks.0.attn.k_proj."
                                r"weight_scale' \(256, 1\).*fp8 config declares per-tensor.*strategy 'channel'; set "
                                r"\"weight_scale_strategy\": \"channel\""),
    (_ct(), {"scale": "channel"}, r"compressed-tensors config declares per-tensor.*set config_groups.<group>.weights."
                                  r"strategy to 'channel' in every config group"),
    ({**FP8, "weight_scale_strategy": "channel"}, {"scale": "tensor"}, r"strategy 'tensor'; remove "
                                                                       r"\"weight_scale_strategy\""),
    ({**FP8, "weight_block_size": [128, 128]}, {"scale": "tensor"},
     r"10 per-tensor weight scale.*declares block weight scales.*remove \"weight_block_size\""),
    (FP8, {"scale": "block", "scale_name": "weight_scale_inv"}, r"set \"weight_block_size\": \[128, 128\]"),
    (_ct("channel"), {"scale": "block"}, r"strategy to 'block' with block_structure \[128, 128\]"),
    (FP8, {"scale": "tensor", "input_scale": True}, r"10 input_scale tensor\(s\) \(static activation scales\).*declares "
                                                    r"dynamic activations.*set \"activation_scheme\": \"static\""),
    (_ct(), {"scale": "tensor", "input_scale": True}, r"input_activations.dynamic to false"),
    ({**FP8, "activation_scheme": "static"}, {"scale": "tensor"},
     r"no input_scale tensor \(dynamic activations\).*set \"activation_scheme\": \"dynamic\""),
])
def test_one_hint_names_the_key_and_the_value_the_tensors_imply(tmp_path, config, stored, expected):
    hints = Fp8Config.from_config(config).stored_tensor_hints(_checkpoint(tmp_path, **stored))
    assert len(hints) == 1, hints  # once for the checkpoint, not once a layer
    assert re.search(expected, hints[0]), hints[0]
    # where the key is set is the loader's to say: a checkpoint given as one file has no config.json read, and one
    # beside it may already say so (the hint said "in the checkpoint's config.json ... resolve_quant_config(checkpoint=...)")
    assert "config.json" not in hints[0] and "resolve_quant_config" not in hints[0], hints[0]


@pytest.mark.parametrize("config,stored", [
    (FP8, {"scale": "tensor"}),
    ({**FP8, "weight_scale_strategy": "channel"}, {"scale": "channel"}),
    ({**FP8, "weight_block_size": [128, 128]}, {"scale": "block", "scale_name": "weight_scale_inv"}),
    (_ct("block", block=[128, 128]), {"scale": "block"}),
    ({**FP8, "activation_scheme": "static"}, {"scale": "tensor", "input_scale": True}),
])
def test_no_hint_for_tensors_that_fit(tmp_path, config, stored):
    assert Fp8Config.from_config(config).stored_tensor_hints(_checkpoint(tmp_path, **stored)) == []


def test_the_loader_puts_the_hint_first(tmp_path) -> None:
    import json

    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    channel = Fp8Config.from_config({**FP8, "weight_scale_strategy": "channel"})
    tensors = {}
    for name in ("a", "b"):
        tensors |= {f"{name}.{k}": v for k, v in channel.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": FP8}))  # (says per-tensor: wrong)
    config = resolve_quant_config(checkpoint=tmp_path)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, quant_config=config, prefix=n) for n in "ab"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    lines = str(info.value).splitlines()
    assert "per-channel" in lines[1] and '"weight_scale_strategy": "channel"' in lines[1], lines[1]
    assert sum("weight_scale_strategy" in line for line in lines) == 1, lines
