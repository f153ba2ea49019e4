"""fp8 configs: the vLLM/HF fp8 dict, compressed-tensors float-quantized, online selection by name, errors."""

from __future__ import annotations

import pytest
import torch
from fvq_fp8 import Fp8Config, Fp8LinearMethod

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.plugins import get_registry
from fastvideo_quant.quantization.selection import resolve_quant_config


def _ct(strategy="tensor", dynamic=True, fmt="float-quantized", num_bits=8, acts=True):
    group = {"targets": ["Linear"], "weights": {"num_bits": num_bits, "type": "float", "strategy": strategy}}
    group["input_activations"] = {"num_bits": 8, "type": "float", "dynamic": dynamic} if acts else None
    return {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {"group_0": group},
            "ignore": ["lm_head", "re:.*proj_out$"]}


def test_registered_through_entry_point_with_v2_loader():
    reg = get_registry()
    assert reg.by_name["fp8"].config_cls is Fp8Config
    assert reg.uses_weight_loader_v2(Fp8LinearMethod)


def test_online_when_selected_by_name():
    cfg = resolve_quant_config("fp8")
    assert isinstance(cfg, Fp8Config) and not cfg.is_checkpoint_fp8_serialized
    assert cfg.activation_scheme == "dynamic"


def test_vllm_fp8_dict():
    cfg = resolve_quant_config(hf_config={"quantization_config": {
        "quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["proj_out"]}})
    assert cfg.is_checkpoint_fp8_serialized and cfg.activation_scheme == "static"
    # names match whole, as vLLM's fp8 reader does: a root proj_out, not blocks.0.proj_out (Flux, HunyuanVideo)
    assert cfg.is_layer_skipped("proj_out") and not cfg.is_layer_skipped("blocks.0.proj_out")
    assert not cfg.is_layer_skipped("blocks.0.to_q")


def test_hf_block_dict_with_modules_to_not_convert():
    cfg = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic",
                                 "weight_block_size": [128, 64], "modules_to_not_convert": ["head"]})
    assert cfg.weight_scale_strategy == "block" and cfg.weight_block_size == (128, 64)
    assert cfg.is_layer_skipped("head")
    assert Fp8Config.from_config(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_explicit_online_flag():
    cfg = Fp8Config.from_config({"quant_method": "fp8", "is_checkpoint_fp8_serialized": False})
    assert not cfg.is_checkpoint_fp8_serialized


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_compressed_tensors_claimed_by_fp8(strategy, dynamic):
    cfg = resolve_quant_config(hf_config={"quantization_config": _ct(strategy, dynamic)})
    assert isinstance(cfg, Fp8Config)
    assert cfg.weight_scale_strategy == strategy
    assert cfg.activation_scheme == ("dynamic" if dynamic else "static")
    assert cfg.is_layer_skipped("lm_head") and cfg.is_layer_skipped("blocks.3.proj_out")
    assert not cfg.is_layer_skipped("blocks.3.proj_in")
    assert Fp8Config.from_config(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_compressed_tensors_int8_is_refused_naming_the_field():
    """A compressed-tensors section of integer weights is not fp8's to claim (asked for another method, or for none);
    the refusal of a section no plugin claims quotes each method's, fp8's naming the field it cannot use."""
    section = _ct()
    section["config_groups"]["group_0"]["weights"]["type"] = "int"
    assert Fp8Config.override_quantization_method(section, "int8") is None
    assert Fp8Config.override_quantization_method(section, None) is None
    with pytest.raises(ConfigError, match=r"type 'int' of config_groups.group_0.weights: fp8 reads float weights"):
        resolve_quant_config(hf_config={"quantization_config": section})


def test_compressed_tensors_weight_only_is_an_error():
    with pytest.raises(ConfigError, match="W8A16"):
        Fp8Config.from_config(_ct(acts=False))


@pytest.mark.parametrize("bad,match", [
    ({"quant_method": "fp8", "activation_scheme": "per_token"}, "activation_scheme"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size"),
    ({"quant_method": "fp8", "weight_block_size": 128}, r"weight_block_size must be \[bn, bk\].*found 128"),  # (TypeError)
    ({"quant_method": "fp8", "weight_block_size": ["a", 1]}, r"weight_block_size must be.*found \['a', 1\]"),  # (int('a'))
    ({"quant_method": "fp8", "weight_scale_strategy": "group"}, "weight_scale_strategy"),
    ({"quant_method": "awq"}, "not an fp8 format"),
    ({"is_checkpoint_fp8_serialized": False, "activation_scheme": "static"}, "input_scale"),
    ({"weight_scale_strategy": "block"}, r"'block' needs weight_block_size"),  # (was per-tensor scales, silently)
    ({"weight_scale_strategy": "channel", "weight_block_size": [128, 128]},
     r"'channel' contradicts weight_block_size \[128, 128\]"),  # (was block scales, silently)
])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        Fp8Config.from_config(bad)


def test_cpu_support_describes_real_fp8():
    text = Fp8Config.cpu_support()
    assert "_scaled_mm" in text and "float8_e4m3fn" in text
    assert Fp8Config.get_min_capability() == 89


def test_both_skip_keys_are_honoured_and_round_trip() -> None:
    """vLLM's ignored_layers and HF's modules_to_not_convert together; to_dict reflects later edits."""
    from fvq_fp8.config import Fp8Config

    cfg = Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": ["blocks.0.attn.o_proj", "re:.*proj_out"],
                                 "modules_to_not_convert": ["patch_embed", "blocks.0.attn.o_proj"]})
    assert cfg.is_layer_skipped("blocks.0.attn.o_proj") and cfg.is_layer_skipped("patch_embed")
    assert cfg.is_layer_skipped("proj_out") and not cfg.is_layer_skipped("blocks.1.attn.o_proj")
    assert not cfg.is_layer_skipped("blocks.0.attn.o_proj_gate")  # (a whole name, not a prefix of one)
    cfg.modules_to_not_convert.append("blocks.1.mlp.down_proj")
    again = Fp8Config.from_config(cfg.to_dict())
    # (patch_embed, only under modules_to_not_convert, is written back there: transformers' rule stays with it)
    assert again.ignored_layers == ["blocks.0.attn.o_proj", "blocks.1.mlp.down_proj", "patch_embed", "re:.*proj_out"]
    assert again.transformers_skip == {"patch_embed"} and again.to_dict() == cfg.to_dict()


#: mistralai/Devstral-Small-2-24B-Instruct-2512's quantization_config (transformers' fp8 format): parents of the
#: modules it keeps in bf16
DEVSTRAL = {"activation_scheme": "static", "dequantize": False, "quant_method": "fp8", "weight_block_size": None,
            "modules_to_not_convert": ["model.vision_tower", "model.multi_modal_projector", "lm_head"]}


def test_modules_to_not_convert_names_parents_as_transformers_reads_them() -> None:
    cfg = resolve_quant_config(hf_config={"quantization_config": DEVSTRAL})
    assert cfg.is_layer_skipped("model.vision_tower.transformer.layers.0.attention.q_proj")
    assert cfg.is_layer_skipped("model.multi_modal_projector.linear_1") and cfg.is_layer_skipped("lm_head")
    assert not cfg.is_layer_skipped("model.language_model.layers.0.self_attn.q_proj")
    assert not cfg.is_layer_skipped("model.vision_towers.proj")  # (whole components: not a longer name)


def test_modules_to_not_convert_names_a_trailing_run_of_components() -> None:
    """Qwen3-Next-style entries: "mlp.gate" keeps every layer's router in float, and no gate_proj."""
    cfg = Fp8Config.from_config({"quant_method": "fp8", "weight_block_size": [128, 128],
                                 "modules_to_not_convert": ["lm_head", "mlp.gate", "linear_attn.in_proj_qkv"]})
    assert cfg.is_layer_skipped("model.layers.7.mlp.gate")
    assert cfg.is_layer_skipped("model.layers.0.linear_attn.in_proj_qkv")
    assert not cfg.is_layer_skipped("model.layers.7.mlp.gate_proj")
    written = cfg.to_dict()
    assert written["modules_to_not_convert"] == ["lm_head", "mlp.gate", "linear_attn.in_proj_qkv"]
    assert written["ignored_layers"] == []
    assert Fp8Config.from_config(written).is_layer_skipped("model.layers.7.mlp.gate")


def test_a_regular_expression_under_modules_to_not_convert_is_read_as_one() -> None:
    """transformers matches every entry with re.match, so "model.layers.*.mlp.gate" keeps every router in float; read as
    a literal name it matched nothing and the routers were built fp8. Matched from the name's start to a whole
    component, as our other rules are (transformers' re.match would also take gate_proj)."""
    cfg = Fp8Config.from_config({"quant_method": "fp8", "modules_to_not_convert": [
        "model.layers.*.mlp.gate", "model.layers.1[0-2].self_attn", "lm_head"]})
    assert cfg.is_layer_skipped("model.layers.3.mlp.gate") and cfg.is_layer_skipped("model.layers.11.self_attn.o_proj")
    assert not cfg.is_layer_skipped("model.layers.3.mlp.gate_proj")
    assert not cfg.is_layer_skipped("model.layers.1.self_attn.o_proj")
    assert not cfg.is_layer_skipped("model.layers.13.self_attn.o_proj")
    again = Fp8Config.from_config(cfg.to_dict())
    assert again.is_layer_skipped("model.layers.3.mlp.gate") and again.to_dict() == cfg.to_dict()
    # (under vLLM's key an entry is a whole name, and re: marks a pattern: no reading of a bare one as a regex)
    vllm = Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": ["model.layers.*.mlp.gate"]})
    assert not vllm.is_layer_skipped("model.layers.3.mlp.gate")


def test_a_modules_to_not_convert_pattern_that_does_not_compile_is_named() -> None:
    with pytest.raises(ConfigError, match=r"modules_to_not_convert entry 'model\.\(layers' is not a valid regular "
                                          r"expression \(missing \)"):
        Fp8Config.from_config({"quant_method": "fp8", "modules_to_not_convert": ["model.(layers"]})


def test_ignored_layers_stay_whole_names_beside_modules_to_not_convert() -> None:
    """vLLM's key names one module: an entry there (also under HF's key, as our block checkpoints write it) is not a
    parent or a suffix."""
    cfg = Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": ["proj_out"],
                                 "modules_to_not_convert": ["proj_out", "norm_out"]})
    assert cfg.is_layer_skipped("proj_out") and not cfg.is_layer_skipped("blocks.0.proj_out")
    assert cfg.is_layer_skipped("blocks.0.norm_out")
    # (options, not a checkpoint's section — fvq quantize's whole module names under the generic key: whole names)
    options = Fp8Config.from_config({"modules_to_not_convert": ["proj_out"]})
    assert options.is_layer_skipped("proj_out") and not options.is_layer_skipped("blocks.0.proj_out")


