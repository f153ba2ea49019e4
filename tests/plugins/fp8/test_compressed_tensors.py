"""compressed-tensors (llm-compressor) checkpoints read by fp8: config_groups targets, ignore patterns through fused
layers, FP8_BLOCK, and sections fp8 cannot read refused by the field it cannot use.

The checkpoints are written here without the plugin's writer (its quantize helpers are under test): fp8 e4m3 by a cast
of ``w / scale`` clamped to ±448, scales ``amax / 448`` in bf16 as llm-compressor stores them, named as compressed-tensors
names them (``weight_scale`` for every strategy)."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
from fvq_fp8 import Fp8Config, Fp8LinearMethod
from fvq_unquantized import UnquantizedLinearMethod
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.errors import CheckpointError, ConfigError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import hookimpl, register_plugin, unregister_plugin
from fastvideo_quant.quantization import resolve_quant_config

CFG = DemoConfig(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512, num_layers=2, in_channels=64)
FP8_MAX = 448.0


def _args(strategy: str, **extra) -> dict:
    """A QuantizationArgs as compressed-tensors serializes it (every field)."""
    args = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": strategy,
            "block_structure": None, "dynamic": False, "actorder": None, "scale_dtype": None, "zp_dtype": None,
            "observer": "minmax", "observer_kwargs": {}}
    return {**args, **extra}


def _group(strategy="channel", targets=("Linear",), block=None, static=False) -> dict:
    """A config group as llm-compressor writes it: FP8_DYNAMIC (channel), FP8_BLOCK (block, [128, 128]), FP8 (tensor
    weights, ``static`` tensor activations)."""
    weights = _args(strategy, block_structure=list(block) if block else None)
    acts = (_args("tensor") if static else
            _args("group" if block else "token", dynamic=True, observer=None, group_size=128 if block else None))
    return {"targets": list(targets), "weights": weights, "input_activations": acts, "output_activations": None,
            "format": "float-quantized"}


def _section(strategy="channel", targets=("Linear",), ignore=("patch_embed",), block=None, groups=None) -> dict:
    """The quantization_config llm-compressor writes: one group (``_group``'s arguments), or ``groups``."""
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {f"group_{i}": g for i, g in enumerate(groups or [_group(strategy, targets, block)])},
            "global_compression_ratio": None, "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {},
            "transform_config": {}, "version": "0.12.2"}


#: ``ignore`` for targets naming the attention layers only: every other linear module, as compressed-tensors writes it.
FLOAT_BESIDE_ATTN = ["patch_embed", "re:.*mlp.*", "proj_out"]


def _fp8(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (w.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _channel(w: torch.Tensor) -> dict[str, torch.Tensor]:
    scale = (w.float().abs().amax(1, keepdim=True) / FP8_MAX).bfloat16()
    return {"weight": _fp8(w, scale), "weight_scale": scale}


def _block(w: torch.Tensor, bn: int = 128, bk: int = 128) -> dict[str, torch.Tensor]:
    """[ceil(out/bn), ceil(in/bk)] scales, partial last tiles included (compressed-tensors' block layout)."""
    rows, cols = math.ceil(w.shape[0] / bn), math.ceil(w.shape[1] / bk)
    scale = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            scale[i, j] = w[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].float().abs().amax() / FP8_MAX
    scale = scale.bfloat16()
    full = scale.float().repeat_interleave(bn, 0)[: w.shape[0]].repeat_interleave(bk, 1)[:, : w.shape[1]]
    return {"weight": _fp8(w, full), "weight_scale": scale}


def _tensor_static(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """FP8: one weight scale ``[1]`` and a stored ``input_scale`` ``[1]``."""
    scale = (w.float().abs().amax() / FP8_MAX).bfloat16().reshape(1)
    return {"weight": _fp8(w, scale), "weight_scale": scale, "input_scale": torch.tensor([4.0 / FP8_MAX]).bfloat16()}


def _write(path, section: dict, quantized, how=_channel, how_of=None) -> dict[str, torch.Tensor]:
    """A checkpoint of the demo model whose 2-D weights of modules ``quantized(module)`` are stored by ``how``
    (``how_of(module)``, when given)."""
    out = {}
    for name, tensor in random_state_dict(CFG).items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and tensor.dim() == 2 and quantized(module):
            stored = (how_of(module) if how_of else how)(tensor)
            out |= {f"{module}.{k}": v for k, v in stored.items()}
        else:
            out[name] = tensor
    path.mkdir(exist_ok=True)
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**CFG.to_dict(), "quantization_config": section}))
    return out


def _load(path) -> DemoDiT:
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=path))
    load_checkpoint(model, path)
    return model


def _methods(model: DemoDiT) -> dict[str, str]:
    return {n: type(m.quant_method).__name__ for n, m in model.named_modules() if hasattr(m, "quant_method")}


