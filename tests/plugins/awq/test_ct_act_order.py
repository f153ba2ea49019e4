"""compressed-tensors W4A16 checkpoints with activation ordering 'group' (llm-compressor GPTQ ``actorder: group``:
a ``weight_g_idx`` per layer gives each input its group) read by the AWQ plugin: the regrouping's invariants, exact
de-quantization in the layer's input order, outputs within tolerance, fused parts, row-parallel shards over real gloo
ranks, and each refusal by what it names.

Checkpoints are written by ``ct_helpers`` from the format's definition, not by the plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # spawned ranks inherit sys.path and import ct_helpers
from ct_helpers import (  # noqa: E402
    CFG,
    check_tp2_joins_tp1,
    dequantized_act_order,
    gptq_g_idx,
    gpu_layers,
    load_demo,
    quantize_act_order,
    section,
    tensors,
    uneven_g_idx,
    write_demo,
)
from fvq_awq import act_order  # noqa: E402
from fvq_awq.config import AWQConfig  # noqa: E402
from fvq_awq.ct_method import CompressedTensorsW4A16Method  # noqa: E402
from fvq_awq.layout import ct_to_kernel, dequantize_kernel  # noqa: E402

from fastvideo_quant.demo.model import DemoDiT  # noqa: E402
from fastvideo_quant.errors import (  # noqa: E402
    CheckpointError,
    CheckpointValueError,
    ConfigError,
    ModelStateError,
    ShardingError,
    WeightLoadError,
)
from fastvideo_quant.layers.linear import (  # noqa: E402
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.loader import load_checkpoint  # noqa: E402
from fastvideo_quant.quantization import resolve_quant_config  # noqa: E402


def _config(symmetric: bool = True, group_size: int = 32, **weights) -> AWQConfig:
    return AWQConfig.from_config(section(symmetric, "group", group_size, actorder="group", **weights))


def _load(layer, named: dict[str, torch.Tensor], shard=None) -> None:
    params = dict(layer.named_parameters())
    for name, tensor in named.items():
        p = params[name]
        p.weight_loader(p, tensor) if shard is None else p.weight_loader(p, tensor, shard)


# --- the config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("actorder", ["group", "GROUP", "dynamic", True])
def test_actorder_group_and_its_aliases_are_read(actorder):
    """compressed-tensors reads true and 'dynamic' as 'group' (``QuantizationArgs.validate_actorder``)."""
    config = AWQConfig.from_config(section(True, "group", 64, actorder=actorder))
    assert config.act_order and config.group_size == 64
    assert "actorder group" in repr(config)


def test_the_config_round_trips_with_act_order():
    config = _config(False, 128)
    again = AWQConfig.from_config(config.to_dict())
    assert again.act_order and again.to_dict() == config.to_dict()
    assert config.to_dict()["config_groups"]["group_0"]["weights"]["actorder"] == "group"


def test_act_order_outside_compressed_tensors_or_without_groups_is_refused():
    with pytest.raises(ConfigError, match=r"act_order .* is read from compressed-tensors checkpoints; AutoAWQ's GEMM "
                                          r"format has no g_idx"):
        AWQConfig(act_order=True)
    with pytest.raises(ConfigError, match=r"act_order .* needs groups of inputs"):
        AWQConfig(group_size=-1, zero_point=False, checkpoint_format="compressed-tensors", act_order=True)
    with pytest.raises(ConfigError, match=r"act_order must be true or false, found 'yes'"):
        AWQConfig(checkpoint_format="compressed-tensors", act_order="yes")


def test_the_quantizer_refuses_to_write_act_order():
    with pytest.raises(ConfigError, match=r"the quantizer writes contiguous groups"):
        _config().quantize_weight(torch.randn(64, 64))


# --- the regrouping ------------------------------------------------------------------------------------------------
def test_a_gptq_order_is_a_permutation_at_the_checkpoint_group_size():
    g = gptq_g_idx(256, 64, torch.Generator().manual_seed(0))
    plan = act_order.plan(g, 4)
    assert plan.group == 64 and plan.in_features == 256 and plan.padding.numel() == 0 and not plan.identity
    assert torch.equal(torch.sort(plan.order).values, torch.arange(256))
    assert torch.equal(plan.order[plan.position], torch.arange(256))
    assert torch.equal(plan.source, torch.arange(4).repeat_interleave(1))  # one kernel group per checkpoint group
    assert torch.equal(g.long()[plan.order], plan.source.repeat_interleave(64))  # each kernel group one checkpoint's


def test_contiguous_groups_need_no_gather():
    plan = act_order.plan(torch.arange(256) // 128, 2)
    assert plan.identity and plan.group == 128


@settings(max_examples=60, deadline=None)
@given(k8=st.integers(1, 48), groups=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_any_group_index_regroups_exactly(k8, groups, seed):
    """Any ``weight_g_idx`` (uneven counts, empty groups): every input is placed once, each kernel group reads inputs
    of one checkpoint group, padding rows de-quantize to exactly 0, and the regrouped kernel tensors de-quantize, put
    back in input order, to ``(q - z[g]) * s[g]`` bit for bit."""
    k, out = 8 * k8, 16
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, groups, (k,), generator=gen, dtype=torch.int32)
    plan = act_order.plan(g, groups)
    assert plan.in_features % plan.group == 0 and plan.group in act_order.KERNEL_GROUPS
    assert torch.equal(plan.order[plan.position], torch.arange(k))
    real = torch.ones(plan.in_features, dtype=torch.bool)
    real[plan.padding] = False
    assert int(real.sum()) == k and torch.equal(torch.sort(plan.position).values, real.nonzero().squeeze(1))
    assert torch.equal(g.long()[plan.order[real]], plan.source.repeat_interleave(plan.group)[real])
    assert plan.group == act_order.choose_group(torch.bincount(g.long(), minlength=groups))
    stored = torch.randint(0, 16, (out, k), generator=gen, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (out, groups), generator=gen, dtype=torch.uint8)
    scales = torch.rand(out, groups, generator=gen) + 0.01
    words = tensors(stored.long() - 8, scales, None)["weight_packed"]
    qw, zk, sk, layout = ct_to_kernel(words, zeros, scales, 0, plan)
    w = dequantize_kernel(qw, zk, sk, layout)
    assert torch.equal(w[:, plan.padding], torch.zeros(out, plan.padding.numel()))
    ref = (stored.float() - zeros[:, g.long()].float()) * scales.half().float()[:, g.long()]
    assert torch.equal(w[:, plan.position], ref)


def test_the_kernel_group_stores_the_fewest_bytes():
    """Counts of 40 per group: groups of 64 pad each to 64 (K' = 64 a group), groups of 32 to 64 as well but with
    twice the scales: 64 wins; counts of 20: 32 (K' = 32 a group, against 64 and 128)."""
    assert act_order.choose_group(torch.full((8,), 40)) == 64
    assert act_order.choose_group(torch.full((8,), 20)) == 32
    assert act_order.choose_group(torch.full((8,), 128)) == 128


# --- layers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("g_idx_of", [gptq_g_idx, uneven_g_idx])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_layer_dequantizes_exactly_and_computes_within_tolerance(symmetric, g_idx_of, dtype):
    k, n, group = 256, 64, 32
    gen = torch.Generator().manual_seed(3)
    g = g_idx_of(k, group, gen)
    w = torch.randn(n, k, generator=gen)
    q, s, z = quantize_act_order(w, symmetric, g, k // group)
    layer = ReplicatedLinear(k, n, bias=True, quant_config=_config(symmetric, group), prefix="proj")
    _load(layer, {**tensors(q, s, None if symmetric else z), "weight_g_idx": g,
                  "bias": torch.randn(n, generator=gen)})
    layer.quant_method.process_weights_after_loading(layer)
    expected = dequantized_act_order(q, s, z, g)
    assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)
    assert hasattr(layer, "input_order_k") and "input_order_k" in layer.state_dict()
    x = torch.randn(3, 5, k, generator=gen).to(dtype)
    ref = x.double() @ expected.double().T + layer.bias.double()
    out = layer(x)[0]
    assert out.dtype == dtype and out.shape == (3, 5, n)
    assert ((out.double() - ref).norm() / ref.norm()).item() < AWQConfig.tolerance.for_dtype(dtype).max_rel_error


def test_an_input_of_the_wrong_width_is_refused_by_name():
    k, n = 128, 32
    g = gptq_g_idx(k, 32, torch.Generator().manual_seed(1))
    q, s, z = quantize_act_order(torch.randn(n, k), True, g, 4)
    layer = ReplicatedLinear(k, n, bias=False, quant_config=_config(), prefix="proj")
    _load(layer, {**tensors(q, s, None), "weight_g_idx": g})
    layer.quant_method.process_weights_after_loading(layer)
    with pytest.raises(ValueError, match=r"input's last dim is 96, expected 128"):  # (the layer's check)
        layer(torch.randn(2, 96))
    with pytest.raises(ValueError, match=r"AWQ layer 'proj': input's last dim must be 128 .* found shape \(2, 96\)"):
        layer.quant_method.apply(layer, torch.randn(2, 96))  # (called directly: before the gather reads past it)


def _merged(g_parts: list[torch.Tensor], symmetric: bool = True):
    k, sizes = 128, [64, 32]
    layer = MergedColumnParallelLinear(k, sizes, bias=False, quant_config=_config(symmetric), prefix="gate_up")
    expected = []
    for part, (size, g) in enumerate(zip(sizes, g_parts, strict=True)):
        q, s, z = quantize_act_order(torch.randn(size, k), symmetric, g, k // 32)
        _load(layer, {**tensors(q, s, None if symmetric else z), "weight_g_idx": g}, shard=part)
        expected.append(dequantized_act_order(q, s, z, g))
    return layer, torch.cat(expected)


def test_fused_parts_with_one_order_load_exactly():
    g = gptq_g_idx(128, 32, torch.Generator().manual_seed(5))
    layer, expected = _merged([g, g.clone()], symmetric=False)
    layer.quant_method.process_weights_after_loading(layer)
    assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)


def test_fused_parts_of_different_orders_are_refused_naming_both():
    gen = torch.Generator().manual_seed(6)
    g0, g1 = gptq_g_idx(128, 32, gen), gptq_g_idx(128, 32, gen)
    layer, _ = _merged([g0, g1])
    k = int((g0 != g1).nonzero()[0])
    with pytest.raises(WeightLoadError, match=rf"AWQ layer 'gate_up': the fused parts' weight_g_idx differ: part 0 "
                                              rf"puts input {k} in group {int(g0[k])}, part 1 in group {int(g1[k])} .*"
                                              r"Load the parts as separate, unfused layers"):
        layer.quant_method.process_weights_after_loading(layer)


def test_a_group_index_out_of_range_is_refused_as_it_loads_naming_the_entry():
    g = gptq_g_idx(128, 32, torch.Generator().manual_seed(2))
    q, s, z = quantize_act_order(torch.randn(32, 128), True, g, 4)
    bad = g.clone()
    bad[17] = 4
    layer = ReplicatedLinear(128, 32, bias=False, quant_config=_config(), prefix="proj")
    with pytest.raises(CheckpointValueError, match=r"weight_g_idx: expected a group in \[0, 4\) for each input .* "
                                                   r"found 1 of 128 that are not, the first at input 17 = 4\. "):
        _load(layer, {**tensors(q, s, None), "weight_g_idx": bad})


def test_a_bad_group_index_in_a_checkpoint_is_refused_before_anything_is_written(tmp_path):
    """The whole tensor is checked in the loader's rehearsal (the parameter's rehearse_with_data), so a row layer's
    bad entry on any rank's share stops the load before any layer is written."""
    from safetensors.torch import load_file, save_file

    write_demo(tmp_path, section(False, "group", 32, actorder="group"))
    stored = load_file(str(tmp_path / "model.safetensors"))
    stored["blocks.1.mlp.down_proj.weight_g_idx"][300] = -3
    save_file(stored, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    with pytest.raises(CheckpointError, match=r"'blocks.1.mlp.down_proj.weight_g_idx'.*expected a group in \[0, 16\) "
                                              r".* the first at input 300 = -3\."):
        load_checkpoint(model, tmp_path)
    assert torch.isnan(model.blocks[0].attn.qkv_proj.weight_scale).all()  # (nothing written)


def test_a_group_index_never_loaded_is_refused_when_processed():
    """A load that wrote no weight_g_idx (strict=False, or a direct load of the other tensors) leaves -1: refused
    when the weights are processed, saying what -1 means."""
    g = gptq_g_idx(128, 32, torch.Generator().manual_seed(2))
    q, s, z = quantize_act_order(torch.randn(32, 128), True, g, 4)
    layer = ReplicatedLinear(128, 32, bias=False, quant_config=_config(), prefix="proj")
    _load(layer, tensors(q, s, None))
    with pytest.raises(WeightLoadError, match=r"proj.weight_g_idx.*a group in \[0, 4\) .* found 128 of 128 entries "
                                              r"that are not, the first at \[0\] = -1\. -1 is what an entry holds "
                                              r"that no tensor was loaded into"):
        layer.quant_method.process_weights_after_loading(layer)


def test_a_row_layer_needs_whole_groups_only_over_the_whole_input():
    """Row shards of an act-order layer hold any inputs (regrouped on each rank): 96 inputs a rank at group 64 is
    fine; the whole input must still be whole groups (the scales' columns)."""
    config = _config(group_size=64)
    method = CompressedTensorsW4A16Method(config)
    row = RowParallelLinear(192, 64, bias=False, quant_config=None, prefix="down")
    row.tp_size = 2
    method.check_shard(row, 96, [64], 192)  # (no error: without act order it would be one)
    with pytest.raises(ShardingError, match=r"AWQ layer 'down' .*input size 200 is not a multiple of group_size 64"):
        method.check_shard(RowParallelLinear(200, 64, bias=False, quant_config=None, prefix="down"), 200, [64], 200)


# --- the demo model ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric, group_size, g_idx_of", [(True, 64, gptq_g_idx), (False, 32, gptq_g_idx),
                                                              (True, 32, uneven_g_idx)])
def test_a_demo_checkpoint_loads_exactly_and_computes_within_tolerance(tmp_path, symmetric, group_size, g_idx_of):
    expected = write_demo(tmp_path, section(symmetric, "group", group_size, actorder="group"), g_idx_of=g_idx_of)
    x = torch.randn(1, 4, CFG.in_channels).bfloat16()
    result = load_demo(0, 1, str(tmp_path), x)
    for module, w in result["weights"].items():
        parts = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}.get(
            module.rpartition(".")[2])
        base = module.rpartition(".")[0]
        want = torch.cat([expected[f"{base}.{p}"] for p in parts]) if parts else expected[module]
        assert torch.equal(w, want), module
    assert len(result["weights"]) == 9 and torch.isfinite(result["out"]).all()


