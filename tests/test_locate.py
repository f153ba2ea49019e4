"""checkpoint_location: an entry of a layer's parameter on a rank → the checkpoint tensor and index it came from.

The property test loads checkpoints with a distinct value per entry on real gloo ranks (TP 1, 2, 4) and checks that
every location holds the parameter's value; the others pin down when the answer is None.
"""

from __future__ import annotations

import locate_workers as W
import pytest
import torch

from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from fastvideo_quant.layers.locate import checkpoint_location, fused_part
from fastvideo_quant.testing.distributed import run_distributed


def test_every_entry_locates_its_checkpoint_value_at_tp_1_2_4():
    results = run_distributed(W.locate_roundtrip, 4, 2, backend="gloo")
    for rank, checked in enumerate(results):
        for tp in (1, 2, 4):
            want = {(kind, method, tp, fused, kv) for kind, method, fused, kv in W.combos(tp)} if rank < tp else set()
            got = {key for key in checked if key[2] == tp}
            assert got == want, f"rank {rank}, TP {tp}: combinations not checked: {sorted(want - got)}"
        assert all(n > 0 for n in checked.values()), f"rank {rank}: combinations with no entry checked"


@pytest.mark.parametrize("fused", [False, True], ids=["parts", "fused-on-disk"])
def test_qkv_at_tp1_names_the_part_and_its_row(tmp_path, fused):
    model, layer = W.build("qkv", "unquantized", W.sizes("qkv", "unquantized", 1, 1, 1, 2, False))
    tensors = W.checkpoint("qkv", "unquantized", W.sizes("qkv", "unquantized", 1, 1, 1, 2, False), fused)
    _load(model, tensors, tmp_path)
    # rows: q 0..31, k 32..47, v 48..63
    if fused:
        assert checkpoint_location(layer, "weight", (38, 5)) == ("blk.qkv_proj.weight", (38, 5))
    else:
        assert checkpoint_location(layer, "weight", (38, 5)) == ("blk.k_proj.weight", (6, 5))
        assert checkpoint_location(layer, "bias", (63,)) == ("blk.v_proj.bias", (15,))
    assert fused_part(layer, "weight", (38, 5)) == "k"


def test_a_fused_layer_loaded_by_hand_gives_no_location_but_its_part():
    layer = MergedColumnParallelLinear(16, [8, 24], params_dtype=torch.float32, prefix="blk.gate_up_proj")
    layer.weight.weight_loader(layer.weight, torch.ones(32, 16))  # fused on disk or per part: nothing records it
    assert checkpoint_location(layer, "weight", (20, 3)) is None
    assert fused_part(layer, "weight", (20, 3)) == 1


def test_a_message_without_a_location_still_names_the_part():
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.quantization.base import check_finite

    layer = MergedColumnParallelLinear(16, [8, 24], bias=False, params_dtype=torch.float32, prefix="blk.gate_up_proj")
    weight = torch.ones(32, 16)
    weight[20, 3] = float("nan")
    layer.weight.weight_loader(layer.weight, weight)
    with pytest.raises(WeightLoadError) as err:
        check_finite(layer, "weight", "unquantized")
    assert "tensor 'blk.gate_up_proj.weight' shard 1 (torch.float32, shape (32, 16))" in str(err.value)
    assert "the first at [20, 3] = nan" in str(err.value) and "checkpoint tensor" not in str(err.value)


def test_unknown_parameters_layers_and_indices_give_none():
    layer = RowParallelLinear(16, 8, params_dtype=torch.float32, prefix="blk.down")
    assert checkpoint_location(layer, "weight", (3, 4)) == ("blk.down.weight", (3, 4))
    layer.register_parameter("extra", torch.nn.Parameter(torch.zeros(4), requires_grad=False))
    assert checkpoint_location(layer, "extra", (1,)) == ("blk.down.extra", (1,))  # no input_dim: whole
    assert checkpoint_location(layer, "weight", (8, 0)) is None  # out of range
    assert checkpoint_location(layer, "weight", (1,)) is None  # wrong rank
    assert checkpoint_location(layer, "missing", (0,)) is None
    assert checkpoint_location(torch.nn.Linear(4, 4), "weight", (0, 0)) is None
    unnamed = RowParallelLinear(16, 8, params_dtype=torch.float32)
    assert checkpoint_location(unnamed, "weight", (0, 0)) is None  # no prefix: its name in the model is unknown


def test_a_fused_parameter_without_an_output_dim_names_no_part(tmp_path):
    """A tensor each part's load copies whole (the last wins) has no location when stored per part."""
    model, layer = W.build("qkv", "int8", W.sizes("qkv", "int8", 1, 1, 1, 2, False))
    _load(model, W.checkpoint("qkv", "int8", W.sizes("qkv", "int8", 1, 1, 1, 2, False), False), tmp_path)
    assert checkpoint_location(layer, "weight_format", (0,)) is None
    assert fused_part(layer, "weight_format", (0,)) is None
    assert checkpoint_location(layer, "SCB", (40,)) == ("blk.k_proj.SCB", (8,))


def test_part_names_come_from_the_quant_configs_mapping(tmp_path):
    cfg = W.register("fp8-tensor")
    cfg.packed_modules_mapping = {"qkv_proj": ["to_q", "to_k", "to_v"]}
    layer = QKVParallelLinear(32, 8, 4, 2, bias=False, quant_config=cfg, prefix="blk.qkv_proj")
    layer._fvq_loaded_shards = {"weight_scale": {"q", "k", "v"}}  # as load_checkpoint records a per-part load
    assert checkpoint_location(layer, "weight_scale", (2,)) == ("blk.to_v.weight_scale", ())
    cfg.packed_modules_mapping = {}
    assert checkpoint_location(layer, "weight_scale", (2,)) is None
    assert fused_part(layer, "weight_scale", (2,)) == "v"


def test_the_tensor_load_checkpoint_read_is_named_whatever_the_mapping_and_prefix(tmp_path):
    """load_checkpoint records which checkpoint tensor it wrote into each parameter (shard): the location names
    that one, even when the model loads with its own mapping (wq/wk/wv) and the layer's prefix is not its path."""
    from safetensors.torch import save_file

    from fastvideo_quant.loader import load_checkpoint

    model = torch.nn.Module()
    model.attn = torch.nn.Module()
    model.attn.qkv_proj = layer = QKVParallelLinear(8, 4, 2, 1, bias=False, params_dtype=torch.float32,
                                                    prefix="qkv_proj")  # prefix without the model's "attn."
    save_file({f"attn.{p}.weight": torch.randn(n, 8) for p, n in (("wq", 8), ("wk", 4), ("wv", 4))},
              str(tmp_path / "model.safetensors"))
    load_checkpoint(model, tmp_path, packed_modules_mapping={"qkv_proj": ["wq", "wk", "wv"]}, process_weights=False)
    assert checkpoint_location(layer, "weight", (10, 3)) == ("attn.wk.weight", (2, 3))
    model.head = head = RowParallelLinear(8, 4, bias=False, params_dtype=torch.float32, prefix="out")
    save_file({"head.weight": torch.randn(4, 8)}, str(tmp_path / "model.safetensors"))
    load_checkpoint(model, tmp_path, strict=False, process_weights=False)
    assert checkpoint_location(head, "weight", (1, 2)) == ("head.weight", (1, 2))


def _load(model, tensors, path):
    from safetensors.torch import save_file

    from fastvideo_quant.loader import load_checkpoint

    save_file({n: t.contiguous() for n, t in tensors.items()}, str(path / "model.safetensors"))
    load_checkpoint(model, path, process_weights=False)
