"""A quantized model holding its DiT as a submodule, loading the DiT's own checkpoint: the prefix check says to load
into the submodule (the layers' prefixes are the checkpoint's names), not to rebuild the layers with other prefixes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization.selection import resolve_quant_config


class DiT(torch.nn.Module):
    def __init__(self, qc) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 8, 4, 4, bias=False, quant_config=qc, prefix="qkv_proj")
        self.proj_out = ReplicatedLinear(32, 16, quant_config=qc, prefix="proj_out")


class Outer(torch.nn.Module):
    def __init__(self, qc) -> None:
        super().__init__()
        self.transformer = DiT(qc)


def _checkpoint(path, root: str = "") -> None:
    tensors = {f"{root}{n}_proj.weight": torch.randn(32, 32) for n in "qkv"}
    tensors |= {f"{root}proj_out.weight": torch.randn(16, 32), f"{root}proj_out.bias": torch.randn(16)}
    save_file(tensors, str(path / "model.safetensors"))


def test_the_submodules_own_checkpoint_is_loaded_into_the_submodule(tmp_path) -> None:
    _checkpoint(tmp_path)
    model = Outer(resolve_quant_config("fp8"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("2 quantized layer(s) were built with a prefix that is not their path in the model, but every layer's "
            "path is 'transformer.' + its prefix (layer at path 'transformer.qkv_proj' has prefix 'qkv_proj') and the "
            "checkpoint's tensor names lack 'transformer.': it is the checkpoint of submodule 'transformer', and the "
            "layers' prefixes are already its names; nothing was loaded. Load into that submodule: "
            "load_checkpoint(model.get_submodule('transformer'), path)") in text, text
    assert "build it with prefix=" not in text
    load_checkpoint(model.get_submodule("transformer"), tmp_path)  # the advice works
    assert model.transformer.qkv_proj.weight.dtype == torch.float8_e4m3fn


def test_a_checkpoint_keyed_from_the_outer_model_still_gets_the_prefix_advice(tmp_path) -> None:
    """Names with 'transformer.': the outer model's checkpoint, so the layers' prefixes are what is wrong."""
    _checkpoint(tmp_path, root="transformer.")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Outer(resolve_quant_config("fp8")), tmp_path)
    text = str(err.value)
    assert "build it with prefix='transformer.qkv_proj'" in text
    assert "get_submodule" not in text