@pytest.mark.parametrize("stored, declared, hint", [
    ("group", None, r"stores 15 weight_g_idx tensor\(s\).* set config_groups.<group>.weights.actorder to \"group\""),
    (None, "group", r"stores no weight_g_idx tensor .* set config_groups.<group>.weights.actorder to \"weight\""),
])
def test_an_actorder_against_the_tensors_is_named_first(tmp_path, stored, declared, hint):
    write_demo(tmp_path, section(True, "group", 64, actorder=stored))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = section(True, "group", 64, actorder=declared)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    assert any(__import__("re").search(hint, line) for line in str(err.value).splitlines()[:3]), str(err.value)


@pytest.mark.slow
def test_tp2_shards_join_to_tp1_exactly(tmp_path):
    """On real gloo ranks: each row-parallel rank holds half the inputs, whose groups are spread over the whole input
    (regrouped with padding on each rank); column shards keep the whole order. Every shard de-quantizes to its slice
    of TP=1's weight bit for bit, and the outputs agree."""
    x = torch.randn(1, 4, CFG.in_channels).bfloat16()
    for name, g_idx_of in {"gptq": gptq_g_idx, "uneven": uneven_g_idx}.items():
        write_demo(tmp_path / name, section(False, "group", 32, actorder="group"), g_idx_of=g_idx_of)
        check_tp2_joins_tp1(tmp_path / name, x, name)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("g_idx_of", [gptq_g_idx, uneven_g_idx])
