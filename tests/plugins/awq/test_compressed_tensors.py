"""compressed-tensors ``pack-quantized`` W4A16 checkpoints (llm-compressor W4A16 / W4A16_ASYM) read by the AWQ plugin:
the format's bits, exact de-quantization, the demo model end to end, targets and ignore, weight_shape, claiming the
section from fp8, the config round trip, and every refusal by the field it names.

Checkpoints are written by ``ct_helpers`` from the format's definition, not by the plugin (its code is under test)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # spawned ranks inherit sys.path and import ct_helpers
from ct_helpers import (  # noqa: E402
    CFG,
    check_tp2_joins_tp1,
    dequantized,
    gpu_layers,
    load_demo,
    pack,
    pack_by_hand,
    quantize,
    section,
    tensors,
    word,
    write_demo,
)
from fvq_awq.config import AWQConfig  # noqa: E402
from fvq_awq.ct_method import CompressedTensorsW4A16Method  # noqa: E402
from fvq_fp8 import Fp8Config  # noqa: E402

from fastvideo_quant.demo.model import DemoDiT  # noqa: E402
from fastvideo_quant.errors import CheckpointError, ConfigError, ShardingError, WeightLoadError  # noqa: E402
from fastvideo_quant.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear  # noqa: E402
from fastvideo_quant.loader import load_checkpoint  # noqa: E402
from fastvideo_quant.quantization import resolve_quant_config  # noqa: E402


def _config(**kwargs) -> AWQConfig:
    return AWQConfig.from_config(section(**kwargs))


def _load(layer, named: dict[str, torch.Tensor], shard=None):
    params = dict(layer.named_parameters())
    for name, tensor in named.items():
        p = params[name]
        p.weight_loader(p, tensor) if shard is None else p.weight_loader(p, tensor, shard)


# --- the bits ------------------------------------------------------------------------------------------------------
def test_the_packing_helpers_follow_the_format_definition():
    """Inputs 0..7 of one word sit in natural order, 4 bits each from the lowest (AutoAWQ's interleaved order would
    give 0x75316420); the vectorised packer of the demo checkpoints agrees with the Python-int one."""
    assert word(list(range(8))) == 0x76543210
    assert word([15] * 8) == -1 and word([0] * 7 + [8]) == -(1 << 31)
    g = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 16, (16, 64), generator=g)
    assert torch.equal(pack(stored), pack_by_hand(stored.tolist()))


def _known(out: int, k: int, groups: int):
    """Signed codes covering -8..7, signed zero points covering -8..7, and bf16 scales exact in fp16."""
    q = [[(n * 7 + i * 3) % 16 - 8 for i in range(k)] for n in range(out)]
    z = [[(n + 5 * g) % 16 - 8 for g in range(groups)] for n in range(out)]
    s = [[(n + 1) / 64 + g / 512 for g in range(groups)] for n in range(out)]
    return q, z, s


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("strategy, group_size", [("group", 32), ("channel", None)])
@pytest.mark.parametrize("kind", ["column", "row"])
def test_a_hand_packed_matrix_dequantizes_to_q_minus_z_times_s_exactly(symmetric, strategy, group_size, kind):
    """The tensors packed with Python ints from the definition: signed code q stored as q + 8 along the input dim,
    signed zero point z stored as z + 8 along the output dim (absent when symmetric: z = 0). W = (q - z) * s, bit for
    bit, through the layer's kernel format."""
    out, k = 16, 64
    group = k if group_size is None else group_size
    q, z, s = _known(out, k, k // group)
    if symmetric:
        z = [[0] * len(row) for row in z]
    named = {"weight_packed": pack_by_hand([[v + 8 for v in row] for row in q]),
             "weight_scale": torch.tensor(s, dtype=torch.bfloat16),
             "weight_shape": torch.tensor([out, k])}
    if not symmetric:
        zt = [[z[n][g] + 8 for n in range(out)] for g in range(len(z[0]))]  # [G][out]: packed along the output dim
        named["weight_zero_point"] = pack_by_hand(zt).t().contiguous()
        assert named["weight_zero_point"].shape == (out // 8, k // group)
    cls = ColumnParallelLinear if kind == "column" else RowParallelLinear
    layer = cls(k, out, bias=False, quant_config=_config(symmetric=symmetric, strategy=strategy, group_size=group_size),
                prefix="blocks.0.proj")
    assert isinstance(layer.quant_method, CompressedTensorsW4A16Method)
    assert hasattr(layer, "weight_zero_point") is (not symmetric)
    _load(layer, named)
    layer.quant_method.process_weights_after_loading(layer)
    expected = torch.tensor([[(q[n][i] - z[n][i // group]) * s[n][i // group] for i in range(k)] for n in range(out)])
    assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)
    assert not any(hasattr(layer, n) for n in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"))
    x = torch.randn(3, k)
    assert torch.allclose(layer(x)[0], x @ expected.T, rtol=1e-5, atol=1e-5)


def test_a_fused_layer_loads_each_part_and_checks_each_parts_weight_shape():
    """QKV: each part's tensors, with its own weight_shape, land in its rows; a part whose weight_shape is another's
    is refused naming both shapes."""
    cfg = _config(symmetric=False, group_size=32)
    layer = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=cfg, prefix="blocks.0.attn.qkv_proj")
    g = torch.Generator().manual_seed(1)
    parts = {}
    for shard, rows in (("q", 64), ("k", 32), ("v", 32)):
        parts[shard] = quantize(torch.randn(rows, 64, generator=g), False, 32)
        _load(layer, tensors(*parts[shard][:2], parts[shard][2]), shard)
    layer.quant_method.process_weights_after_loading(layer)
    expected = torch.cat([dequantized(*parts[shard]) for shard in "qkv"])
    assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)

    fresh = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=cfg, prefix="blocks.0.attn.qkv_proj")
    shape = fresh.weight_shape
    with pytest.raises(WeightLoadError, match=r"weight_shape \[64, 64\] \(\[out_features, in_features\] of the "
                                              r"checkpoint's weight before packing\) is not part 'k' of the fused "
                                              r"layer's \[32, 64\] \(before tensor-parallel sharding\)"):
        shape.weight_loader(shape, torch.tensor([64, 64]), "k")


def test_weight_shape_that_disagrees_with_the_layer_is_refused():
    layer = ColumnParallelLinear(64, 16, bias=False, quant_config=_config(group_size=32), prefix="proj")
    shape = layer.weight_shape
    shape.weight_loader(shape, torch.tensor([16, 64], dtype=torch.int32))  # (compressed-tensors declares int32)
    with pytest.raises(WeightLoadError, match=r"weight_shape \[16, 128\] .* is not the layer's \[16, 64\] .* Build "
                                              r"the model with the checkpoint's sizes"):
        shape.weight_loader(shape, torch.tensor([16, 128]))
    with pytest.raises(WeightLoadError, match=r"weight_shape must be compressed-tensors' integer \[out_features, "
                                              r"in_features\] .* found torch.float32 of shape \(2,\)"):
        shape.weight_loader(shape, torch.tensor([16.0, 64.0]))



def test_both_formats_give_the_same_kernel_tensors():
    """The same stored codes, zero points and scales in compressed-tensors' layout and in AutoAWQ's convert to
    bit-identical kernel tensors: everything after loading (apply, the GPU kernels, fp8_compute) is AWQ's."""
    from fvq_awq.ct_format import unpack_zero_points
    from fvq_awq.format import pack_awq
    from fvq_awq.layout import ct_to_kernel, repack_to_kernel

    g = torch.Generator().manual_seed(3)
    codes, zeros = torch.randint(0, 16, (48, 256), generator=g), torch.randint(0, 16, (48, 4), generator=g)
    scales = torch.rand(48, 4, generator=g).half()
    from_ct = ct_to_kernel(pack(codes), unpack_zero_points(pack(zeros.t()).t().contiguous()), scales, 64)
    from_awq = repack_to_kernel(pack_awq(codes.t()), pack_awq(zeros.t()), scales.t().contiguous(), 64)
    assert all(torch.equal(a, b) for a, b in zip(from_ct[:3], from_awq[:3])) and from_ct[3] == from_awq[3]
    assert from_ct[1].dtype == torch.uint8 and from_ct[2].dtype == torch.float16


@pytest.mark.parametrize("actorder", [None, False, "weight", "static", "WEIGHT"])
def test_activation_orderings_that_keep_contiguous_groups_are_read(actorder):
    """actorder 'weight' (alias 'static'; llm-compressor's GPTQ default) changes calibration only: the same tensors."""
    assert _config(actorder=actorder).group_size == 64

# --- the demo model end to end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric, strategy, group_size", [
    (True, "group", 64), (False, "group", 32), (True, "channel", None), (False, "channel", None), (True, "group", 128)])
def test_a_demo_checkpoint_loads_exactly_and_computes_within_tolerance(tmp_path, symmetric, strategy, group_size):
    """Every linear but patch_embed (ignored) stored as llm-compressor writes W4A16 / W4A16_ASYM: each layer
    de-quantizes to (q - z) * s of the tensors written, and its output is float32 math of that within tolerance."""
    config = section(symmetric, strategy, group_size)
    expected = write_demo(tmp_path, config)
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    load_checkpoint(model, tmp_path)
    tolerance = AWQConfig.tolerance.for_dtype(torch.bfloat16).max_rel_error
    block = model.blocks[1]
    layers = {"blocks.1.attn.qkv_proj": (block.attn.qkv_proj, ("q_proj", "k_proj", "v_proj")),
              "blocks.1.attn.o_proj": (block.attn.o_proj, None),
              "blocks.1.mlp.gate_up_proj": (block.mlp.gate_up_proj, ("gate_proj", "up_proj")),
              "blocks.1.mlp.down_proj": (block.mlp.down_proj, None), "proj_out": (model.proj_out, None)}
    for name, (layer, parts) in layers.items():
        assert isinstance(layer.quant_method, CompressedTensorsW4A16Method), name
        base = name.rpartition(".")[0]
        w = torch.cat([expected[f"{base}.{p}"] for p in parts]) if parts else expected[name]
        assert torch.equal(layer.quant_method.dequantize_weight(layer), w), name
        x = torch.randn(5, layer.input_size).bfloat16()
        ref = x.float() @ w.T + (0 if layer.bias is None else layer.bias.float())
        out = layer(x)[0].float()
        assert ((out - ref).norm() / ref.norm()).item() < tolerance, name
    assert type(model.patch_embed.quant_method).__name__ == "UnquantizedLinearMethod"
    assert torch.isfinite(model(torch.randn(1, 4, CFG.in_channels).bfloat16())).all()


def test_a_checkpoint_whose_weight_shape_disagrees_is_refused_before_anything_loads(tmp_path):
    write_demo(tmp_path, section())
    from safetensors.torch import load_file, save_file

    stored = load_file(str(tmp_path / "model.safetensors"))
    stored["blocks.0.attn.k_proj.weight_shape"] = torch.tensor([256, 256])
    save_file(stored, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    with pytest.raises(CheckpointError, match=r"'blocks.0.attn.k_proj.weight_shape' .* shard 'k': .*weight_shape "
                                              r"\[256, 256\] .* is not part 'k' of the fused layer's \[128, 256\]"):
        load_checkpoint(model, tmp_path)


# --- targets and ignore --------------------------------------------------------------------------------------------
def _methods(model) -> dict[str, str]:
    return {n: type(m.quant_method).__name__ for n, m in model.named_modules() if hasattr(m, "quant_method")}


def test_regex_targets_quantize_only_the_layers_they_name(tmp_path):
    """Layers no group targets are stored (and built) in float, listed in ignore as compressed-tensors writes them; the
    others load from int4."""
    expected = write_demo(tmp_path, section(targets=["re:.*attn.*"], ignore=["patch_embed", "re:.*mlp.*", "proj_out"]),
                          lambda m: ".attn." in m)
    result = load_demo(0, 1, str(tmp_path), torch.randn(1, 4, CFG.in_channels).bfloat16())
    assert set(result["weights"]) == {f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv_proj", "o_proj")}
    assert torch.equal(result["weights"]["blocks.0.attn.o_proj"], expected["blocks.0.attn.o_proj"])
    assert torch.isfinite(result["out"]).all()


def test_targets_by_class_name_and_by_module_name_through_fused_parts():
    """(The layers no target names are in ignore, as compressed-tensors writes them; neither is refused at build.)"""
    by_class = _methods(DemoDiT(CFG, quant_config=_config(
        targets=["RowParallelLinear"], ignore=["patch_embed", "re:.*qkv_proj", "re:.*gate_up_proj", "proj_out"])))
    assert {n for n, m in by_class.items() if m == "CompressedTensorsW4A16Method"} == {
        f"blocks.{i}.{p}" for i in range(2) for p in ("attn.o_proj", "mlp.down_proj")}
    by_name = _methods(DemoDiT(CFG, quant_config=_config(targets=["proj_out", "re:blocks\\.0\\..*\\.[qkv]_proj$"],
                                                         ignore=["patch_embed", "re:blocks\\.1\\..*", "re:.*o_proj",
                                                                 "re:.*mlp.*"])))
    assert by_name["proj_out"] == by_name["blocks.0.attn.qkv_proj"] == "CompressedTensorsW4A16Method"
    assert by_name["blocks.1.attn.qkv_proj"] == by_name["blocks.0.attn.o_proj"] == "UnquantizedLinearMethod"
    with pytest.raises(ConfigError, match=r"no config group targets linear layer ReplicatedLinear 'patch_embed' and "
                                          r"'ignore' does not name it \(config_groups targets \['proj_out'\]; ignore "
                                          r"\[\]\), so it has no scheme"):
        DemoDiT(CFG, quant_config=_config(targets=["proj_out"], ignore=[]))
    with pytest.raises(ConfigError, match=r"config_groups targets names \['blocks.0.attn.q_proj', "
                                          r"'blocks.0.attn.k_proj'\] and not \['blocks.0.attn.v_proj'\]"):
        DemoDiT(CFG, quant_config=_config(targets=["re:.*\\.[qk]_proj$"]))


def test_a_class_name_in_ignore_naming_a_linear_layer_is_refused():
    """(The readers disagree on it: compressed-tensors by class, vLLM by name; see the fp8 test of the same name.)"""
    with pytest.raises(ConfigError, match=r"ignore entry 'RowParallelLinear' is a class name, and it names linear layer "
                                          r"RowParallelLinear 'blocks.0.attn.o_proj'"):
        DemoDiT(CFG, quant_config=_config(ignore=["RowParallelLinear"]))


def test_ignore_names_whole_modules_and_patterns_from_the_start_through_fused_parts():
    """compressed-tensors' rule, not AutoAWQ's substrings: 'proj_out' is that module only; 're:blocks\\.0\\.' every
    module of block 0 (re.match); a fused layer through its checkpoint modules."""
    cfg = _config(ignore=["proj_out", "re:blocks\\.0\\.attn\\.[qkv]_proj", "re:blocks\\.1\\."])
    assert cfg.skip_list_key() == "ignore"
    methods = _methods(DemoDiT(CFG, quant_config=cfg))
    assert methods["proj_out"] == methods["blocks.0.attn.qkv_proj"] == methods["blocks.1.mlp.down_proj"] == \
        "UnquantizedLinearMethod"
    assert methods["blocks.0.attn.o_proj"] == methods["patch_embed"] == "CompressedTensorsW4A16Method"
    assert not _config(ignore=["proj"]).is_layer_skipped("proj_out")  # (AutoAWQ's list would skip it: a substring)
    with pytest.raises(ConfigError, match=r"fuses the checkpoint modules .*, but ignore names \['blocks.0.attn.q_proj'\] "
                                          r"and not \['blocks.0.attn.k_proj', 'blocks.0.attn.v_proj'\]"):
        _config(ignore=["blocks.0.attn.q_proj"]).is_layer_skipped("blocks.0.attn.qkv_proj")


# --- claiming the section, and the round trip ------------------------------------------------------------------------
FP8_DYNAMIC = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": [], "config_groups": {
    "group_0": {"targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}}}


def _edited(edit, base=None) -> dict:
    s = copy.deepcopy(base or section())
    edit(s["config_groups"]["group_0"]["weights"], s["config_groups"]["group_0"], s)
    return s


def test_awq_claims_w4a16_sections_and_fp8_keeps_its_own():
    for config in (section(), section(False, "channel", None)):
        assert AWQConfig.override_quantization_method(config, None) == "awq"
        assert Fp8Config.override_quantization_method(config, None) is None
        assert resolve_quant_config(hf_config={"quantization_config": config}).get_name() == "awq"
    assert AWQConfig.override_quantization_method(FP8_DYNAMIC, None) is None
    assert resolve_quant_config(hf_config={"quantization_config": FP8_DYNAMIC}).get_name() == "fp8"
    assert AWQConfig.override_quantization_method(section(), "fp8") is None  # (another method asked for)
    assert AWQConfig.override_quantization_method({"quant_method": "awq", "bits": 4}, None) is None


def test_other_integer_schemes_are_left_to_other_plugins():
    """W8A16 (8-bit pack-quantized) and W4A8 (quantized activations) are not AWQ's: it does not claim them, nor does
    fp8 (integer weights), so the refusal quotes each method's, fp8's among them; asking for awq says which method the
    section is."""
    w8a16 = _edited(lambda w, g, s: w.update(num_bits=8, strategy="channel", group_size=None))
    w4a8 = _edited(lambda w, g, s: g.update(input_activations={"num_bits": 8, "type": "int", "dynamic": True}))
    for config in (w8a16, w4a8):
        assert AWQConfig.override_quantization_method(config, None) is None
        with pytest.raises(ConfigError, match=r"fp8 reads 'float-quantized'"):
            resolve_quant_config(hf_config={"quantization_config": config})
    with pytest.raises(ConfigError, match=r"'awq' was asked for, but .* says the checkpoint is quantized with 'fp8'"):
        resolve_quant_config("awq", hf_config={"quantization_config": FP8_DYNAMIC})


def test_a_w4a16_section_awq_cannot_run_is_explained_by_awq():
    """Within the W4A16 family the refusal is AWQ's, naming the setting (not fp8's 'reads float-quantized')."""
    config = _edited(lambda w, g, s: w.update(group_size=256))
    assert AWQConfig.override_quantization_method(config, None) == "awq"
    with pytest.raises(ConfigError, match=r"group_size 256 of config_groups.group_0.weights: the AWQ kernels run "):
        resolve_quant_config(hf_config={"quantization_config": config})


@pytest.mark.parametrize("config", [
    section(), section(False, "group", 32, targets=["re:.*attn.*", "proj_out"], ignore=["re:blocks\\.0\\."]),
    section(True, "channel", None, ignore=[]), {**section(False, "group", 128), "fp8_compute": True},
    {**section(), "fp8_compute": True, "fp8_compute_min_m": 256},
])
def test_to_dict_round_trips(config):
    cfg = AWQConfig.from_config(config)
    again = AWQConfig.from_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    fields = ("checkpoint_format", "group_size", "zero_point", "targets", "modules_to_not_convert", "fp8_compute",
              "fp8_compute_min_m")
    assert [getattr(again, f) for f in fields] == [getattr(cfg, f) for f in fields]
    assert again.to_dict()["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    assert AWQConfig.override_quantization_method(cfg.to_dict(), None) == "awq"


def test_groups_of_one_scheme_are_one_config_with_their_targets_joined():
    two = _edited(lambda w, g, s: s["config_groups"].update(group_1={**copy.deepcopy(g), "targets": ["proj_out"]}),
                  section(targets=["re:.*attn.*"]))
    cfg = AWQConfig.from_config(two)
    assert cfg.targets == ["re:.*attn.*", "proj_out"]
    assert AWQConfig.from_config(cfg.to_dict()).targets == cfg.targets


def test_a_realistic_section_passes_the_checkpoint_key_checks():
    """Every key llm-compressor writes (status, version, compression ratio, kv cache, sparsity) is accepted."""
    assert resolve_quant_config(hf_config={"model_type": "llama", "quantization_config": section()}).group_size == 64


# --- refusals ------------------------------------------------------------------------------------------------------
REFUSALS = [
    (lambda w, g, s: w.update(num_bits=8), r"num_bits 8 of config_groups.group_0.weights: awq reads 4-bit weights; "
                                           r"8-bit ones \(W8A16\) are not AWQ's int4 format"),
    (lambda w, g, s: w.update(type="float"), r"type 'float' of config_groups.group_0.weights: awq reads integer "
                                             r"weights \(type 'int'\); 4-bit floats \(NVFP4, MXFP4\) are another format"),
    (lambda w, g, s: g.update(input_activations={"num_bits": 8, "type": "int", "dynamic": True}),
     r"input_activations \{.*\} of config_groups.group_0: awq is weight-only \(W4A16\): input_activations must be "
     r"null; W4A8 and W4AFP8 quantize the activations too"),
    (lambda w, g, s: w.update(actorder="columns"), r"actorder 'columns' of config_groups.group_0.weights: actorder "
                                                   r"is null, 'weight' \(alias 'static': contiguous groups\) or 'group'"),
    (lambda w, g, s: w.update(actorder=True, strategy="channel", group_size=None),
     r"actorder True with strategy 'channel' of config_groups.group_0.weights: activation ordering 'group' reorders "
     r"groups of inputs, so it needs strategy 'group'"),
    (lambda w, g, s: w.update(dynamic=True), r"dynamic True of config_groups.group_0.weights: awq reads weights with "
                                             r"stored scales \(dynamic false\)"),
    (lambda w, g, s: w.update(strategy="tensor", group_size=None), r"strategy 'tensor' of config_groups.group_0."
                                                                   r"weights: awq reads strategy 'group' .* or 'channel'"),
    (lambda w, g, s: w.update(strategy="block", block_structure=[128, 128], group_size=None), r"strategy 'block'"),
    (lambda w, g, s: w.update(group_size=256), r"group_size 256 of config_groups.group_0.weights: the AWQ kernels run "
                                               r"groups of 32, 64, 128 inputs \(or strategy 'channel'\)"),
    (lambda w, g, s: w.update(group_size=16), r"group_size 16 of config_groups.group_0.weights"),
    (lambda w, g, s: w.update(strategy="channel", group_size=128), r"group_size 128 with strategy 'channel' of "
                                                                   r"config_groups.group_0.weights"),
    (lambda w, g, s: w.update(symmetric="yes"), r"symmetric 'yes' of config_groups.group_0.weights: symmetric is true "
                                                r"\(W4A16\) or false \(W4A16_ASYM\)"),
    (lambda w, g, s: w.update(group_sise=w.pop("group_size")), r"key 'group_sise' of config_groups.group_0.weights is "
                                                                r"not a compressed-tensors key; did you mean 'group_size'\?"),
    (lambda w, g, s: g.update(targetz=g.pop("targets")), r"key 'targetz' of config_groups.group_0 .* did you mean "
                                                         r"'targets'\?"),
    (lambda w, g, s: w.pop("num_bits"), r"config_groups.group_0.weights has no 'num_bits' \(found keys"),
    (lambda w, g, s: s.update(format="naive-quantized"), r"format 'naive-quantized' of the section: awq reads "
                                                         r"'pack-quantized'"),
    (lambda w, g, s: s.update(ignore=["re:blocks.(0"]), r"ignore entry 're:blocks.\(0' is not a valid regular "
                                                        r"expression"),
    (lambda w, g, s: s["config_groups"].update(group_1={**copy.deepcopy(g), "targets": ["proj_out"],
                                                        "weights": {**w, "group_size": 128}}),
     r"the config groups hold different schemes \(config_groups.group_0: symmetric, group 64; config_groups.group_1: "
     r"symmetric, group 128\); awq reads one int4 scheme a checkpoint"),
]


@pytest.mark.parametrize("edit, match", REFUSALS)
def test_a_setting_awq_cannot_read_is_refused_naming_it(edit, match):
    with pytest.raises(ConfigError, match=match) as info:
        AWQConfig.from_config(_edited(edit))
    assert str(info.value).startswith("compressed-tensors config: ")


def test_a_misspelled_top_level_key_is_refused():
    config = {**section(), "ignored": ["proj_out"]}
    config.pop("ignore")
    with pytest.raises(ConfigError, match=r"key ignored=\[\"proj_out\"\]: AWQConfig.from_config .* \(did you mean "
                                          r"'ignore' or 'ignored_layers'\?\)"):
        resolve_quant_config(hf_config={"quantization_config": config})


def test_scales_fp16_cannot_hold_are_refused_and_others_rounded_to_it():
    """The kernels hold fp16 scales: a bf16 scale beyond fp16's range (1e5) is refused naming the entry; a float32
    scale is rounded within fp16's 2^-11, and one below fp16's normal range (1e-7, a near-dead group) to its subnormal
    step. (Was: 1e-7 refused the whole checkpoint over a change of 2e-8.)"""
    def layer_with(scale: float) -> ColumnParallelLinear:
        layer = ColumnParallelLinear(64, 16, bias=False, quant_config=_config(group_size=32), prefix="proj")
        q, s, _ = quantize(torch.randn(16, 64, generator=torch.Generator().manual_seed(2)), True, 32)
        s = s.float()
        s[3, 1] = scale
        _load(layer, tensors(q, s, None))
        return layer, q, s

    layer, _, _ = layer_with(1e5)
    with pytest.raises(WeightLoadError, match=r"tensor 'proj.weight_scale' .* expected every entry held by "
                                              r"float16 to its rounding .* found 1 of 32 .* the first at \[3, 1\]"):
        layer.quant_method.process_weights_after_loading(layer)
    for scale in (0.0123456789, 1e-7):
        layer, q, s = layer_with(scale)
        layer.quant_method.process_weights_after_loading(layer)
        expected = dequantized(q, s.half().float(), torch.zeros_like(s, dtype=torch.int64))
        assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)


def test_the_symmetric_writer_refuses_scales_beyond_fp16():
    from fastvideo_quant.errors import QuantizeError

    w = torch.randn(16, 64)
    w[5, 40] = 1e6
    with pytest.raises(QuantizeError, match=r"AWQ quantize 'proj' \(weight \[16, 64\]\): group 1 of output row 5 has "
                                            r"max \|w\| = 1e\+06; its scale max\|w\| / 7.5 exceeds fp16's largest"):
        _config(group_size=32).quantize_weight(w, prefix="proj")

def test_a_scale_never_loaded_is_refused():
    layer = ColumnParallelLinear(64, 16, bias=False, quant_config=_config(group_size=32), prefix="proj")
    q, s, _ = quantize(torch.randn(16, 64), True, 32)
    named = tensors(q, s, None)
    named.pop("weight_scale")
    _load(layer, named)
    with pytest.raises(WeightLoadError, match=r"'proj.weight_scale' .* expected every entry finite and > 0"):
        layer.quant_method.process_weights_after_loading(layer)


def test_a_scale_tensor_of_another_group_size_is_explained():
    """In a few words (the config key to set is the summary line's: test_group_size_hint). (Was: a whole explanation
    naming "its quantization_config's config_groups weights.group_size" on every tensor's line.)"""
    layer = ColumnParallelLinear(256, 16, bias=False, quant_config=_config(group_size=64), prefix="proj")
    q, s, _ = quantize(torch.randn(16, 256), True, 128)
    with pytest.raises(WeightLoadError, match=r"expected shape \(16, 4\), found \(16, 2\); 2 columns \(expected "
                                              r"in_features / group_size = 256 / 64 = 4\) mean group_size 128 \(not the "
                                              r"config's 64\) or in_features 128 \(not the layer's 256\)$"):
        _load(layer, {"weight_scale": s})


def test_tp_advice_names_the_ignore_list():
    """The alignment errors are AWQ's, and name compressed-tensors' skip list where leaving a layer out is the fix."""
    method = CompressedTensorsW4A16Method(_config(group_size=64))
    row = RowParallelLinear(192, 64, bias=False, quant_config=None, prefix="blocks.0.attn.o_proj")
    row.tp_size = 2  # as a TP=2 rank would see it: 96 inputs per rank
    with pytest.raises(ShardingError, match=r"input size per rank 96 is not a multiple of group_size 64. TP sizes that "
                                            r"keep this layer aligned: \[1, 3\]; or, to keep TP size 2, quantize the "
                                            r"checkpoint with group_size 32 or -1"):
        method.check_shard(row, 96, [64], 192)
    col = ColumnParallelLinear(64, 20, bias=False, quant_config=None, prefix="q")
    with pytest.raises(ShardingError, match=r"not a multiple of 8 .* or leave it unquantized when quantizing "
                                           r"the checkpoint \(list 'q' in ignore: a checkpoint that stores it "
                                           r"quantized cannot load it unquantized\)$"):
        method.check_shard(col, 64, [20], 64)


@pytest.mark.slow
def test_tp2_shards_join_to_tp1_exactly(tmp_path):
    """On real gloo ranks: row-parallel layers' shards (input halves, in whole groups and words) and column-parallel
    ones' (per fused part) join to TP=1's de-quantized weight bit for bit, for group and channel scales (replicated in
    row layers), symmetric and asymmetric; the outputs agree."""
    x = torch.randn(1, 4, CFG.in_channels).bfloat16()
    for name, config in {"asym-group32": section(False, "group", 32), "sym-channel": section(True, "channel", None)}.items():
        write_demo(tmp_path / name, config)
        check_tp2_joins_tp1(tmp_path / name, x, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("symmetric, strategy, group_size", [(True, "group", 128), (False, "group", 64),
                                                             (True, "channel", None)])
@pytest.mark.parametrize("m", [1, 16, 1024])
def test_a_demo_checkpoint_on_the_gpu(tmp_path, symmetric, strategy, group_size, m):
    """Loaded onto the GPU and converted there: each layer through the GPU kernels (the M=1 GEMV, the small-M kernel,
    de-quantize + cuBLAS) against float32 math of the tensors written."""
    from fastvideo_quant.demo.run import load_model

    expected = write_demo(tmp_path, section(symmetric, strategy, group_size))
    model = load_model(CFG, tmp_path, torch.bfloat16, torch.device("cuda"))
    for name, layer, w in gpu_layers(model, expected):
        x = torch.randn(m, layer.input_size, device="cuda").bfloat16()
        ref = x.float() @ w.float().T + (0 if layer.bias is None else layer.bias.float())
        out = layer(x)[0].float()
        assert ((out - ref).norm() / ref.norm()).item() < AWQConfig.tolerance.for_dtype(torch.bfloat16).max_rel_error, \
            (name, m)


@pytest.mark.parametrize("stored_symmetric", [False, True])
def test_zero_points_against_the_declared_symmetry_are_named_first(tmp_path, stored_symmetric):
    """A config.json whose 'symmetric' contradicts the tensors: the load's first line names the key and the value the
    tensors imply. (Was: only "unexpected tensor ... weight_zero_point" or "missing tensor" lines, one per layer.)"""
    import json

    write_demo(tmp_path, section(stored_symmetric))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = section(not stored_symmetric)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
        load_checkpoint(model, tmp_path)
    first, where = str(err.value).splitlines()[1:3]
    value = "true" if stored_symmetric else "false"
    assert first.endswith(f"set config_groups.<group>.weights.symmetric to {value}"), first
    assert where.strip().startswith(f"to set the 'awq' setting(s) above: set them in {tmp_path / 'config.json'}'s "
                                    "'quantization_config'"), where
    assert f"resolve_quant_config(checkpoint={str(tmp_path)!r})" in where, where


@pytest.mark.parametrize("stored_symmetric", [False, True])
def test_zero_points_of_one_file_name_no_config_json_to_edit(tmp_path, stored_symmetric):
    """The same checkpoint given as one file, its config.json right: the layers' config (built from a section that
    contradicts the tensors) is what to fix; was "in the checkpoint's config.json", which a file's load does not read
    and which already said so."""
    write_demo(tmp_path, section(stored_symmetric))
    with pytest.raises(CheckpointError) as err:
        model = DemoDiT(CFG, quant_config=resolve_quant_config(hf_config={"quantization_config":
                                                                          section(not stored_symmetric)}))
        load_checkpoint(model, tmp_path / "model.safetensors")
    message = str(err.value)
    first = message.splitlines()[1].strip()
    assert first.startswith(f"the checkpoint was given as one file, so no config.json was read, and "
                            f"{tmp_path / 'config.json'}'s 'quantization_config' beside it declares 'awq' with "), first
    assert f"quant_config=resolve_quant_config(checkpoint={str(tmp_path)!r})" in first, first
    assert "in the checkpoint's config.json" not in message and "weights.symmetric to" not in message
    load_checkpoint(DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path)), tmp_path / "model.safetensors")


# --- zero points compressed-tensors wrote before it packed them ----------------------------------------------------
def _unpack_zero_points_of(path) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` with every ``weight_zero_point`` rewritten as compressed-tensors wrote them before
    packing (PR #296): int8 ``[out, groups]`` signed ``z`` (the stored nibble minus 8). Returns the stored tensors."""
    from safetensors.torch import load_file, save_file

    stored = load_file(str(path / "model.safetensors"))
    for name in [n for n in stored if n.endswith(".weight_zero_point")]:
        words = stored[name].t().contiguous().long()  # [groups, out/8], nibble i of word r: row 8r + i
        nibbles = (words.unsqueeze(-1) >> (4 * torch.arange(8))) & 0xF
        stored[name] = (nibbles.reshape(words.shape[0], -1).t() - 8).to(torch.int8).contiguous()
    save_file(stored, str(path / "model.safetensors"), metadata={"format": "pt"})
    return stored


@pytest.mark.parametrize("strategy, group_size", [("group", 32), ("channel", None)])
def test_unpacked_int8_zero_points_of_older_writers_load_exactly(tmp_path, strategy, group_size):
    expected = write_demo(tmp_path, section(False, strategy, group_size))
    stored = _unpack_zero_points_of(tmp_path)
    assert stored["blocks.0.attn.q_proj.weight_zero_point"].dtype == torch.int8
    result = load_demo(0, 1, str(tmp_path), torch.randn(1, 4, CFG.in_channels).bfloat16())
    assert result["weights"]["blocks.0.mlp.down_proj"].equal(expected["blocks.0.mlp.down_proj"])
    qkv = torch.cat([expected[f"blocks.1.attn.{p}"] for p in ("q_proj", "k_proj", "v_proj")])
    assert result["weights"]["blocks.1.attn.qkv_proj"].equal(qkv)


def test_unpacked_zero_points_outside_int4_are_refused(tmp_path):
    from safetensors.torch import save_file

    write_demo(tmp_path, section(False, "group", 32))
    stored = _unpack_zero_points_of(tmp_path)
    stored["blocks.0.mlp.down_proj.weight_zero_point"][3, 1] = 9
    save_file(stored, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp.down_proj.weight_zero_point.*unpacked int4 zero points "
                                              r"must lie in \[-8, 7\] .* found \[-\d, 9\]$"):
        load_checkpoint(model, tmp_path)  # (and no "as a whole, expected shape" note: the int8 layout is taken)
    assert torch.isnan(model.blocks[0].mlp.down_proj.weight_scale).all()  # (nothing loaded)


@pytest.mark.slow
def test_unpacked_zero_points_shard_over_tp2_as_packed_ones(tmp_path):
    from fastvideo_quant.testing.distributed import run_distributed

    x = torch.randn(1, 4, CFG.in_channels).bfloat16()
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    write_demo(packed, section(False, "group", 32))
    write_demo(unpacked, section(False, "group", 32))
    _unpack_zero_points_of(unpacked)
    a = run_distributed(load_demo, 2, str(packed), x, backend="gloo")
    b = run_distributed(load_demo, 2, str(unpacked), x, backend="gloo")
    for rank in range(2):
        for module, w in a[rank]["weights"].items():
            assert torch.equal(b[rank]["weights"][module], w), (rank, module)


def _unpacked_layer_checkpoint(tmp_path, bad: dict[str, torch.Tensor]):
    """Two act-free asymmetric layers (1024 -> 256, groups of 32: int8 zero points [256, 32], 8192 elements, above
    the rehearsal's 4096) written with unpacked int8 zero points, ``bad`` replacing some tensors of ``proj``."""
    from safetensors.torch import save_file

    from fastvideo_quant.layers.linear import ReplicatedLinear

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            config = AWQConfig.from_config(section(False, "group", 32))
            self.first = ReplicatedLinear(1024, 256, bias=False, quant_config=config, prefix="first")
            self.proj = ReplicatedLinear(1024, 256, bias=False, quant_config=config, prefix="proj")

    stored = {}
    for name in ("first", "proj"):
        q, s, z = quantize(torch.randn(256, 1024), False, 32)
        stored |= {f"{name}.{k}": v for k, v in tensors(q, s, z).items()}
        stored[f"{name}.weight_zero_point"] = z.to(torch.int8).contiguous()
    stored |= {f"proj.{k}": v for k, v in bad.items()}
    save_file(stored, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return Two()


def test_large_unpacked_zero_points_out_of_range_are_refused_before_anything_is_written(tmp_path):
    """The zero-point parameter asks the rehearsal for the tensor's values (rehearse_with_data), so a bad entry of a
    tensor above the rehearsal's 4096 elements is found before any layer is written (was: half-loaded)."""
    z = torch.zeros(256, 32, dtype=torch.int8)
    z[200, 30] = -9
    model = _unpacked_layer_checkpoint(tmp_path, {"weight_zero_point": z})
    with pytest.raises(CheckpointError, match=r"'proj.weight_zero_point'.*stored unpacked \(int8 \(256, 32\).*must lie "
                                              r"in \[-8, 7\] .* found \[-9, 0\]"):
        load_checkpoint(model, tmp_path)
    assert torch.isnan(model.first.weight_scale).all()  # (nothing written)


@pytest.mark.parametrize("shape, match", [
    ((100, 32), r"stored unpacked \(int8 \(100, 32\).*expected \[out_features, groups\] with out_features a "
                r"multiple of 8 .* found shape \(100, 32\)$"),
    ((128, 32), r"stored unpacked \(int8 \(128, 32\).*packed to int32 \(16, 32\): .*expected .*32"),
])
def test_unpacked_zero_points_of_the_wrong_shape_are_told_in_the_stored_terms(tmp_path, shape, match):
    model = _unpacked_layer_checkpoint(tmp_path, {"weight_zero_point": torch.zeros(shape, dtype=torch.int8)})
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(model, tmp_path)
    assert "as a whole" not in str(err.value)


def test_unpacked_zero_points_with_the_offset_added_are_told_so(tmp_path):
    """int8 zero points in [0, 15]: most likely written with compressed-tensors' +8 already added; the refusal says so
    and how to mend the tensor."""
    q, s, z = quantize(torch.randn(256, 1024), False, 32)
    model = _unpacked_layer_checkpoint(tmp_path, {"weight_zero_point": (z + 8).to(torch.int8).contiguous()})
    with pytest.raises(CheckpointError, match=r"found \[\d+, \d+\] — values in \[0, 15\] look like zero points "
                                              r"with the \+8 offset already added \(unsigned\): subtract 8"):
        load_checkpoint(model, tmp_path)

