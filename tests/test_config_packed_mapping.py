"""A model whose fused layers have their own names (diffusers' ``to_qkv``) and a checkpoint whose skip list names the
parts (``fvq quantize --skip`` writes the checkpoint's module names): the config must know the model's
``packed_modules_mapping`` to leave the fused layer unquantized. ``resolve_quant_config(packed_modules_mapping=...)``
gives it (vLLM sets the model class's into its config); without it the load names that fix, not
``modules_to_not_convert``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, ConfigError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config

PARTS = ["to_q", "to_k", "to_v"]


class Attn(torch.nn.Module):
    packed_modules_mapping = {"to_qkv": PARTS}

    def __init__(self, quant_config) -> None:
        super().__init__()
        self.to_qkv = QKVParallelLinear(64, 16, 4, bias=False, quant_config=quant_config, prefix="attn.to_qkv",
                                        params_dtype=torch.bfloat16)
        self.to_out = ReplicatedLinear(64, 64, bias=False, quant_config=quant_config, prefix="attn.to_out",
                                       params_dtype=torch.bfloat16)


class Model(torch.nn.Module):
    packed_modules_mapping = Attn.packed_modules_mapping

    def __init__(self, quant_config) -> None:
        super().__init__()
        self.attn = Attn(quant_config)


HF = {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                              "ignored_layers": [f"attn.{p}" for p in PARTS]}}


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    tensors = {f"attn.{p}.weight": torch.randn(64, 64, dtype=torch.bfloat16) for p in PARTS}
    fp8 = resolve_quant_config(hf_config=HF).quantize_weight(torch.randn(64, 64), prefix="attn.to_out")
    tensors |= {f"attn.to_out.{k}": v for k, v in fp8.items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path, tensors


def test_without_the_models_mapping_the_load_names_that_fix(ckpt) -> None:
    path, _ = ckpt
    model = Model(resolve_quant_config(hf_config=HF))
    assert model.attn.to_qkv._quantized()  # (the config cannot tell to_qkv is to_q, to_k, to_v)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    msg = str(info.value)
    assert "module 'attn.to_qkv' is stored unquantized" in msg, msg
    assert ("the quantization config's skip list names its parts ['attn.to_q', 'attn.to_k', 'attn.to_v'], but the "
            "config's packed_modules_mapping has no 'to_qkv' entry (the model's has: 'to_qkv' → ['to_q', 'to_k', "
            "'to_v'])") in msg, msg
    assert "resolve_quant_config(..., packed_modules_mapping=<Model>.packed_modules_mapping)" in msg, msg
    assert "add 'attn.to_qkv' to the quantization config's skip list" not in msg, msg


def test_the_models_mapping_given_to_resolve_leaves_the_fused_layer_unquantized(ckpt) -> None:
    path, tensors = ckpt
    config = resolve_quant_config(hf_config=HF, packed_modules_mapping=Model.packed_modules_mapping)
    assert config.packed_modules_mapping["to_qkv"] == PARTS and "qkv_proj" in config.packed_modules_mapping
    model = Model(config)
    assert not model.attn.to_qkv._quantized() and model.attn.to_out._quantized()
    load_checkpoint(model, path)
    expected = torch.cat([tensors[f"attn.{p}.weight"] for p in PARTS])
    assert torch.equal(model.attn.to_qkv.weight, expected)
    # the same for an explicit method (online quantization of a float checkpoint, skip list from the config)
    assert resolve_quant_config("fp8", packed_modules_mapping={"to_qkv": PARTS}).packed_modules_mapping["to_qkv"] == PARTS


@pytest.mark.parametrize("bad", [{"to_qkv": "to_q"}, {"to_qkv": []}, ["to_qkv"], {"to_qkv": ["to_q", 1]}])
def test_a_malformed_mapping_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match=r"resolve_quant_config: packed_modules_mapping must map each fused module's "
                                          r"name to the list of its checkpoint modules' names"):
        resolve_quant_config(hf_config=HF, packed_modules_mapping=bad)