def test_a_checkpoint_whose_parent_entry_keeps_a_layer_in_float_loads(tmp_path) -> None:
    """The whole path: the layer under a listed parent is built unquantized, and its bf16 tensor loads into it."""
    import json

    from safetensors.torch import save_file

    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": DEVSTRAL}))
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 32, generator=g) * 0.1
    scale = weight.abs().amax() / 448
    vision = (torch.randn(32, 32, generator=g) * 0.1).bfloat16()
    save_file({"text.proj.weight": (weight / scale).to(torch.float8_e4m3fn), "text.proj.weight_scale": scale.float(),
               "text.proj.input_scale": torch.tensor(0.01), "model.vision_tower.proj.weight": vision},
              str(tmp_path / "model.safetensors"))
    cfg = resolve_quant_config(checkpoint=str(tmp_path))
    model = torch.nn.ModuleDict({"text": torch.nn.ModuleDict(), "model": torch.nn.ModuleDict()})
    model["text"]["proj"] = ReplicatedLinear(32, 32, bias=False, params_dtype=torch.bfloat16, quant_config=cfg,
                                             prefix="text.proj")
    model["model"]["vision_tower"] = torch.nn.ModuleDict({"proj": ReplicatedLinear(
        32, 32, bias=False, params_dtype=torch.bfloat16, quant_config=cfg, prefix="model.vision_tower.proj")})
    load_checkpoint(model, tmp_path)
    assert torch.equal(model["model"]["vision_tower"]["proj"].weight, vision)


