"""packed_modules_mapping against the model's fused layers: one checkpoint module per shard, in the layer's order."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from fastvideo_quant.loader import load_checkpoint


class Attn(torch.nn.Module):
    packed_modules_mapping = {"to_qkv": ["to_q", "to_k"]}  # "to_v" forgotten

    def __init__(self, kv_heads: int = 4) -> None:
        super().__init__()
        self.to_qkv = QKVParallelLinear(32, 8, 4, kv_heads, bias=False, prefix="to_qkv")


class Mlp(torch.nn.Module):
    packed_modules_mapping = {"ff_in": ["ff_gate"]}  # "ff_up" forgotten

    def __init__(self) -> None:
        super().__init__()
        self.ff_in = MergedColumnParallelLinear(32, [64, 64], bias=False, prefix="ff_in")


def _save(path, tensors) -> None:
    save_file(tensors, str(path / "model.safetensors"))


def test_mapping_with_fewer_parts_than_the_qkv_layer_has_shards_is_refused(tmp_path) -> None:
    _save(tmp_path, {f"to_{n}.weight": torch.randn(32, 32) for n in "qk"})
    model = Attn()
    model.to_qkv.weight.data.fill_(0.5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert "Attn.packed_modules_mapping maps 'to_qkv' to 2 checkpoint module(s) ['to_q', 'to_k']" in text
    assert "layer 'to_qkv' (QKVParallelLinear) has 3 shards ('q', 'k', 'v', in that order)" in text
    assert "shard(s) 'v' would never be written" in text
    assert bool((model.to_qkv.weight == 0.5).all())


def test_fewer_parts_refused_also_when_the_checkpoint_has_the_forgotten_part_and_without_strict(tmp_path) -> None:
    _save(tmp_path, {f"to_{n}.weight": torch.randn(32, 32) for n in "qkv"})
    with pytest.raises(CheckpointError, match="shard\\(s\\) 'v' would never be written"):
        load_checkpoint(Attn(), tmp_path, strict=False)


def test_mapping_with_fewer_parts_than_the_merged_layer_has_shards_is_refused(tmp_path) -> None:
    _save(tmp_path, {"ff_gate.weight": torch.randn(64, 32)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Mlp(), tmp_path)
    assert "layer 'ff_in' (MergedColumnParallelLinear) has 2 shards (0, 1, in that order)" in str(err.value)
    assert "shard(s) 1 would never be written" in str(err.value)
    assert "output_sizes order [64, 64]" in str(err.value)


def test_mapping_with_more_parts_than_the_layer_has_shards_is_a_clear_error(tmp_path) -> None:
    _save(tmp_path, {f"{n}_proj.weight": torch.randn(32, 32) for n in "qkvx"})
    model = Attn()
    model.qkv_proj = model.to_qkv
    del model.to_qkv
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path, packed_modules_mapping={"qkv_proj": ["q_proj", "k_proj", "v_proj", "x_proj"]})
    text = str(err.value)
    assert "the packed_modules_mapping argument maps 'qkv_proj' to 4 checkpoint module(s)" in text
    assert "['x_proj'] would have no shard to go to" in text


def test_parts_in_the_wrong_order_name_the_positional_order(tmp_path) -> None:
    _save(tmp_path, {"to_q.weight": torch.randn(32, 32), "to_k.weight": torch.randn(16, 32),
                     "to_v.weight": torch.randn(16, 32)})
    model = Attn(kv_heads=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path, packed_modules_mapping={"to_qkv": ["to_k", "to_q", "to_v"]})
    text = str(err.value)
    assert ("'to_k' is at position 0 of packed_modules_mapping['to_qkv'] ['to_k', 'to_q', 'to_v'], so it loads into "
            "shard 'q' (shape (32, 32)), but its shape (16, 32) fits shard(s) 'k', 'v': the mapping is positional") in text
    assert "shard order: q, k, v" in text


def test_qkv_shard_position_out_of_range_is_a_clear_error() -> None:
    from fastvideo_quant.errors import ShardingError

    layer = Attn().to_qkv
    assert [layer.checkpoint_shard_id(i) for i in range(3)] == ["q", "k", "v"]
    with pytest.raises(ShardingError, match="'to_qkv': no shard at position 3; the layer has 3 shards, 'q', 'k', 'v'"):
        layer.checkpoint_shard_id(3)


class SelfAndCrossAttn(torch.nn.Module):
    """Self-attention's q, k, v fused as to_qkv; cross-attention's k, v fused as to_kv (its q apart)."""

    def __init__(self, both_in_one: bool = False) -> None:
        from fastvideo_quant.layers.linear import ReplicatedLinear

        super().__init__()
        self.attn1, self.attn2 = torch.nn.Module(), torch.nn.Module()
        self.attn1.to_qkv = QKVParallelLinear(32, 8, 4, 4, bias=False, prefix="attn1.to_qkv")
        self.attn2.to_q = ReplicatedLinear(32, 32, bias=False, prefix="attn2.to_q")
        self.attn2.to_kv = MergedColumnParallelLinear(32, [32, 32], bias=False, prefix="attn2.to_kv")
        if both_in_one:  # (a module holding both: which one its to_k is for cannot be told)
            self.attn1.to_kv = MergedColumnParallelLinear(32, [32, 32], bias=False, prefix="attn1.to_kv")


@pytest.mark.parametrize("order", ["qkv first", "kv first"])
def test_a_part_name_two_fused_modules_list_goes_to_the_one_the_model_has_there(tmp_path, order) -> None:
    """{"to_qkv": [to_q, to_k, to_v], "to_kv": [to_k, to_v]}: attn1's to_k goes into attn1.to_qkv and attn2's into
    attn2.to_kv, in either order of the mapping (the last entry took every to_k, and the load failed with a rename
    hint that would break the other attention; a porting author's review)."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"attn{i}.to_{n}.weight": torch.randn(32, 32, generator=g) for i in (1, 2) for n in "qkv"}
    _save(tmp_path, tensors)
    mapping = {"to_qkv": ["to_q", "to_k", "to_v"], "to_kv": ["to_k", "to_v"]}
    if order == "kv first":
        mapping = dict(reversed(list(mapping.items())))
    model = SelfAndCrossAttn()
    load_checkpoint(model, tmp_path, packed_modules_mapping=mapping)
    assert torch.equal(model.attn1.to_qkv.weight, torch.cat([tensors[f"attn1.to_{n}.weight"] for n in "qkv"]))
    assert torch.equal(model.attn2.to_kv.weight, torch.cat([tensors[f"attn2.to_{n}.weight"] for n in "kv"]))
    assert torch.equal(model.attn2.to_q.weight, tensors["attn2.to_q.weight"])


def test_a_module_holding_both_fused_modules_of_a_part_name_is_refused(tmp_path) -> None:
    _save(tmp_path, {f"attn{i}.to_{n}.weight": torch.randn(32, 32) for i in (1, 2) for n in "qkv"})
    model = SelfAndCrossAttn(both_in_one=True)
    model.attn1.to_qkv.weight.data.fill_(0.5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path, packed_modules_mapping={"to_qkv": ["to_q", "to_k", "to_v"],
                                                                 "to_kv": ["to_k", "to_v"]})
    assert ("checkpoint tensor 'attn1.to_k.weight': packed_modules_mapping lists 'to_k' as a part of several fused "
            "modules, and the model has more than one of them there: ['attn1.to_qkv.weight', 'attn1.to_kv.weight']"
            ) in str(err.value), str(err.value)
    assert bool((model.attn1.to_qkv.weight == 0.5).all())
