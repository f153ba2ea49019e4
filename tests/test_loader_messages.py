"""What the loader's messages call things: parameters by their names, values by where they went wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 8, 4, 2, bias=False, prefix="qkv_proj")
        self.patch_embed = ReplicatedLinear(32, 16, prefix="patch_embed")
        self.norm = torch.nn.LayerNorm(16)


def test_rehearsal_messages_name_the_parameter_not_parameter(tmp_path) -> None:
    save_file({"q_proj.weight": torch.randn(32, 32), "k_proj.weight": torch.randn(8, 32),
               "v_proj.weight": torch.randn(16, 32), "patch_embed.weight": torch.randn(16, 32),
               "patch_embed.bias": torch.randn(17), "norm.weight": torch.randn(15), "norm.bias": torch.randn(16)},
              str(tmp_path / "model.safetensors"))
    model = Net()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ".parameter" not in text and ": parameter" not in text
    assert "qkv_proj.weight shard 'k'" in text
    assert "patch_embed.bias" in text.split("→ 'patch_embed.bias'")[1]
    assert "'norm.weight': norm.weight" in text
    assert isinstance(model.qkv_proj.weight, torch.nn.Parameter) and model.qkv_proj.weight.device.type == "cpu"