@pytest.mark.parametrize("m", [1, 16, 1024])
def test_a_demo_checkpoint_on_the_gpu(tmp_path, g_idx_of, m):
    """Loaded onto the GPU: each act-order layer through the GPU kernels (gathered activations) against float32 math
    of the tensors written, eagerly, under torch.compile(fullgraph=True) and in a CUDA graph."""
    from fastvideo_quant.demo.run import load_model

    expected = write_demo(tmp_path, section(False, "group", 64, actorder="group"), g_idx_of=g_idx_of)
    model = load_model(CFG, tmp_path, torch.bfloat16, torch.device("cuda"))
    for name, layer, w in gpu_layers(model, expected):
        x = torch.randn(m, layer.input_size, device="cuda").bfloat16()
        ref = x.float() @ w.float().T + (0 if layer.bias is None else layer.bias.float())
        tolerance = AWQConfig.tolerance.for_dtype(torch.bfloat16).max_rel_error
        out = layer(x)[0].float()
        assert ((out - ref).norm() / ref.norm()).item() < tolerance, (name, m)
        torch._dynamo.reset()  # (one compiled function a layer: no recompile limit across the loop)
        compiled = torch.compile(lambda t, layer=layer: layer(t)[0], fullgraph=True)
        assert ((compiled(x).float() - ref).norm() / ref.norm()).item() < tolerance, (name, m, "compile")
        static = x.clone()
        layer(static)  # (warm-up: kernels compiled outside the capture)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(static)[0]
        static.copy_(torch.randn_like(static))
        graph.replay()
        ref2 = static.float() @ w.float().T + (0 if layer.bias is None else layer.bias.float())
        assert ((captured.float() - ref2).norm() / ref2.norm()).item() < tolerance, (name, m, "graph")