def test_a_block_scale_config_names_its_skip_list_for_vllm_and_hugging_face() -> None:
    """vLLM's Fp8Config reads only ignored_layers, HF's FineGrainedFP8Config (block scales only) only
    modules_to_not_convert: a written block-scale config carries the same list under both, and reading it back does
    not double it; per-tensor and per-channel configs (vLLM's format, and ours) keep ignored_layers alone."""
    from fvq_fp8.config import Fp8Config

    skip = ["patch_embed", "blocks.0.attn"]
    for extra, both in (({"weight_block_size": [128, 128]}, True), ({}, False), ({"weight_scale_strategy": "channel"}, False)):
        written = Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": skip, **extra}).to_dict()
        assert written["ignored_layers"] == skip
        assert written.get("modules_to_not_convert") == (skip if both else None), extra
        assert Fp8Config.from_config(written).ignored_layers == skip


CT_SECTION = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["proj_out"],
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                  "num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                  "input_activations": {"num_bits": 8, "type": "float", "dynamic": True}}}}


@pytest.mark.parametrize("section", [{"quant_method": "fp8", "activation_scheme": "dynamic",
                                      "ignored_layers": ["proj_out"]}, CT_SECTION], ids=["fp8", "compressed-tensors"])
def test_a_root_name_in_the_skip_list_leaves_same_named_block_layers_quantized(tmp_path, section) -> None:
    """Flux / HunyuanVideo: a root proj_out left in bf16 beside single_blocks.N.proj_out in fp8. The skip list's
    'proj_out' names the root only (vLLM's and compressed-tensors' readers match whole names); matched by
    components it named the blocks' too, built them unquantized, and the load failed."""
    import json

    import torch
    from safetensors.torch import save_file

    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint

    config = Fp8Config.from_config(section)
    tensors = {"proj_out.weight": torch.randn(64, 128, dtype=torch.bfloat16)}
    for i in range(2):
        name = f"single_blocks.{i}.proj_out"
        tensors |= {f"{name}.{k}": v for k, v in config.quantize_weight(torch.randn(128, 128), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    config = resolve_quant_config(checkpoint=tmp_path)
    names = ["proj_out", "single_blocks.0.proj_out", "single_blocks.1.proj_out"]
    model = torch.nn.Module()
    model.proj_out = ReplicatedLinear(128, 64, bias=False, quant_config=config, prefix="proj_out")
    model.single_blocks = torch.nn.ModuleList(
        [torch.nn.Module() for _ in range(2)])
    for i, block in enumerate(model.single_blocks):
        block.proj_out = ReplicatedLinear(128, 128, bias=False, quant_config=config, prefix=names[i + 1])
    load_checkpoint(model, tmp_path)
    assert type(model.proj_out.quant_method).__name__ == "UnquantizedLinearMethod"
    assert all(isinstance(b.proj_out.quant_method, Fp8LinearMethod) for b in model.single_blocks)
    assert torch.equal(model.proj_out.weight, tensors["proj_out.weight"])


@pytest.mark.parametrize(("activations", "found"), [
    (torch.empty(0, 32), r"\(\[0, 32\]\) hold no values"),
    (torch.zeros(4, 32), r"\(\[4, 32\]\) are all zero"),
    (torch.full((4, 32), float("inf")), r"\(\[4, 32\]\) are not finite"),
])
def test_static_calibration_without_usable_values_is_refused_naming_the_module(activations, found):
    """No tokens raised a bare RuntimeError from amax() (a numerics reviewer's finding)."""
    cfg = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static"})
    with pytest.raises(ConfigError, match=r"fp8 quantize_weight 'blocks\.0\.proj': activation_scheme 'static' "
                                          rf"computes input_scale .*{found}"):
        cfg.quantize_weight(torch.randn(16, 32), prefix="blocks.0.proj", activations=activations)


def test_is_checkpoint_fp8_serialized_written_as_a_string_is_refused():
    """bool("false") is True: the flag was silently turned on."""
    with pytest.raises(ConfigError, match=r"fp8 config: is_checkpoint_fp8_serialized must be true or false \(a JSON "
                                          r"boolean\), found str 'false'"):
        Fp8Config.from_config({"quant_method": "fp8", "is_checkpoint_fp8_serialized": "false"})
