"""Checkpoint loading: name mapping to fused params, sharded files, clear reports, nothing half-loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, ShardingError, WeightLoadError
from fastvideo_quant.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    adjust_scalar_to_fused_array,
)
from fastvideo_quant.lazy import LazyTensor
from fastvideo_quant.loader import load_checkpoint


class Block(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.qkv_proj = QKVParallelLinear(16, 4, 4, 2, params_dtype=dtype, prefix="qkv_proj")
        self.gate_up_proj = MergedColumnParallelLinear(16, [32, 32], bias=False, params_dtype=dtype)
        self.down_proj = RowParallelLinear(32, 16, params_dtype=dtype)
        self.head = ReplicatedLinear(16, 8, bias=False, params_dtype=dtype)


def hf_tensors(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "q_proj.weight": r(16, 16), "k_proj.weight": r(8, 16), "v_proj.weight": r(8, 16),
        "q_proj.bias": r(16), "k_proj.bias": r(8), "v_proj.bias": r(8),
        "gate_proj.weight": r(32, 16), "up_proj.weight": r(32, 16),
        "down_proj.weight": r(16, 32), "down_proj.bias": r(16), "head.weight": r(8, 16),
    }


def test_loads_single_file_through_packed_mapping(tmp_path) -> None:
    t = hf_tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    block = Block()
    report = load_checkpoint(block, tmp_path)
    assert sorted(report.loaded["qkv_proj.weight"]) == ["k", "q", "v"]
    assert torch.equal(block.qkv_proj.weight, torch.cat([t["q_proj.weight"], t["k_proj.weight"], t["v_proj.weight"]]))
    assert torch.equal(block.qkv_proj.bias, torch.cat([t["q_proj.bias"], t["k_proj.bias"], t["v_proj.bias"]]))
    assert torch.equal(block.gate_up_proj.weight, torch.cat([t["gate_proj.weight"], t["up_proj.weight"]]))
    assert torch.equal(block.down_proj.weight, t["down_proj.weight"])


def test_loads_sharded_checkpoint_with_index(tmp_path) -> None:
    t = hf_tensors()
    names = sorted(t)
    first, second = names[:5], names[5:]
    save_file({n: t[n] for n in first}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: t[n] for n in second}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in second}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    block = Block()
    load_checkpoint(block, tmp_path)
    assert torch.equal(block.head.weight, t["head.weight"])


def test_problems_reported_together_and_nothing_loaded(tmp_path) -> None:
    t = hf_tensors()
    t["down_proj.weight"] = torch.randn(16, 31)  # mis-shaped
    t["gate_proj.weight"] = torch.randn(30, 16)  # mis-shaped part of a fused param
    del t["head.weight"]  # missing
    del t["v_proj.weight"]  # missing part
    t["extra.weight"] = torch.randn(2)  # unexpected
    save_file(t, str(tmp_path / "model.safetensors"))
    block = Block()
    for p in block.parameters():
        p.data.fill_(7.0)
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(block, tmp_path)
    msg = str(info.value)
    assert "unexpected tensor 'extra.weight'" in msg
    assert "missing tensor for parameter 'head.weight'" in msg
    assert "missing parts ['v_proj'] of fused parameter 'qkv_proj.weight' (checkpoint tensor(s) 'v_proj.weight')" in msg
    # (one sentence of the whole tensor's shape, not the parameter's size along dim 1 and then the whole shape)
    assert "tensor 'down_proj.weight' (model.safetensors) → 'down_proj.weight': expected shape (16, 32), found (16, 31)\n" \
        in msg + "\n"
    assert "tensor 'gate_proj.weight'" in msg and "shard 0" in msg and "(30, 16)" in msg
    for n, p in block.named_parameters():
        assert torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)), f"{n} was touched"  # bits: NaN


def test_pickle_checkpoints_are_refused(tmp_path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickle checkpoints are not loaded"):
        load_checkpoint(Block(), tmp_path)


def test_lazy_tensor_reads_only_the_slice(tmp_path) -> None:
    from safetensors import safe_open

    full = torch.arange(64.0).reshape(8, 8)
    save_file({"w": full}, str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        sl = f.get_slice("w")
        lazy = LazyTensor(sl, tuple(sl.get_shape()), "w").narrow(0, 2, 3).narrow(1, 4, 4)
        assert tuple(lazy.shape) == (3, 4)
        assert torch.equal(lazy.materialize(), full[2:5, 4:8])


def test_bad_shard_ids_and_shapes_are_clear_errors() -> None:
    block = Block()
    w = block.qkv_proj.weight
    with pytest.raises(ShardingError, match=r"QKVParallelLinear 'qkv_proj': unknown shard id 'x'"):
        w.weight_loader(w, torch.zeros(16, 16), "x")
    m = block.gate_up_proj.weight
    with pytest.raises(ShardingError, match=r"unknown shard id 2; expected an int in \[0, 2\)"):
        m.weight_loader(m, torch.zeros(32, 16), 2)
    with pytest.raises(WeightLoadError, match=r"qkv_proj.weight shard 'k'.*expected size 8 along dim 0.*\(9, 16\)"):
        w.weight_loader(w, torch.zeros(9, 16), "k")
    with pytest.raises(WeightLoadError, match=r"expected shape \(8, 16\), found \(8, 15\)"):
        block.head.weight.weight_loader(block.head.weight, torch.zeros(8, 15))
    with pytest.raises(ShardingError, match="unknown shard id 'z'"):
        adjust_scalar_to_fused_array(torch.zeros(3), torch.tensor(1.0), "z")
    slot, value = adjust_scalar_to_fused_array(torch.zeros(3), torch.tensor([2.0]), "v")
    assert value.item() == 2.0 and slot.shape == ()


def test_row_rejects_unreduced_added_bias() -> None:
    from fastvideo_quant.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reduce_results=False with a bias that is added"):
        RowParallelLinear(8, 8, reduce_results=False)


def _format_checked_head() -> ReplicatedLinear:
    """A layer with a one-element format code whose loader reads the value (as bitsandbytes' weight_format)."""
    head = ReplicatedLinear(16, 8, bias=False)

    def fmt_loader(param, loaded):
        from fastvideo_quant.lazy import materialize

        value = int(materialize(loaded).item())
        if value != 0:
            raise WeightLoadError(f"format code {value} is not supported; expected 0")
        param.data.copy_(materialize(loaded).reshape(param.shape))

    fmt = torch.nn.Parameter(torch.zeros(1, dtype=torch.uint8), requires_grad=False)
    fmt.weight_loader = fmt_loader
    head.register_parameter("zfmt", fmt)  # sorts after "weight": the weight is loaded first
    return head


def test_value_errors_are_found_before_anything_is_written(tmp_path) -> None:
    save_file({"weight": torch.randn(8, 16), "zfmt": torch.tensor([1], dtype=torch.uint8)}, str(tmp_path / "m.safetensors"))
    head = _format_checked_head()
    head.weight.data.fill_(7.0)
    with pytest.raises(CheckpointError, match=r"tensor 'zfmt'.*format code 1 is not supported"):
        load_checkpoint(head, tmp_path)
    assert (head.weight == 7.0).all(), "the weight was written although the load failed"


def test_optional_parameters_may_be_absent(tmp_path) -> None:
    save_file({"weight": torch.randn(8, 16)}, str(tmp_path / "m.safetensors"))
    head = _format_checked_head()
    with pytest.raises(CheckpointError, match="missing tensor for parameter 'zfmt'"):
        load_checkpoint(head, tmp_path)
    head.zfmt.checkpoint_optional = True
    load_checkpoint(head, tmp_path)


def test_part_names_reach_only_fused_layers(tmp_path) -> None:
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = ReplicatedLinear(16, 8, bias=False)  # same name, but not a fused layer

    save_file({"gate_proj.weight": torch.randn(8, 16)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'gate_proj.weight'"):
        load_checkpoint(Plain(), tmp_path)


def test_weights_are_processed_once(tmp_path) -> None:
    save_file(hf_tensors(), str(tmp_path / "model.safetensors"))
    block = Block()
    calls = []
    block.head.quant_method.process_weights_after_loading = lambda layer: calls.append(layer)
    load_checkpoint(block, tmp_path)
    from fastvideo_quant.loader import process_weights_after_loading

    process_weights_after_loading(block)
    assert calls == [block.head]


def test_parameter_without_weight_loader_in_a_fused_layer_names_the_plugin(tmp_path) -> None:
    """A method whose create_weights forgot the weight_loader on a parameter: in a fused layer the checkpoint's parts
    cannot be placed. The problem names the method class, its plugin and the fix (was a raw TypeError of
    default_weight_loader taking 2 arguments)."""
    import toy_method

    from fastvideo_quant import plugins

    plugins.register_plugin(toy_method.ForgetfulPlugin(), name="toy-forgetful")
    try:
        model = torch.nn.Module()
        model.gate_up_proj = MergedColumnParallelLinear(16, [8, 8], bias=False, params_dtype=torch.float32,
                                                        quant_config=toy_method.ForgetfulConfig(), prefix="gate_up_proj")
        tensors = {f"{p}.{s}": t for p in ("gate_proj", "up_proj")
                   for s, t in toy_method.ToyConfig().quantize_weight(torch.randn(8, 16)).items()}
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(model, tmp_path)
    finally:
        plugins.unregister_plugin("toy-forgetful")
    msg = str(info.value)
    assert "tensor 'gate_proj.weight_scale' (model.safetensors) → 'gate_up_proj.weight_scale' shard 0: the parameter has no " \
           "weight_loader, so nothing can place shard 0 of this fused layer" in msg, msg
    assert "ForgetfulMethod.create_weights of method 'toy-forgetful' of plugin 'toy-forgetful' (in-process)" in msg, msg
    assert "TypeError" not in msg, msg


def test_tensor_kept_as_a_plain_attribute_is_named_as_such(tmp_path) -> None:
    """create_weights set layer.weight_scale = tensor without registering it: the checkpoint's weight_scale is
    unexpected, and the problem says the attribute must be registered (it said only 'no parameter takes it')."""
    model = torch.nn.Module()
    model.head = ReplicatedLinear(16, 8, bias=False, params_dtype=torch.float32, prefix="head")
    model.head.weight_scale = torch.ones(8)  # the bug: a plain attribute
    save_file({"head.weight": torch.randn(8, 16), "head.weight_scale": torch.ones(8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    assert ("unexpected tensor 'head.weight_scale': no parameter of the model takes it (head.weight_scale is a plain "
            "tensor attribute, not a registered parameter: UnquantizedLinearMethod.create_weights must register it") in msg