# --- targets -------------------------------------------------------------------------------------------------------
def test_regex_targets_quantize_only_the_layers_they_name(tmp_path):
    """(Was: every linear layer built fp8 whatever the targets, so the float mlp / proj_out weights failed to load.)
    The modules no group targets are in ``ignore``, as compressed-tensors writes them (test_untargeted_layers_are_refused)."""
    _write(tmp_path, _section(targets=["re:.*attn.*"], ignore=FLOAT_BESIDE_ATTN), lambda m: ".attn." in m)
    model = _load(tmp_path)
    methods = _methods(model)
    assert {n for n, m in methods.items() if m == "Fp8LinearMethod"} == {
        f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv_proj", "o_proj")}
    assert methods["blocks.0.mlp.gate_up_proj"] == methods["proj_out"] == "UnquantizedLinearMethod"
    cfg = model.blocks[0].attn.qkv_proj.quant_config
    assert cfg.to_dict()["config_groups"]["group_0"]["targets"] == ["re:.*attn.*"]
    assert "re:.*attn.*" in repr(cfg)
    assert Fp8Config.from_config(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert torch.isfinite(model(torch.randn(1, 4, CFG.in_channels).bfloat16())).all()


def test_targets_by_module_name_and_by_fused_parts():
    """Names and patterns of the checkpoint's modules: a fused layer is targeted when all its parts are."""
    cfg = Fp8Config.from_config(_section(targets=["blocks.0.attn.o_proj", "re:.*\\.[qkv]_proj$"],
                                         ignore=["patch_embed", "blocks.1.attn.o_proj", "re:.*mlp.*", "proj_out"]))
    model = DemoDiT(CFG, quant_config=cfg)
    methods = _methods(model)
    assert methods["blocks.0.attn.o_proj"] == methods["blocks.1.attn.qkv_proj"] == "Fp8LinearMethod"
    assert methods["blocks.1.attn.o_proj"] == methods["blocks.0.mlp.down_proj"] == "UnquantizedLinearMethod"


def test_a_fused_layer_whose_parts_are_targeted_differently_is_an_error():
    cfg = Fp8Config.from_config(_section(targets=["re:.*\\.[qk]_proj$"]))
    with pytest.raises(ConfigError, match=r"fuses the checkpoint modules .*config_groups targets names "
                                          r"\['blocks.0.attn.q_proj', 'blocks.0.attn.k_proj'\] and not "
                                          r"\['blocks.0.attn.v_proj'\]"):
        DemoDiT(CFG, quant_config=cfg)


def test_class_name_targets():
    """'Linear' names every linear layer; a class of another kind (Embedding) names none of them."""
    every = _methods(DemoDiT(CFG, quant_config=Fp8Config.from_config(_section())))
    assert {n for n, m in every.items() if m == "Fp8LinearMethod"} == set(every) - {"patch_embed"}
    mixed = _methods(DemoDiT(CFG, quant_config=Fp8Config.from_config(
        _section(targets=["Embedding", "re:.*mlp.*"], ignore=["patch_embed", "re:.*attn.*", "proj_out"]))))
    assert {n for n, m in mixed.items() if m == "Fp8LinearMethod"} == {
        f"blocks.{i}.mlp.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    with pytest.raises(ConfigError, match=r"targets \['Embedding'\] name no linear layer"):
        Fp8Config.from_config(_section(targets=["Embedding"]))


# --- ignore --------------------------------------------------------------------------------------------------------
def test_ignore_patterns_reach_fused_layers_through_their_parts(tmp_path):
    """(Was: a pattern naming q_proj/k_proj/v_proj never matched qkv_proj; the same entries as names did.)"""
    skipped = ("blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj")
    _write(tmp_path, _section(ignore=["patch_embed", "re:blocks\\.0\\.attn\\.[qkv]_proj"]),
           lambda m: m != "patch_embed" and m not in skipped)
    methods = _methods(_load(tmp_path))
    assert methods["blocks.0.attn.qkv_proj"] == "UnquantizedLinearMethod"
    assert methods["blocks.1.attn.qkv_proj"] == methods["blocks.0.attn.o_proj"] == "Fp8LinearMethod"


def test_ignore_parts_that_disagree_are_an_error_naming_them_and_the_key():
    cfg = Fp8Config.from_config(_section(ignore=["re:blocks\\.0\\.attn\\.[qk]_proj"]))
    with pytest.raises(ConfigError, match=r"the skip list \(ignore\) names \['blocks.0.attn.q_proj', "
                                          r"'blocks.0.attn.k_proj'\] and not \['blocks.0.attn.v_proj'\]"):
        cfg.is_layer_skipped("blocks.0.attn.qkv_proj")


def test_ignore_patterns_match_at_the_start_of_the_name_as_compressed_tensors_does():
    """compressed-tensors and vLLM match an re: entry with re.match: 're:blocks\\.0' ignores all of block 0."""
    cfg = Fp8Config.from_config(_section(ignore=["re:blocks\\.0\\."]))
    assert cfg.is_layer_skipped("blocks.0.attn.qkv_proj") and cfg.is_layer_skipped("blocks.0.mlp.down_proj")
    assert not cfg.is_layer_skipped("blocks.1.mlp.down_proj")
    # the fp8 format keeps its whole-name rule
    assert not Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": ["re:blocks\\.0\\."]}).is_layer_skipped(
        "blocks.0.mlp.down_proj")


def test_the_skip_list_key_is_the_formats():
    assert Fp8Config.from_config(_section()).skip_list_key() == "ignore"
    assert Fp8Config.from_config({"quant_method": "fp8"}).skip_list_key() == "ignored_layers"


# --- FP8_BLOCK -------------------------------------------------------------------------------------------------------
def test_an_llm_compressor_fp8_block_checkpoint_loads_exactly(tmp_path):
    """llm-compressor FP8_BLOCK: [128, 128] block scales named weight_scale (bf16), dynamic activations in groups of
    128; proj_out (64 rows) has a partial block. Each layer de-quantizes to the stored fp8 times its tile's scale."""
    stored = _write(tmp_path, _section("block", block=(128, 128)), lambda m: m != "patch_embed", how=_block)
    model = _load(tmp_path)
    cfg = model.proj_out.quant_config
    assert cfg.weight_block_size == (128, 128) and cfg.activation_scheme == "dynamic"
    assert Fp8Config.from_config(cfg.to_dict()).to_dict() == cfg.to_dict()

    def dequantized(module: str) -> torch.Tensor:
        w, s = stored[f"{module}.weight"], stored[f"{module}.weight_scale"].float()
        full = s.repeat_interleave(128, 0)[: w.shape[0]].repeat_interleave(128, 1)[:, : w.shape[1]]
        return w.float() * full

    qkv = model.blocks[1].attn.qkv_proj
    expected = torch.cat([dequantized(f"blocks.1.attn.{p}") for p in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(qkv.quant_method.dequantize_weight(qkv), expected)
    assert torch.equal(model.proj_out.quant_method.dequantize_weight(model.proj_out), dequantized("proj_out"))
    x = torch.randn(3, 256).bfloat16()
    out = qkv(x)[0].float()
    ref = x.float() @ expected.T + qkv.bias.float()
    assert ((out - ref).norm() / ref.norm()).item() < Fp8Config.tolerance.max_rel_error


# --- sections fp8 cannot read --------------------------------------------------------------------------------------
def _edited(edit) -> dict:
    section = copy.deepcopy(_section())
    edit(section)
    return section


@pytest.mark.parametrize("edit,match", [
    (lambda s: (s.update(format="int-quantized"), s["config_groups"]["group_0"]["weights"].update(type="int"),
                s["config_groups"]["group_0"]["input_activations"].update(type="int")),
     r"format 'int-quantized' of the section: fp8 reads 'float-quantized'"),
    (lambda s: s["config_groups"]["group_0"]["weights"].update(strategy="group", group_size=128),
     r"strategy 'group' of config_groups.group_0.weights: fp8 reads 'tensor', 'channel', 'block'"),
    (lambda s: s["config_groups"]["group_0"]["weights"].update(stratgy=s["config_groups"]["group_0"]["weights"]
                                                               .pop("strategy")),
     r"key 'stratgy' of config_groups.group_0.weights .* did you mean 'strategy'\?"),
    (lambda s: s["config_groups"]["group_0"]["weights"].update(symmetric=False),
     r"symmetric False of config_groups.group_0.weights: fp8 reads symmetric weights"),
    (lambda s: s["config_groups"]["group_0"]["weights"].update(num_bits=4),
     r"num_bits 4 of config_groups.group_0.weights"),
    (lambda s: s["config_groups"]["group_0"]["weights"].update(strategy="block", block_structure=None),
     r"block_structure None of config_groups.group_0.weights: strategy 'block' needs"),
])
def test_a_section_fp8_cannot_read_names_the_field(edit, match):
    """(Was: "declares quantization method 'compressed-tensors', which no loaded plugin registers ... Install the
    plugin that provides it" — though fp8 reads compressed-tensors.)"""
    with pytest.raises(ConfigError, match=match):
        resolve_quant_config(hf_config={"quantization_config": _edited(edit)})


class _ToyPlugin:
    def __init__(self, config_cls: type) -> None:
        self.config_cls = config_cls

    @hookimpl
    def register_quantization_methods(self, register) -> None:
        from fvq_unquantized import UnquantizedLinearMethod

        register(self.config_cls, UnquantizedLinearMethod, weight_loader_v2=True)


def _toy_config(name: str, claims: bool) -> type:
    from fvq_unquantized import UnquantizedConfig

    def override(cls, hf_quant_cfg, user_quant):
        return name if claims and hf_quant_cfg.get("format") == "int-quantized" else None

    # (it keeps every layer unquantized, so the section's ignore list means nothing to it: declared unread, as a
    # plugin must for a skip-list key it does not read — config_keys.SKIP_LIST_KEYS)
    return type(f"Toy{len(name)}Config", (UnquantizedConfig,), {
        "get_name": classmethod(lambda cls: name), "override_quantization_method": classmethod(override),
        "to_dict": lambda self: {"quant_method": name}, "unread_checkpoint_keys": frozenset({"ignore"})})


@pytest.mark.parametrize("name,claims", [("toy_ct_int8", True), ("compressed-tensors", False)])
def test_a_section_another_plugin_reads_is_left_to_it(name, claims):
    """fp8 claims a section of float weights it cannot read only to explain it: a plugin claiming it, or registering
    the name compressed-tensors, reads it. (Sections of integer weights it never claims unless asked for by name:
    test_a_section_of_integer_weights_is_not_fp8s.)"""
    unread = _edited(lambda s: s.update(format="int-quantized"))  # (float weights: fp8's to explain, unless claimed)
    register_plugin(_ToyPlugin(_toy_config(name, claims)), name)
    try:
        assert Fp8Config.override_quantization_method(unread, None) is None
        assert resolve_quant_config(hf_config={"quantization_config": unread}).get_name() == name
        assert Fp8Config.override_quantization_method(_section(), None) == "fp8"  # one fp8 reads stays fp8's
    finally:
        unregister_plugin(name)
    assert Fp8Config.override_quantization_method(unread, None) == "fp8"


def _w8a16(**weights) -> dict:
    """llm-compressor's W8A16 layout: pack-quantized, 8-bit integer weights per channel, no activation scheme."""
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "ignore": [], "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "weights": {
                "num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False, **weights}}}}


def _without_type(section: dict) -> dict:
    del section["config_groups"]["group_0"]["weights"]["type"]
    return section


@pytest.mark.parametrize("section,awq_says", [
    (_w8a16(), r"'awq': compressed-tensors config: num_bits 8 of config_groups.group_0.weights: awq reads 4-bit"),
    ({**_w8a16(num_bits=4, strategy="group", group_size=128), "format": "packed-quantized"},
     r"'awq': compressed-tensors config: format 'packed-quantized' of the section: awq reads 'pack-quantized'"),
    (_without_type(_w8a16()), r"'awq': compressed-tensors config: num_bits 8 "),  # (no type: the default, int)
])
def test_a_section_of_integer_weights_is_not_fp8s(tmp_path, section, awq_says):
    """(Was: fp8 claimed every compressed-tensors section no other plugin claimed, so a W8A16 checkpoint or a
    'packed-quantized' typo was refused with fp8's words alone — "fp8 reads 'float-quantized' ... re-export it with an
    FP8 scheme".) Integer weights are the W4A16 / W8A16 family's: fp8 leaves the section unclaimed, and the refusal
    quotes each method's, the integer reader's (awq) first — from a checkpoint's config.json and from hf_config."""
    assert Fp8Config.override_quantization_method(section, None) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    for given in ({"checkpoint": tmp_path}, {"hf_config": {"quantization_config": section}}):
        with pytest.raises(ConfigError) as info:
            resolve_quant_config(**given)
        message = str(info.value)
        assert "no installed method reads the compressed-tensors config given" in message, message
        assert re.search(awq_says, message), message
        assert message.index("'awq': ") < message.index("'fp8': "), message  # (the integer reader's advice first)
    # asked for by name, fp8 says itself why it cannot read it
    assert Fp8Config.override_quantization_method(section, "fp8") == "fp8"


def test_layers_ignored_take_the_unquantized_method_and_targeted_ones_fp8():
    cfg = Fp8Config.from_config(_section(targets=["re:blocks\\.1\\..*"], ignore=["patch_embed", "re:blocks\\.0\\..*",
                                                                                "proj_out"]))
    model = DemoDiT(CFG, quant_config=cfg)
    assert isinstance(model.blocks[0].mlp.down_proj.quant_method, UnquantizedLinearMethod)
    assert isinstance(model.blocks[1].mlp.down_proj.quant_method, Fp8LinearMethod)


@pytest.mark.parametrize("groups", [None, [_group("channel", ["re:.*attn.*"]), _group("tensor", ["proj_out"], static=True)]],
                         ids=["one scheme", "two schemes"])
def test_untargeted_layers_are_refused(groups):
    """A linear layer no group targets and ``ignore`` does not name has no scheme: refused at build, naming the layer,
    the targets and the ignore list, as vLLM's reader refuses it ("Unable to find matching target"). compressed-tensors
    writes every linear module it leaves in float into ``ignore``, so this is a hand-edited config or a target that
    names nothing. (Was: built unquantized, silently.)"""
    section = _section(targets=["re:.*attn.*"], groups=groups)
    with pytest.raises(ConfigError) as err:
        DemoDiT(CFG, quant_config=Fp8Config.from_config(section))
    targets = ("config_groups targets ['re:.*attn.*']" if groups is None else
               "config_groups.group_0.targets ['re:.*attn.*']; config_groups.group_1.targets ['proj_out']")
    assert str(err.value).startswith(
        "compressed-tensors config: no config group targets linear layer MergedColumnParallelLinear "
        "'blocks.0.mlp.gate_up_proj' (checkpoint modules ['blocks.0.mlp.gate_proj', 'blocks.0.mlp.up_proj']) and "
        f"'ignore' does not name it ({targets}; ignore ['patch_embed']), so it has no scheme"), str(err.value)
    assert "add it to 'ignore' (or build it with quant_config=None)" in str(err.value)


@pytest.mark.parametrize("entry", ["ReplicatedLinear", "Linear"])
def test_a_class_name_in_ignore_naming_a_linear_layer_is_refused(entry):
    """compressed-tensors leaves every layer of an ignored class in float, vLLM's reader (names only) quantizes them:
    refused, naming the entry and the layer. (Was: applied to nothing, then a load failure on the float weights advising
    to add the layer to ignore.) A class of another kind (Embedding) names no linear layer: accepted."""
    with pytest.raises(ConfigError, match=rf"ignore entry '{entry}' is a class name, and it names linear layer "
                                          r"ReplicatedLinear 'patch_embed': compressed-tensors leaves every layer"):
        DemoDiT(CFG, quant_config=Fp8Config.from_config(_section(ignore=[entry])))
    methods = _methods(DemoDiT(CFG, quant_config=Fp8Config.from_config(_section(ignore=["Embedding", "patch_embed"]))))
    assert methods["patch_embed"] == "UnquantizedLinearMethod" and methods["proj_out"] == "Fp8LinearMethod"


def test_a_layer_built_without_its_name_is_told_to_pass_prefix():
    """Only a class target can name a layer built without prefix=: the fix is the prefix, not the targets."""
    from fastvideo_quant.layers.linear import ReplicatedLinear

    with pytest.raises(ConfigError, match=r"linear layer ReplicatedLinear was built without prefix= \(its module name\), "
                                          r"so no target but a class name can name it \(config_groups targets "
                                          r"\['re:.\*attn.\*'\]\): build it with prefix="):
        ReplicatedLinear(64, 64, quant_config=Fp8Config.from_config(_section(targets=["re:.*attn.*"])))


def test_an_untargeted_layer_is_told_a_misspelled_class_and_a_fused_layer_the_mapping():
    """The build-time error carries what the load-time hints said of the targets: a class target close to a linear
    class ('Lienar'), and for a fused layer the config's packed_modules_mapping does not know (a DiT's to_qkv), that
    targets naming its parts need the model's mapping."""
    from fastvideo_quant.layers.linear import QKVParallelLinear

    with pytest.raises(ConfigError, match=r"\(config_groups targets \['Lienar', 're:.*attn.*'\], did you mean 'Linear' "
                                          r"for 'Lienar'\?; ignore \['patch_embed'\]\)"):
        DemoDiT(CFG, quant_config=Fp8Config.from_config(_section(targets=["Lienar", "re:.*attn.*"])))
    with pytest.raises(ConfigError, match=r"targets \['Lienar'\] name no linear layer, did you mean 'Linear' for "
                                          r"'Lienar'\?: fp8 quantizes linear layers"):
        Fp8Config.from_config(_section(targets=["Lienar"]))
    cfg = Fp8Config.from_config(_section(targets=["re:.*to_[qkv]$"], ignore=[]))
    with pytest.raises(ConfigError) as err:
        QKVParallelLinear(64, 16, 4, 4, quant_config=cfg, prefix="blocks.0.attn.to_qkv")
    assert ("QKVParallelLinear 'to_qkv' fuses several checkpoint modules, and the config's packed_modules_mapping does "
            "not say which (['gate_up_proj', 'qkv_proj'] only), so targets naming them cannot name it: pass the model's "
            "mapping, resolve_quant_config(..., packed_modules_mapping={'to_qkv': [<its checkpoint modules>]})") \
        in str(err.value), str(err.value)
    cfg.packed_modules_mapping["to_qkv"] = ["to_q", "to_k", "to_v"]  # (what that argument does)
    layer = QKVParallelLinear(64, 16, 4, 4, quant_config=cfg, prefix="blocks.0.attn.to_qkv")
    assert isinstance(layer.quant_method, Fp8LinearMethod)


# --- config groups of different schemes ------------------------------------------------------------------------------
THREE_SCHEMES = [_group("channel", ["Linear"]), _group("tensor", ["re:.*attn.*"], static=True),
                 _group("block", ["re:.*mlp.*"], block=(128, 128))]


def _three_schemes(module: str):
    return _tensor_static if ".attn." in module else _block if ".mlp." in module else _channel


def test_groups_of_different_schemes_give_each_layer_its_groups(tmp_path):
    """(Was: "mixes fp8 schemes across config_groups ...; fp8 reads one scheme per checkpoint".) FP8_DYNAMIC for every
    Linear, FP8 (static) for attention, FP8_BLOCK for the MLP: a group naming the module comes before the one naming
    its class, as vLLM reads it. Each layer loads its tensors exactly and computes within fp8's tolerance."""
    stored = _write(tmp_path, _section(groups=THREE_SCHEMES), lambda m: m != "patch_embed", how_of=_three_schemes)
    model = _load(tmp_path)
    cfg = model.proj_out.quant_config
    assert cfg.scheme_groups is not None and model.blocks[1].attn.qkv_proj.quant_config is cfg

    def scheme(layer):
        sub = layer.quant_method.quant_config
        return sub.weight_scale_strategy, sub.weight_block_size, sub.activation_scheme

    block = model.blocks[1]
    assert scheme(block.attn.qkv_proj) == scheme(block.attn.o_proj) == ("tensor", None, "static")
    assert scheme(block.mlp.gate_up_proj) == scheme(block.mlp.down_proj) == ("block", (128, 128), "dynamic")
    assert scheme(model.proj_out) == ("channel", None, "dynamic")
    assert block.attn.o_proj.input_scale.item() == pytest.approx(4.0 / FP8_MAX, rel=1e-2)

    def dequantized(module: str) -> torch.Tensor:
        w, s = stored[f"{module}.weight"].float(), stored[f"{module}.weight_scale"].float()
        if s.dim() == 2 and s.shape[1] > 1:  # block scales
            s = s.repeat_interleave(128, 0)[: w.shape[0]].repeat_interleave(128, 1)[:, : w.shape[1]]
        return w * s

    x = torch.randn(5, 256).bfloat16()
    for layer, module in [(block.attn.o_proj, "blocks.1.attn.o_proj"), (block.mlp.gate_up_proj, None),
                          (model.proj_out, "proj_out")]:
        if module is None:
            expected = torch.cat([dequantized(f"blocks.1.mlp.{p}") for p in ("gate_proj", "up_proj")])
        else:
            expected = dequantized(module)
        assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)
        inp = x if layer.input_size == 256 else torch.randn(5, layer.input_size).bfloat16()
        out = layer(inp)[0].float()
        ref = inp.float() @ expected.T + (0 if layer.bias is None else layer.bias.float())
        assert ((out - ref).norm() / ref.norm()).item() < Fp8Config.tolerance.max_rel_error
    assert torch.isfinite(model(torch.randn(1, 4, CFG.in_channels).bfloat16())).all()
    # the section round-trips, each group with its scheme and targets
    again = Fp8Config.from_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and list(cfg.to_dict()["config_groups"]) == ["group_0", "group_1", "group_2"]
    assert cfg.to_dict()["config_groups"]["group_2"]["weights"]["block_structure"] == [128, 128]
    assert "re:.*attn.*" in repr(cfg) and "re:.*mlp.*" in repr(cfg)


def test_a_fused_layer_goes_by_its_parts_groups():
    """q, k, v named by a static group's pattern: qkv_proj holds that group's scheme; o_proj (named by none) the
    Linear group's."""
    cfg = Fp8Config.from_config(_section(groups=[_group("channel", ["Linear"]),
                                                 _group("tensor", ["re:.*\\.[qkv]_proj$"], static=True)]))
    model = DemoDiT(CFG, quant_config=cfg)
    assert model.blocks[0].attn.qkv_proj.quant_method.quant_config.activation_scheme == "static"
    assert model.blocks[0].attn.o_proj.quant_method.quant_config.weight_scale_strategy == "channel"


def test_fused_parts_in_groups_of_different_schemes_are_an_error_naming_them():
    cfg = Fp8Config.from_config(_section(groups=[_group("channel", ["Linear"]),
                                                 _group("tensor", ["re:.*\\.q_proj$"], static=True)]))
    with pytest.raises(ConfigError, match=r"layer 'blocks.0.attn.qkv_proj' fuses the checkpoint modules .* different "
                                          r"schemes \(blocks.0.attn.q_proj: config_groups.group_1 \(weights 'tensor', "
                                          r"static activations\); blocks.0.attn.k_proj: config_groups.group_0 "
                                          r"\(weights 'channel', dynamic activations\);"):
        DemoDiT(CFG, quant_config=cfg)


def test_groups_of_one_scheme_stay_one_scheme_and_layers_ignore_names_stay_float():
    cfg = Fp8Config.from_config(_section(groups=[_group("channel", ["re:.*attn.*"]), _group("channel", ["proj_out"])]))
    assert cfg.scheme_groups is None and cfg.targets == ["re:.*attn.*", "proj_out"]
    mixed = Fp8Config.from_config(_section(groups=[_group("channel", ["re:.*attn.*"]),
                                                   _group("tensor", ["proj_out"], static=True)],
                                           ignore=["patch_embed", "re:.*mlp.*"]))
    methods = _methods(DemoDiT(CFG, quant_config=mixed))
    assert methods["blocks.0.mlp.down_proj"] == "UnquantizedLinearMethod"
    assert methods["proj_out"] == methods["blocks.0.attn.qkv_proj"] == "Fp8LinearMethod"


def test_one_target_in_groups_of_different_schemes_is_an_error():
    with pytest.raises(ConfigError, match=r"target 'Linear' is listed by config_groups.group_0 \(weights 'channel', "
                                          r"dynamic activations\) and config_groups.group_1 \(weights 'tensor', static"):
        Fp8Config.from_config(_section(groups=[_group("channel", ["Linear"]),
                                               _group("tensor", ["Linear"], static=True)]))


def test_writing_takes_each_modules_groups_scheme():
    """quantize_weight (fvq quantize) goes by the module's name; calibration is required when any group is static; a
    module only a class other than Linear names has no known scheme from its name."""
    cfg = Fp8Config.from_config(_section(groups=THREE_SCHEMES))
    assert cfg.requires_calibration() and cfg.uses_calibration()
    w = torch.randn(256, 256)
    assert set(cfg.quantize_weight(w, prefix="blocks.0.mlp.down_proj")) == {"weight", "weight_scale"}
    assert cfg.quantize_weight(w, prefix="blocks.0.mlp.down_proj")["weight_scale"].shape == (2, 2)
    assert cfg.quantize_weight(w, prefix="proj_out")["weight_scale"].shape == (256, 1)
    written = cfg.quantize_weight(w, prefix="blocks.0.attn.o_proj", activations=torch.randn(8, 256))
    assert written["weight_scale"].shape == written["input_scale"].shape == (1,)
    by_class = Fp8Config.from_config(_section(groups=[_group("channel", ["RowParallelLinear"]),
                                                      _group("tensor", ["re:.*attn.*"])]))
    assert not by_class.requires_calibration()
    with pytest.raises(ConfigError, match=r"quantize_weight 'proj_out': compressed-tensors config: module 'proj_out': no "
                                          r"config group names it .* class targets \['RowParallelLinear'\] cannot be "
                                          r"matched"):
        by_class.quantize_weight(w, prefix="proj_out")


def test_tp_advice_of_groups_of_different_schemes_holds_every_groups_rules():
    cfg = Fp8Config.from_config(_section(groups=[_group("channel", ["Linear"]),
                                                 _group("block", ["re:.*mlp.*"], block=(128, 128))]))
    # the block group's rule, named: 64 rows split a 128-row block
    assert cfg.shard_problems([64], [128], 256, 256) == [
        "for config_groups.group_1 (weights 'block' (128, 128), dynamic activations): output shard 0 has 64 rows per "
        "rank (of 128), not a multiple of bn=128"]
    assert Fp8Config.from_config(_section()).shard_problems([64], [128], 256, 256) == []


@pytest.mark.slow
def test_groups_of_different_schemes_over_tp2_match_tp1(tmp_path):
    """Each rank's layers hold their groups' schemes and shard their tensors: a row-parallel layer's shards, joined,
    de-quantize to TP=1's weight exactly (block grids, one scale per tensor); on real gloo ranks. The output stays
    within the drift of one-scheme checkpoints between TP=1 and TP=2 (6.1% for FP8_DYNAMIC here: per-token
    activation scales are taken over each rank's half of a row-parallel input)."""
    from fp8_tp_workers import load_demo

    from fastvideo_quant.testing.distributed import run_distributed

    _write(tmp_path, _section(groups=THREE_SCHEMES), lambda m: m != "patch_embed", how_of=_three_schemes)
    x = torch.randn(1, 4, CFG.in_channels).bfloat16()
    (tp1,) = run_distributed(load_demo, 1, str(tmp_path), x, backend="gloo")
    tp2 = run_distributed(load_demo, 2, str(tmp_path), x, backend="gloo")
    assert tp1["schemes"]["blocks.0.attn.qkv_proj"] == ("tensor", "static")
    assert tp1["schemes"]["blocks.0.mlp.down_proj"] == ("block", "dynamic")
    assert tp1["schemes"]["proj_out"] == ("channel", "dynamic")
    assert all(rank["schemes"] == tp1["schemes"] for rank in tp2)
    for row in ("blocks.0.attn.o_proj", "blocks.1.mlp.down_proj"):
        assert torch.equal(torch.cat([rank["weights"][row] for rank in tp2], dim=1), tp1["weights"][row])
    for rank in tp2:
        err = ((rank["out"].float() - tp1["out"].float()).norm() / tp1["out"].float().norm()).item()
        assert err < 0.1, err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with compute capability >= 8.9 (fp8 tensor cores)")
@pytest.mark.parametrize("m", [4, 64, 1024])
def test_groups_of_different_schemes_on_the_gpu(tmp_path, m):
    """Each layer of the three-scheme checkpoint through the GPU's kernels (the W8A16 kernels at small M, _scaled_mm
    and the block route above), against float32 math of its de-quantized weight."""
    from fastvideo_quant.demo.run import load_model

    _write(tmp_path, _section(groups=THREE_SCHEMES), lambda m: m != "patch_embed", how_of=_three_schemes)
    model = load_model(CFG, tmp_path, torch.bfloat16, torch.device("cuda"))
    checked = set()
    for name, layer in model.named_modules():
        if not isinstance(getattr(layer, "quant_method", None), Fp8LinearMethod):
            continue
        x = torch.randn(m, layer.input_size, device="cuda").bfloat16()
        w = layer.quant_method.dequantize_weight(layer).float()
        ref = x.float() @ w.T + (0 if layer.bias is None else layer.bias.float())
        out = layer(x)[0].float()
        assert ((out - ref).norm() / ref.norm()).item() < Fp8Config.tolerance.max_rel_error, name
        checked.add(layer.quant_method.quant_config.weight_scale_strategy)
    assert checked == {"tensor", "channel", "block"}
    assert torch.isfinite(model(torch.randn(1, m, CFG.in_channels, device="cuda").bfloat16())).all()


def test_a_module_two_groups_name_takes_the_scheme_compressed_tensors_wrote():
    """compressed-tensors (match_targets) gives a module the target equal to its name, else the first matching re:
    pattern in string order, else its class — whatever the groups' order, which it does not keep meaningful. (Was:
    the first group in the config's order, so a valid checkpoint failed to load with shape errors only.)"""
    exact_later = Fp8Config.from_config(_section(groups=[_group("tensor", ["re:.*attn.*"], static=True),
                                                         _group("channel", ["blocks.0.attn.o_proj"])],
                                                 ignore=FLOAT_BESIDE_ATTN))
    model = DemoDiT(CFG, quant_config=exact_later)
    assert model.blocks[0].attn.o_proj.quant_method.quant_config.weight_scale_strategy == "channel"
    assert model.blocks[1].attn.o_proj.quant_method.quant_config.weight_scale_strategy == "tensor"
    # two patterns: 're:.*attn.*' sorts before 're:.*o_proj'
    patterns = Fp8Config.from_config(_section(groups=[_group("channel", ["re:.*o_proj"]),
                                                      _group("tensor", ["re:.*attn.*"], static=True)]))
    assert patterns.scheme_group_for(model.blocks[0].attn.o_proj, "blocks.0.attn.o_proj").name == "group_1"
    assert patterns.target_of_module("blocks.0.attn.o_proj") == ("re:.*attn.*", patterns.scheme_groups[1])


def test_groups_of_only_other_kinds_of_modules_and_a_misbuilt_container_are_named():
    """A group naming only modules fp8 does not load (Embedding) is accepted whatever its scheme: it quantizes
    nothing here. A container of groups that is not a compressed-tensors checkpoint's says what it found."""
    cfg = Fp8Config.from_config(_section(groups=[_group("channel", ["Linear"]),
                                                 _group("tensor", ["Embedding"], static=True)]))
    assert cfg.scheme_groups is not None
    assert not cfg.requires_calibration()  # (its static group quantizes nothing here: no calibration asked for)
    with pytest.raises(ConfigError, match=r"give checkpoint_format 'compressed-tensors' and is_checkpoint_fp8_serialized "
                                          r"true \(found checkpoint_format 'fp8', is_checkpoint_fp8_serialized True\)"):
        Fp8Config(is_checkpoint_fp8_serialized=True, scheme_groups=cfg.scheme_groups)


def test_a_failed_load_of_groups_of_different_schemes_names_each_modules_group(tmp_path):
    """A module whose tensors are of another scheme than its group's: the hint names the module, the group, the target
    that gave it the group and what is stored. Layers built with another config get the settings hint alone, not one
    telling the user to edit the checkpoint's config.json (which is right)."""
    def stored_as(module: str):
        return _channel if module == "blocks.1.attn.o_proj" else _three_schemes(module)

    _write(tmp_path, _section(groups=THREE_SCHEMES), lambda m: m != "patch_embed", how_of=stored_as)
    with pytest.raises(CheckpointError) as err:
        _load(tmp_path)
    assert ("module(s) 'blocks.1.attn.o_proj' hold config_groups.group_1 (weights 'tensor', static activations) by its "
            "target 're:.*attn.*', but the checkpoint stores per-channel ([out, 1]) weight scales and no input_scale "
            "for them") in str(err.value)
    good = tmp_path / "good"
    _write(good, _section(groups=THREE_SCHEMES), lambda m: m != "patch_embed", how_of=_three_schemes)
    model = DemoDiT(CFG, quant_config=Fp8Config.from_config(_section()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, good)
    assert "build the layers with the checkpoint's config" in str(err.value)
    assert "in the checkpoint's config.json" not in str(err.value)