def test_gradients_flow_through_the_gather_to_the_layer_input():
    """With autograd recording, the gather is torch's (its backward scatters the gradient back to input order; the
    padding reads of input 0 add zero weight): x.grad is grad_out @ W of the layer's own input order."""
    k, n = 128, 32
    g = uneven_g_idx(k, 32, torch.Generator().manual_seed(4))
    q, s, z = quantize_act_order(torch.randn(n, k), False, g, 4)
    layer = ReplicatedLinear(k, n, bias=False, quant_config=_config(False), prefix="proj")
    _load(layer, {**tensors(q, s, z), "weight_g_idx": g})
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(3, k, requires_grad=True)
    grad = torch.randn(3, n)
    layer(x)[0].backward(grad)
    w = dequantized_act_order(q, s, z, g)
    assert torch.allclose(x.grad, grad @ w, rtol=1e-5, atol=1e-5)


def _processed(g: torch.Tensor, seed: int):
    k, n = g.numel(), 64
    q, s, z = quantize_act_order(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)), False, g, k // 64)
    layer = ReplicatedLinear(k, n, bias=False, quant_config=_config(False, 64), prefix="proj")
    _load(layer, {**tensors(q, s, z), "weight_g_idx": g})
    layer.quant_method.process_weights_after_loading(layer)
    return layer, dequantized_act_order(q, s, z, g)


