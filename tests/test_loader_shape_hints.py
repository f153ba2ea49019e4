"""A mis-shaped checkpoint tensor is described by its whole shape against the whole shape expected, not only the
size along the dim the layer shards; a fused layer's part is said to fit another shard only when its whole shape does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint


class Attn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(64, 16, 4, 2, bias=False, prefix="qkv_proj")  # q (64, 64), k and v (32, 64)
        self.o_proj = RowParallelLinear(64, 64, bias=False, prefix="o_proj")


def _tensors() -> dict[str, torch.Tensor]:
    return {"q_proj.weight": torch.randn(64, 64), "k_proj.weight": torch.randn(32, 64),
            "v_proj.weight": torch.randn(32, 64), "o_proj.weight": torch.randn(64, 64)}


def _error(tmp_path, tensors) -> str:
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Attn(), tmp_path)
    return str(err.value)


def test_a_transposed_part_is_not_said_to_fit_another_shard(tmp_path) -> None:
    """(64, 32) has shard 'q''s size along dim 0, but no shard takes a (64, 32) tensor: the mapping's order is not it."""
    tensors = _tensors()
    tensors["k_proj.weight"] = tensors["k_proj.weight"].t().contiguous()
    text = _error(tmp_path, tensors)
    assert "→ 'qkv_proj.weight' shard 'k': expected shape (32, 64), found (64, 32) (transposed?)" in text, text
    assert "fits shard" not in text and "positional" not in text, text


def test_a_part_whose_whole_shape_is_another_shards_names_the_positional_mapping(tmp_path) -> None:
    tensors = _tensors()
    tensors["k_proj.weight"] = torch.randn(64, 64)
    text = _error(tmp_path, tensors)
    assert ("so it loads into shard 'k' (shape (32, 64)), but its shape (64, 64) fits shard(s) 'q': the mapping is "
            "positional, list the checkpoint modules in the layer's shard order: q, k, v") in text, text


def test_a_flattened_weight_states_the_whole_shape_expected(tmp_path) -> None:
    tensors = _tensors()
    tensors["o_proj.weight"] = tensors["o_proj.weight"].reshape(-1)
    text = _error(tmp_path, tensors)
    # (the whole shape in place of the parameter's size along one dim: one sentence)
    assert "→ 'o_proj.weight': expected shape (64, 64), found (4096,)" in text and "along dim" not in text, text
    assert "(transposed?)" not in text