def test_a_state_dict_follows_between_layers_of_other_orders():
    """A layer in its inputs' own order holds its order buffers as None, so a state_dict of a regrouped layer loads
    into it (and back) and computes the source's weight exactly. (Was: unexpected keys after torch had copied the
    weights, leaving wrong outputs.)"""
    def regrouped():
        return _processed(gptq_g_idx(256, 64, torch.Generator().manual_seed(1)), 1)

    def own():
        return _processed((torch.arange(256) // 64).to(torch.int32), 2)

    assert own()[0].input_order_k is None and regrouped()[0].input_order_k is not None
    x = torch.randn(4, 256)
    for (target, _), (source, w) in ((own(), regrouped()), (regrouped(), own())):
        target.load_state_dict(source.state_dict())
        assert torch.equal(target.quant_method.dequantize_weight(target), w)
        assert torch.allclose(target(x)[0], x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("damage, says", [
    (lambda sd: sd["input_order_k"].__setitem__(3, 256), "input_order_k must hold values in \\[0, 256\\).*found 1 "
                                                         "outside, the first 256 at index 3"),
    (lambda sd: sd["input_order_k"].__setitem__(0, -1), "input_order_k must hold values in \\[0, 256\\).*the first -1 "
                                                        "at index 0"),
    (lambda sd: sd.__setitem__("input_position_k", sd["input_position_k"].flip(0)),
     "input_order_k and input_position_k must be inverses"),
    (lambda sd: sd.__setitem__("input_order_k", sd["input_order_k"].float()),
     "input_order_k must be an int64 \\(or int32\\) tensor of shape \\(256,\\).*found torch.float32"),
    (lambda sd: sd.pop("input_position_k"), "holds input_order_k but not input_position_k"),
])
def test_a_state_dict_with_a_bad_order_is_refused_before_anything_is_copied(damage, says):
    """The GPU gather reads the activations through ``input_order_k`` with no bounds check: a state_dict whose order
    is not the layer's inputs is refused by name, and the layer keeps its own tensors."""
    target, w = _processed(gptq_g_idx(256, 64, torch.Generator().manual_seed(1)), 1)
    source, _ = _processed(gptq_g_idx(256, 64, torch.Generator().manual_seed(2)), 2)
    sd = source.state_dict()
    damage(sd)
    before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ModelStateError, match=says):
        target.load_state_dict(sd)
    after = {k: v for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(target.quant_method.dequantize_weight(target), w)


def _processed_in(g: torch.Tensor, seed: int, group: int, bias: bool = False):
    """``_processed`` at another checkpoint group size (and with a bias)."""
    k, n = g.numel(), 64
    q, s, z = quantize_act_order(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)), False, g, k // group)
    layer = ReplicatedLinear(k, n, bias=bias, quant_config=_config(False, group), prefix="proj")
    _load(layer, {**tensors(q, s, z), "weight_g_idx": g, **({"bias": torch.randn(n)} if bias else {})})
    layer.quant_method.process_weights_after_loading(layer)
    return layer, dequantized_act_order(q, s, z, g)


def _tensors_of(layer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}


def _unchanged(layer, before: dict[str, torch.Tensor]) -> bool:
    after = _tensors_of(layer)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_padded_layer_s_state_loads_with_int32_orders():
    """Uneven groups pad K' above K: the order's values are bounded by K, the position's by K' (int32 accepted)."""
    g = uneven_g_idx(256, 32, torch.Generator().manual_seed(7))
    target, _ = _processed_in(g, 1, 32)
    source, w = _processed_in(g, 2, 32)
    assert target.awq_layout.in_features > target.awq_in_features
    sd = source.state_dict()
    sd["input_order_k"], sd["input_position_k"] = sd["input_order_k"].int(), sd["input_position_k"].int()
    target.load_state_dict(sd)
    assert target.input_order_k.dtype == torch.int64 and torch.equal(target.quant_method.dequantize_weight(target), w)
    sd["input_position_k"][0] = target.awq_layout.in_features
    bound = target.awq_layout.in_features
    with pytest.raises(ModelStateError, match=rf"input_position_k must hold values in \[0, {bound}\)"):
        target.load_state_dict(sd)


def test_a_state_dict_of_another_kernel_layout_is_refused_before_anything_is_copied():
    """Two act-order layers with the same K' but other kernel groups: the orders are valid, the scales' shapes are
    not; torch alone copied the words and orders, then refused the scales, leaving the layer mixed."""
    t, wt = _processed_in(uneven_g_idx(512, 64, torch.Generator().manual_seed(0)), 1, 64)
    s, _ = _processed_in(uneven_g_idx(512, 64, torch.Generator().manual_seed(12)), 2, 64)
    assert t.awq_layout.in_features == s.awq_layout.in_features and t.awq_layout.group != s.awq_layout.group
    before = _tensors_of(t)
    with pytest.raises(ModelStateError, match=r"do not fit this layer: zeros_k \(64, 10\) where this layer holds "
                                              r"\(64, 20\); scales_k \(64, 10\) .*nothing was loaded"):
        t.load_state_dict(s.state_dict())
    assert _unchanged(t, before) and torch.equal(t.quant_method.dequantize_weight(t), wt)


def test_a_meta_state_dict_s_order_is_left_to_torch():
    """A state_dict of meta tensors has no values to check (was: NotImplementedError from the range check)."""
    t, _ = _processed_in(gptq_g_idx(256, 64, torch.Generator().manual_seed(3)), 1, 64)
    sd = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in t.state_dict().items()}
    with pytest.raises(RuntimeError) as e:
        t.load_state_dict(sd)
    assert "copy out of meta tensor" in str(e.value) and not isinstance(e.value, NotImplementedError)


def test_order_buffers_dropped_from_a_state_dict_are_missing_keys_not_the_inputs_own_order():
    """A regrouped layer's state_dict without its order keys (dropped by hand) is not taken as a layer in its inputs'
    own order: they are missing keys. A partial strict=False load keeps the layer's kernel tensors (it set every
    buffer the state_dict lacked to None)."""
    t, wt = _processed_in(gptq_g_idx(256, 64, torch.Generator().manual_seed(3)), 1, 64, bias=True)
    s, _ = _processed_in(gptq_g_idx(256, 64, torch.Generator().manual_seed(4)), 2, 64, bias=True)
    sd = s.state_dict()
    sd.pop("input_order_k"), sd.pop("input_position_k")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "input_order_k", "input_position_k"'):
        t.load_state_dict(sd)
    partial = {k: v for k, v in t.state_dict().items() if k in ("bias", "_extra_state")}
    t2, w2 = _processed_in(gptq_g_idx(256, 64, torch.Generator().manual_seed(3)), 1, 64, bias=True)
    result = t2.load_state_dict(partial, strict=False)
    assert "qweight_k" in result.missing_keys and t2.qweight_k is not None and t2.input_order_k is not None
    assert torch.equal(t2.quant_method.dequantize_weight(t2), w2)


# --- the order passed to the GPU dispatcher and its op ---------------------------------------------------------------

def _kernel_layer(k: int, n: int, group: int = 128, seed: int = 0, device: str = "cuda"):
    """Random codes, zero points and scales in the kernel layout, and their de-quantized weight ``[n, k]``."""
    from fvq_awq.format import pack_awq
    from fvq_awq.layout import repack_to_kernel

    gen = torch.Generator().manual_seed(seed)
    q, z = torch.randint(0, 16, (k, n), generator=gen), torch.randint(0, 16, (k // group, n), generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).half()
    wk, zk, sk, lay = repack_to_kernel(pack_awq(q), pack_awq(z), s, group)
    wk, zk, sk = wk.to(device), zk.to(device), sk.to(device)
    return wk, zk, sk, lay, dequantize_kernel(wk, zk, sk, lay)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def _order(k_kernel: int, k: int, seed: int) -> torch.Tensor:
    """A kernel input order over ``k`` inputs: a permutation, then padding inputs reading input 0 (as
    ``fvq_awq.act_order.plan`` pads a layer to whole 128s)."""
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    return torch.cat([perm, torch.zeros(k_kernel - k, dtype=torch.int64)])


def test_an_ordered_call_refuses_an_input_of_the_wrong_width_or_order_by_name():
    pytest.importorskip("triton")
    from fvq_awq.kernels.dispatch import awq_linear_cuda

    wk, zk, sk, lay, _ = _kernel_layer(256, 32, device="cpu")
    order = _order(256, 250, 0)
    with pytest.raises(ValueError, match=r"expected x \[\.\.\., 250\].*found \(2, 256\)"):
        awq_linear_cuda(torch.randn(2, 256, dtype=torch.bfloat16), wk, zk, sk, lay, order=order, x_features=250)
    with pytest.raises(ValueError, match=r"input order must be int32 or int64 \[256\].*found \(250,\) torch.int64"):
        awq_linear_cuda(torch.randn(2, 250, dtype=torch.bfloat16), wk, zk, sk, lay, order=order[:250],
                        x_features=250)


def test_the_op_s_backward_scatters_the_gradient_to_the_inputs_each_kernel_input_read():
    """``grad_x`` of an ordered call is ``grad @ W`` in the kernel's order, added back at ``order`` (a padding input
    reads input 0 and adds there what its weights give: exactly zero in a regrouped layer)."""
    from types import SimpleNamespace

    from fvq_awq import ops

    k, n = 250, 32
    wk, zk, sk, lay, w = _kernel_layer(256, n, device="cpu")
    order = _order(256, k, 3)
    grad = torch.randn(3, n)
    ctx = SimpleNamespace(saved_tensors=(wk, zk, sk, order), layout=(lay.in_features, lay.out_features, lay.group,
                          lay.bk8), bias_dtype=None, x_features=k, needs_input_grad=(True,) + (False,) * 12)
    grad_x = ops._backward(ctx, grad)[0]
    by_hand = torch.zeros(3, k)
    for j, i in enumerate(order.tolist()):
        by_hand[:, i] += (grad @ w)[:, j]
    assert grad_x.shape == (3, k)
    assert torch.allclose(grad_x, by_hand, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("m", [1, 16, 17, 1024])
def test_an_ordered_call_equals_the_plain_call_on_gathered_rows(m):
    """``order`` given to the dispatcher (as the layer's op passes it, eager and compiled): the activations are
    gathered, then the route of the plain call runs — bit for bit the plain call on ``x[:, order]``."""
    from fvq_awq.kernels.dispatch import awq_linear_cuda

    wk, zk, sk, lay, w = _kernel_layer(5120, 5120)
    order = _order(5120, 5100, 1).cuda()
    x = torch.randn(m, 5100, device="cuda", dtype=torch.bfloat16)
    out = awq_linear_cuda(x.view(1, m, 5100), wk, zk, sk, lay, order=order, x_features=5100)
    assert out.shape == (1, m, 5120)
    assert torch.equal(out[0], awq_linear_cuda(x[:, order].contiguous(), wk, zk, sk, lay))
    assert _rel(out[0], x[:, order].float() @ w.t()) < 5e-3


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("m", [1, 16, 40])
def test_gradients_of_an_ordered_call_reach_the_layer_s_inputs(m):
    from fvq_awq import ops

    wk, zk, sk, lay, w = _kernel_layer(1280, 2048)
    order = _order(1280, 1250, 5).cuda()
    x = torch.randn(m, 1250, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    ops.linear(x, wk, zk, sk, None, lay.in_features, lay.out_features, lay.group, lay.bk8, None, 0, order,
               1250).backward(grad)
    expected = torch.zeros(m, 1250, device="cuda").index_add_(1, order, grad.float() @ w)
    assert _rel(x.grad, expected) < 1e-2


@pytest.mark.cuda
@needs_cuda
def test_a_compiled_act_order_layer_passes_its_order_into_the_op(monkeypatch):
    """Compiled (``fullgraph=True``), the layer's op gets the order and gathers inside it (the Triton gather, as eager
    calls do), not a traced ``index_select`` before it."""
    from fvq_awq import ops

    layer, w = _processed(gptq_g_idx(256, 64, torch.Generator().manual_seed(1)), 1)
    layer.to("cuda")
    seen = []
    real = ops.linear
    monkeypatch.setattr(ops, "linear", lambda *a: seen.append(a[11] is not None and a[0].shape[-1] == 256) or real(*a))
    x = torch.randn(4, 256, device="cuda", dtype=torch.float16)
    torch._dynamo.reset()
    out = torch.compile(lambda t: layer(t)[0], fullgraph=True)(x)
    assert seen and all(seen)
    assert _rel(out, x.float() @ w.cuda().T) < AWQConfig.tolerance.for_dtype(torch.float16).max_rel_error
