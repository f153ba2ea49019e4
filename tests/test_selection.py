"""Config selection by name, config.json, checkpoint directory; refusal of unsupported methods."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
import tp_workers as W
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.errors import ConfigError, MethodUnavailableError, UnknownMethodError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import hookimpl, register_plugin, unregister_plugin
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config


class GpuOnlyConfig(W.RefV1Config):
    @classmethod
    def get_name(cls):
        return "test_gpu_only"

    @classmethod
    def get_min_capability(cls):
        return 100

    @classmethod
    def cpu_support(cls):
        return None


class MissingDepConfig(W.RefV1Config):
    @classmethod
    def get_name(cls):
        return "test_missing_dep"

    @classmethod
    def unavailable_reason(cls):
        return "libfoo is not installed; install it with: pip install 'fastvideo-quant[foo]'"


class ClaimingConfig(W.RefV1Config):
    """Reads checkpoints whose quant_method says 'legacy-ref' (override_quantization_method)."""

    seen: ClassVar[list] = []

    @classmethod
    def get_name(cls):
        return "test_claiming"

    @classmethod
    def get_config_filenames(cls):
        return ["claiming_config.json"]

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant):
        return cls.get_name() if hf_quant_cfg.get("quant_method") == "legacy-ref" else None

    @classmethod
    def from_config(cls, config):
        cls.seen.append(config)
        return cls()


class SelPlugin:
    @hookimpl
    def register_quantization_methods(self, register):
        for cfg in (GpuOnlyConfig, MissingDepConfig, ClaimingConfig):
            register(cfg, W.PackedRefV1Method)


@pytest.fixture(autouse=True)
def _plugin():
    plugins.reset()
    register_plugin(SelPlugin(), name="sel")
    yield
    unregister_plugin("sel")


def test_by_name_and_unknown_name_lists_available() -> None:
    assert resolve_quant_config(None) is None
    assert resolve_quant_config("unquantized").get_name() == "unquantized"
    with pytest.raises(UnknownMethodError, match=r"unknown quantization method 'nope'; available: \[.*'unquantized'"):
        resolve_quant_config("nope")
    with pytest.raises(UnknownMethodError):
        get_quantization_config("nope")


def test_from_hf_config_and_compression_config() -> None:
    assert isinstance(resolve_quant_config(hf_config={"quantization_config": {"quant_method": "test_claiming"}}),
                      ClaimingConfig)
    assert isinstance(resolve_quant_config(hf_config={"compression_config": {"quant_method": "legacy-ref"}}),
                      ClaimingConfig)
    assert resolve_quant_config(hf_config={"hidden_size": 8}) is None


def test_flag_contradicting_checkpoint_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'unquantized' was asked for, but the given hf_config's 'quantization_config' "
                                          r"says the checkpoint is quantized with 'test_claiming'"):
        resolve_quant_config("unquantized", hf_config={"quantization_config": {"quant_method": "test_claiming"}})


def test_checkpoint_dir_config_json_and_method_file(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "legacy-ref", "x": 1}}))
    assert isinstance(resolve_quant_config(checkpoint=tmp_path), ClaimingConfig)
    assert ClaimingConfig.seen[-1]["x"] == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (other / "claiming_config.json").write_text(json.dumps({"bits": 4}))
    assert isinstance(resolve_quant_config(checkpoint=other), ClaimingConfig)
    assert ClaimingConfig.seen[-1] == {"bits": 4, "quant_method": "test_claiming"}
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_quant_config(checkpoint=tmp_path / "missing")
    (other / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        resolve_quant_config(checkpoint=other)


def test_missing_dependency_refused_with_install_hint() -> None:
    with pytest.raises(MethodUnavailableError, match=r"^quantization method 'test_missing_dep' of plugin '[^']+' "
                                                     r".* is unavailable: libfoo.*pip install"):
        resolve_quant_config("test_missing_dep")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_gpu_only_method_refused_when_layer_is_built() -> None:
    with pytest.raises(MethodUnavailableError, match=r"layer 'blk.proj'.*'test_gpu_only' needs a CUDA GPU"):
        ReplicatedLinear(8, 8, params_dtype=W.DT, quant_config=GpuOnlyConfig(), prefix="blk.proj")


def test_unsupported_activation_dtype_refused() -> None:
    with pytest.raises(MethodUnavailableError, match=r"supports activation dtypes .* model's dtype is torch.float16"):
        ReplicatedLinear(8, 8, params_dtype=torch.float16, quant_config=ClaimingConfig(), prefix="p")


def test_skipped_layers_by_prefix_and_fused_consistency() -> None:
    cfg = ClaimingConfig()
    cfg.modules_to_not_convert = ["blocks.0.attn", "mlp.gate_proj", "mlp.up_proj"]
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    assert cfg.is_layer_skipped("blocks.0.attn.qkv_proj")
    assert not cfg.is_layer_skipped("blocks.1.attn.qkv_proj")
    assert not cfg.is_layer_skipped("blocks.0.attnx.o_proj"), "patterns match whole name components"
    assert cfg.is_layer_skipped("blocks.3.mlp.gate_up_proj")
    cfg.modules_to_not_convert = ["mlp.gate_proj"]
    with pytest.raises(ConfigError, match=r"fuses the checkpoint modules \['blocks.3.mlp.gate_proj', 'blocks.3.mlp.up_proj'\], "
                       r"but modules_to_not_convert names \['blocks.3.mlp.gate_proj'\] and not \['blocks.3.mlp.up_proj'\]"):
        cfg.is_layer_skipped("blocks.3.mlp.gate_up_proj")


def test_skip_list_is_the_union_of_every_key() -> None:
    cfg = {"llm_int8_skip_modules": ["a", "b"], "ignored_layers": ["b", "c"], "modules_to_not_convert": ["d"]}
    assert ClaimingConfig.skip_list_from(cfg, "llm_int8_skip_modules") == ["a", "b", "c", "d"]
    assert ClaimingConfig.skip_list_from({}) == []
    with pytest.raises(ConfigError, match=r"'ignored_layers' must be a list of module names, found 'x'"):
        ClaimingConfig.skip_list_from({"ignored_layers": "x"})


@pytest.mark.parametrize("method", ["int8", "fp8", "awq"])
def test_builtin_methods_honour_modules_to_not_convert(method) -> None:
    cls = get_quantization_config(method)
    cfg = cls.from_config({**cls.from_config({}).to_dict(), "modules_to_not_convert": ["patch_embed"]})
    assert cfg.is_layer_skipped("patch_embed") and not cfg.is_layer_skipped("blocks.0.mlp.down_proj")


def test_fused_layer_is_skipped_when_its_checkpoint_parts_are() -> None:
    """Skip lists are written with checkpoint names; the default mapping makes them match fused layers."""
    cfg = get_quantization_config("fp8").from_config({"modules_to_not_convert": ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj",
                                                                                 "blocks.0.attn.v_proj"]})
    assert cfg.is_layer_skipped("blocks.0.attn.qkv_proj") and not cfg.is_layer_skipped("blocks.1.attn.qkv_proj")


def test_fused_layer_is_skipped_by_its_own_name() -> None:
    """A skip list written by hand with the model's fused name (what the user sees) skips that fused layer."""
    cfg = get_quantization_config("fp8").from_config({"modules_to_not_convert": ["blocks.0.attn.qkv_proj",
                                                                                 "blocks.2.mlp.gate_up_proj"]})
    assert cfg.is_layer_skipped("blocks.0.attn.qkv_proj") and not cfg.is_layer_skipped("blocks.1.attn.qkv_proj")
    assert cfg.is_layer_skipped("blocks.2.mlp.gate_up_proj") and not cfg.is_layer_skipped("blocks.2.mlp.down_proj")


def test_method_that_cannot_quantize_on_load_is_refused_for_float_checkpoints(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"'awq' cannot quantize a float checkpoint on load.*fvq quantize SRC --method awq"):
        resolve_quant_config("awq", checkpoint=tmp_path)


def _autoawq_checkpoint(path, *, group: int = 32) -> dict:
    """An AutoAWQ-style checkpoint: config.json without a quantization section, the method in quant_config.json."""
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["Toy"], "hidden_size": 64}))
    (path / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": group, "w_bit": 4,
                                                        "version": "GEMM"}))
    awq = get_quantization_config("awq").from_config({"group_size": group})
    tensors = {f"proj.{k}": v for k, v in awq.quantize_weight(torch.randn(32, 64), prefix="proj").items()}
    save_file(tensors, str(path / "model.safetensors"))
    return tensors


@pytest.mark.parametrize("flag", ["fp8", "int8", "unquantized", "none"])
def test_flag_contradicting_autoawq_quant_config_json_is_an_error(tmp_path, flag) -> None:
    """The method declared only in AutoAWQ's own file still counts: a flag naming another method is refused."""
    _autoawq_checkpoint(tmp_path)
    asked = "unquantized" if flag == "none" else flag
    with pytest.raises(ConfigError, match=rf"'{asked}' was asked for, but .*quant_config\.json says the checkpoint is "
                                          r"quantized with 'awq'; drop the flag or pass 'awq'"):
        resolve_quant_config(flag, checkpoint=tmp_path)


def test_autoawq_quant_config_json_selects_awq_and_loads(tmp_path) -> None:
    tensors = _autoawq_checkpoint(tmp_path)
    for flag in (None, "awq"):
        cfg = resolve_quant_config(flag, checkpoint=tmp_path)
        assert cfg.get_name() == "awq" and cfg.group_size == 32
    layer = ReplicatedLinear(64, 32, bias=False, params_dtype=torch.float32, quant_config=cfg, prefix="proj")
    model = torch.nn.ModuleDict({"proj": layer})
    load_checkpoint(model, tmp_path)
    from fvq_awq.format import dequantize_awq

    expected = dequantize_awq(**{k.split(".")[-1]: v for k, v in tensors.items()}).t()
    assert torch.equal(layer.quant_method.dequantize_weight(layer), expected)


@pytest.mark.parametrize("null", [None, "missing"])
def test_a_skip_list_only_autoawqs_file_gives_is_read(tmp_path, null) -> None:
    """config.json's AWQ section with modules_to_not_convert null (or left out) beside AutoAWQ's quant_config.json
    listing the modules kept in float: the list was not read, and the float layer was built int4 (its float tensor
    then failed to load)."""
    _autoawq_checkpoint(tmp_path)
    (tmp_path / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 32, "w_bit": 4,
                                                            "version": "GEMM", "modules_to_not_convert": ["visual"]}))
    section = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
               "modules_to_not_convert": null}
    if null == "missing":
        del section["modules_to_not_convert"]
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    cfg = resolve_quant_config(checkpoint=tmp_path)
    assert cfg.get_name() == "awq" and cfg.modules_to_not_convert == ["visual"]
    assert cfg.is_layer_skipped("visual.blocks.0.attn.qkv") and not cfg.is_layer_skipped("proj")
    # (both lists given and different: a conflict, as before)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["lm_head"]}}))
    with pytest.raises(ConfigError, match=r"conflicting settings for quantization method 'awq'.*modules_to_not_convert"):
        resolve_quant_config(checkpoint=tmp_path)
    # (config.json without a list, two files with different ones: compared with each other, not the first used)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}}))
    (tmp_path / "quantize_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 32, "w_bit": 4,
                                                               "version": "GEMM", "modules_to_not_convert": ["lm_head"]}))
    with pytest.raises(ConfigError, match=r"quant_config\.json gives modules_to_not_convert=\['visual'\], .*"
                                          r"quantize_config\.json gives modules_to_not_convert=\['lm_head'\]"):
        resolve_quant_config(checkpoint=tmp_path)


@pytest.mark.parametrize("where", ["hf_config", "config.json"])
def test_an_empty_skip_list_is_a_list_and_not_replaced_by_a_files(tmp_path, where) -> None:
    """``modules_to_not_convert: []`` says every module is quantized. A caller's (or config.json's) empty list beside
    AutoAWQ's quant_config.json listing modules was replaced by that list without a word; the two disagree about the
    checkpoint's tensors, so it is a conflict naming both."""
    _autoawq_checkpoint(tmp_path)
    (tmp_path / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 32, "w_bit": 4,
                                                            "version": "GEMM", "modules_to_not_convert": ["visual"]}))
    section = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
               "modules_to_not_convert": []}
    hf_config = None
    if where == "hf_config":
        hf_config = {"quantization_config": section}
    else:
        (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    with pytest.raises(ConfigError, match=r"conflicting settings for quantization method 'awq': .* gives "
                                          r"modules_to_not_convert=\[\], .*quant_config\.json gives "
                                          r"modules_to_not_convert=\['visual'\]"):
        resolve_quant_config(checkpoint=tmp_path, hf_config=hf_config)
    # (the file's list alone, or the same list given: read as before)
    (tmp_path / "config.json").unlink(missing_ok=True)
    section["modules_to_not_convert"] = ["visual"]
    cfg = resolve_quant_config(checkpoint=tmp_path, hf_config={"quantization_config": section})
    assert cfg.modules_to_not_convert == ["visual"]


def test_checkpoint_declaring_two_methods_names_both_files(tmp_path) -> None:
    _autoawq_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    for flag in (None, "awq", "fp8"):
        with pytest.raises(ConfigError, match=r"conflicting quantization methods declared: .*config\.json's "
                                              r"'quantization_config' says 'fp8'; .*quant_config\.json says 'awq'"):
            resolve_quant_config(flag, checkpoint=tmp_path)


def test_tool_file_no_plugin_reads_is_an_error(tmp_path, monkeypatch) -> None:
    """With the AWQ plugin disabled, quant_config.json still marks the checkpoint quantized; nothing loads it as float."""
    _autoawq_checkpoint(tmp_path)
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "awq")
    plugins.reset()
    for flag in (None, "fp8"):
        with pytest.raises(ConfigError, match=r"quant_config\.json declares a quantized checkpoint \(keys \['q_group_size', "
                                              r".*no loaded plugin reads that file; available methods: \[.*FVQ_DISABLE_PLUGINS"):
            resolve_quant_config(flag, checkpoint=tmp_path)


def test_hf_config_and_checkpoint_must_agree(tmp_path) -> None:
    _autoawq_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"the given hf_config's 'quantization_config' says 'fp8'; .*quant_config\.json "
                                          r"says 'awq'; pass an hf_config that agrees with the checkpoint's"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8"}}, checkpoint=tmp_path)
    # Agreeing: the given hf_config's section builds the config; one without a section defers to the checkpoint.
    given = {"quantization_config": {"quant_method": "awq", "group_size": 32, "modules_to_not_convert": ["head"]}}
    assert resolve_quant_config(hf_config=given, checkpoint=tmp_path).modules_to_not_convert == ["head"]
    # The same method set up differently: the tensors fit one of them (the first used to win silently).
    given = {"quantization_config": {"quant_method": "awq", "group_size": 64}}
    with pytest.raises(ConfigError, match=r"conflicting settings for quantization method 'awq': the given hf_config's "
                                          r"'quantization_config' gives group_size=64, .*quant_config\.json gives "
                                          r"group_size=32; the checkpoint's tensors fit one of them"):
        resolve_quant_config(hf_config=given, checkpoint=tmp_path)
    assert resolve_quant_config(hf_config={"hidden_size": 64}, checkpoint=tmp_path).group_size == 32
    with pytest.raises(ConfigError, match=r"hf_config must be a JSON object \(a dict\), found list"):
        resolve_quant_config(hf_config=[], checkpoint=tmp_path)


def test_empty_or_non_string_method_name_is_an_error() -> None:
    with pytest.raises(UnknownMethodError, match=r"quantization method name is empty \(''\); pass one of \[.*'unquantized'.*"
                                                 r"or None \(or 'none'\) for an unquantized model"):
        resolve_quant_config("")
    with pytest.raises(ConfigError, match=r"method must be a method name \(str\) or None, found 8"):
        resolve_quant_config(8)


def test_declarations_of_one_method_with_different_settings_are_refused(tmp_path) -> None:
    """config.json says group 128, AutoAWQ's quant_config.json 64 (operator review: 128 was used silently, then 30
    shape errors named neither file). Compared as the config reads them; a skip list only when both give one."""
    _autoawq_checkpoint(tmp_path)  # quant_config.json: q_group_size 32
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}}))
    with pytest.raises(ConfigError, match=r"config\.json's 'quantization_config' gives group_size=128, .*"
                                          r"quant_config\.json gives group_size=32"):
        resolve_quant_config(checkpoint=tmp_path)
    # The same settings spelled each tool's way, one skip list: agreed.
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "GEMM",
        "modules_to_not_convert": ["proj_out"]}}))
    assert resolve_quant_config(checkpoint=tmp_path).modules_to_not_convert == ["proj_out"]
    (tmp_path / "quant_config.json").write_text(json.dumps({
        "zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM", "modules_to_not_convert": ["head"]}))
    with pytest.raises(ConfigError, match=r"gives modules_to_not_convert=\['proj_out'\], .* gives "
                                          r"modules_to_not_convert=\['head'\]"):
        resolve_quant_config(checkpoint=tmp_path)


@pytest.mark.parametrize("selection", ["FVQ_PLUGINS=int8", "FVQ_DISABLE_PLUGINS=unquantized"])
def test_none_resolves_with_the_unquantized_plugin_left_out(fresh_plugins, monkeypatch, tmp_path, selection) -> None:
    """Layers built with quant_config=None run the core's unquantized method whatever plugins load, so 'none' (and a
    checkpoint declaring 'unquantized') resolves too: it was "unknown quantization method 'unquantized'"."""
    var, value = selection.split("=")
    monkeypatch.setenv(var, value)
    plugins.reset()
    assert "unquantized" not in get_registry_names()
    save_file({"proj.weight": torch.randn(4, 8)}, str(tmp_path / "model.safetensors"))
    for cfg in (resolve_quant_config("none"), resolve_quant_config("unquantized")):
        assert cfg.get_name() == "unquantized"
        model = torch.nn.Module()
        model.proj = ReplicatedLinear(8, 4, bias=False, params_dtype=torch.float32, quant_config=cfg, prefix="proj")
        load_checkpoint(model, tmp_path)
        assert model.proj(torch.randn(2, 8))[0].shape == (2, 4)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "unquantized"}}))
    assert resolve_quant_config(checkpoint=tmp_path).get_name() == "unquantized"
    assert resolve_quant_config("none", checkpoint=tmp_path).get_name() == "unquantized"
    with pytest.raises(UnknownMethodError, match=r"unknown quantization method 'nope'"):
        resolve_quant_config("nope")


def get_registry_names() -> list[str]:
    from fastvideo_quant.plugins import get_registry

    return sorted(get_registry().by_name)


#: AutoGPTQ's quantize_config.json as it writes it (no quant_method before GPTQModel added one).
GPTQ_FILE = {"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": False, "static_groups": False,
             "sym": True, "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model"}


@pytest.mark.parametrize("flag", [None, "awq"])
def test_a_gptq_quantize_config_json_is_not_read_as_awq(tmp_path, flag) -> None:
    """AWQ reads quantize_config.json (AutoAWQ checkpoints use the name too); AutoGPTQ's has bits and group_size as
    well, and was taken for an AWQ one, then failed on its tensors in AWQ's words."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Toy"]}))
    (tmp_path / "quantize_config.json").write_text(json.dumps(GPTQ_FILE))
    with pytest.raises(ConfigError, match=r"quantize_config\.json has no 'quant_method' and is a GPTQ checkpoint's file "
                                          r"\(damp_percent, desc_act, static_groups, true_sequential: keys only "
                                          r"AutoGPTQ / GPTQModel write; .*no loaded plugin reads GPTQ checkpoints "
                                          r"\(AutoAWQ checkpoints use this file name too, so \['awq'\] read it"):
        resolve_quant_config(flag, checkpoint=tmp_path)
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128,
                                                               "checkpoint_format": "gptq_v2"}))
    with pytest.raises(ConfigError, match=r"is a GPTQ checkpoint's file \(checkpoint_format 'gptq_v2'"):
        resolve_quant_config(flag, checkpoint=tmp_path)
    # AutoAWQ's own keys in that file still select AWQ
    (tmp_path / "quantize_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 64, "w_bit": 4,
                                                               "version": "GEMM"}))
    cfg = resolve_quant_config(flag, checkpoint=tmp_path)
    assert cfg.get_name() == "awq" and cfg.group_size == 64


def test_a_diffusers_pipeline_root_names_the_model_folder_to_pass(tmp_path) -> None:
    """Its config.json are in the components' folders: the root declared nothing, so it resolved to None
    (unquantized) silently, and the load said only that there were no safetensors files."""
    root = tmp_path / "pipe"
    root.mkdir()
    _autoawq_checkpoint(root / "transformer")
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(root / "vae" / "diffusion_pytorch_model.safetensors"))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    hint = (r" \(a diffusers pipeline: its models are in sub-directories; {} one of them, e.g. "
            + repr(str(root / "transformer")) + r"; found \['transformer', 'vae'\]\)")
    for flag in (None, "awq", "fp8"):
        with pytest.raises(ConfigError, match=rf"checkpoint {str(root)!r} is the root of a diffusers pipeline, not a "
                                              rf"model's checkpoint{hint.format('pass')}"):
            resolve_quant_config(flag, checkpoint=root)
    model = torch.nn.ModuleDict({"proj": ReplicatedLinear(64, 32, bias=False, params_dtype=torch.float32)})
    from fastvideo_quant.errors import CheckpointError

    with pytest.raises(CheckpointError, match=rf"no \*\.safetensors files in {root}{hint.format('load')}"):
        load_checkpoint(model, root)
    assert resolve_quant_config(checkpoint=root / "transformer").get_name() == "awq"


def test_settings_conflicts_name_only_the_settings_that_differ(tmp_path) -> None:
    """fp8 writes its skip list under a second key (modules_to_not_convert, for transformers) only with block scales:
    a block config against a per-tensor one was reported as differing in modules_to_not_convert too ([] vs None),
    and, at load, a layer built skipping 'proj' against a checkpoint skipping 'proj' as differing in it."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8",
                                                                              "ignored_layers": ["proj"]}}))
    block = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128], "ignored_layers": ["proj"]}}
    with pytest.raises(ConfigError) as info:
        resolve_quant_config(checkpoint=tmp_path, hf_config=block)
    msg = str(info.value)
    assert "gives weight_block_size=[128, 128], " in msg and "gives weight_block_size=None;" in msg, msg
    assert "modules_to_not_convert" not in msg and "ignored_layers" not in msg, msg

    from fastvideo_quant.errors import CheckpointError

    per_tensor = resolve_quant_config(checkpoint=tmp_path)
    tensors = {f"a.{k}": v for k, v in per_tensor.quantize_weight(torch.randn(128, 128), prefix="a").items()}
    tensors["proj.weight"] = torch.randn(128, 128)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = resolve_quant_config(hf_config=block)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(128, 128, bias=False, params_dtype=torch.float32,
                                                     quant_config=config, prefix=n) for n in ("a", "proj")})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    line = str(info.value).splitlines()[1]
    assert line.strip().startswith("the checkpoint declares 'fp8' with weight_block_size=None ("), line
    assert "were built with weight_block_size=[128, 128], so their tensors differ" in line, line
    assert "modules_to_not_convert" not in line and "ignored_layers" not in line, line


def test_a_file_given_as_the_checkpoint_names_its_directory(tmp_path) -> None:
    """checkpoint= took only a directory, and said of config.json (or a .safetensors file) that the directory 'does not
    exist or is not a directory', though load_checkpoint takes a file."""
    (tmp_path / "config.json").write_text("{}")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).touch()
        with pytest.raises(ConfigError, match=rf"checkpoint '.*{name}' is a file; checkpoint= takes the checkpoint's "
                                              rf"directory, which holds config.json: checkpoint='{tmp_path}'"):
            resolve_quant_config(checkpoint=tmp_path / name)


def test_a_directory_holding_no_checkpoint_is_refused_not_taken_as_unquantized(tmp_path) -> None:
    """An empty directory (a wrong path: a model's folder one level off) resolved to None, unquantized, without a
    word (an operator's review); one holding weights only is a float checkpoint, as before."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=rf"checkpoint directory '{tmp_path}' holds no config.json, no quantization "
                                          r"method file and no weights file .*, so it is not a model's checkpoint"):
        resolve_quant_config(checkpoint=tmp_path)
    # (a method named by the flag or by hf_config: the directory need not say it)
    assert resolve_quant_config("fp8", checkpoint=tmp_path).get_name() == "fp8"
    given = {"quantization_config": {"quant_method": "fp8"}}
    assert resolve_quant_config(hf_config=given, checkpoint=tmp_path).get_name() == "fp8"
    for name in ("pytorch_model.bin", "model.safetensors.index.json"):  # (the loader says what is wrong with those)
        (tmp_path / name).write_text("{}")
        assert resolve_quant_config(checkpoint=tmp_path) is None
        (tmp_path / name).unlink()
    save_file({"proj.weight": torch.randn(4, 8)}, str(tmp_path / "model.safetensors"))
    assert resolve_quant_config(checkpoint=tmp_path) is None


def test_a_value_the_config_refuses_names_the_file_it_came_from(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8",
                                                                               "activation_scheme": "dynamc"}}))
    with pytest.raises(ConfigError) as info:
        resolve_quant_config(checkpoint=tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.json'}'s 'quantization_config': fp8 config: "
                                      "activation_scheme must be one of"), str(info.value)
    assert str(info.value).count("config.json") == 1
    with pytest.raises(ConfigError, match=r"^the given hf_config's 'quantization_config': AWQ config: group_size=96"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "awq", "group_size": 96}})


def test_a_load_option_the_config_refuses_is_not_blamed_on_the_file(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4,
                                                                               "group_size": 128, "zero_point": True,
                                                                               "version": "gemm"}}))
    with pytest.raises(ConfigError) as info:
        resolve_quant_config(checkpoint=tmp_path, load_options={"fp8_compute_min_m": -3})
    assert str(info.value).startswith(f"{tmp_path / 'config.json'}'s 'quantization_config' with load_options "
                                      "{'fp8_compute_min_m': -3}: AWQ config: fp8_compute_min_m"), str(info.value)
    with pytest.raises(ConfigError, match=r"^resolve_quant_config: load_options \['bits'\] are not load-time"):
        resolve_quant_config(checkpoint=tmp_path, load_options={"bits": 8})


def test_a_section_another_plugins_override_claims_is_not_misquoted() -> None:
    """quant_method 'legacy-ref', asked for as 'legacy-ref' (a method of that name is installed), but test_claiming's
    override claims such sections: the error quoted the file as saying 'test_claiming' (a vLLM method porter's
    review); it now quotes it and names the plugin whose override claims it."""

    class ExactConfig(W.RefV1Config):
        @classmethod
        def get_name(cls):
            return "legacy-ref"

    class ExactPlugin:
        @hookimpl
        def register_quantization_methods(self, register):
            register(ExactConfig, W.PackedRefV1Method)

    register_plugin(ExactPlugin(), name="exact")
    try:
        with pytest.raises(ConfigError) as err:
            resolve_quant_config("legacy-ref", hf_config={"quantization_config": {"quant_method": "legacy-ref"}})
    finally:
        unregister_plugin("exact")
    assert str(err.value) == (
        "quantization method 'legacy-ref' was asked for, and the given hf_config's 'quantization_config' says "
        "quant_method 'legacy-ref', but plugin 'sel' (in-process) claims such sections for 'test_claiming' "
        "(override_quantization_method), whatever is asked for, so 'legacy-ref' cannot read them here: pass "
        "'test_claiming', or leave out the plugin that claims them (FVQ_DISABLE_PLUGINS)"), str(err.value)


@pytest.mark.parametrize("where", ["hf_config", "checkpoint"])
def test_a_section_inside_a_sub_config_is_refused(tmp_path, where) -> None:
    """A multimodal config.json's text_config holding the quantization section (none at the top level) selected no
    method without a word, and the load later said the checkpoint declares none."""
    config = {"architectures": ["Toy"], "text_config": {"hidden_size": 64, "quantization_config": {
        "quant_method": "fp8", "activation_scheme": "dynamic"}}}
    kwargs = {"hf_config": config}
    if where == "checkpoint":
        (tmp_path / "config.json").write_text(json.dumps(config))
        kwargs = {"checkpoint": tmp_path}
    with pytest.raises(ConfigError, match=r"'text_config' holds a 'quantization_config' \(quant_method 'fp8'\), and "
                                          r"the top level holds none: a quantization section is read only at the top "
                                          r"level, so the model would load as unquantized.*Move it to the top level"):
        resolve_quant_config(**kwargs)
    # (the same method at both levels, as exports copy it, with a key more or less: the top level's is read)
    config["quantization_config"] = dict(config["text_config"]["quantization_config"])
    assert resolve_quant_config(hf_config=config).get_name() == "fp8"
    config["text_config"]["quantization_config"]["ignored_layers"] = None
    assert resolve_quant_config(hf_config=config).get_name() == "fp8"
    config["text_config"]["quantization_config"] = {}
    assert resolve_quant_config(hf_config=config).get_name() == "fp8"
    # (the top level's under compressed-tensors' older key counts as the top level's)
    compressed = {"compression_config": config.pop("quantization_config"),
                  "text_config": {"quantization_config": {"quant_method": "fp8"}}}
    assert resolve_quant_config(hf_config=compressed).get_name() == "fp8"
    # (another method inside: refused, naming both)
    config["quantization_config"] = {"quant_method": "fp8"}
    config["text_config"]["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    with pytest.raises(ConfigError, match=r"holds a 'quantization_config' \(quant_method 'awq'\), of another method "
                                          r"than the top level's \(quant_method 'fp8'\)"):
        resolve_quant_config(hf_config=config)


@pytest.mark.parametrize("name", ["NONE", "None", " none"])
def test_none_spelled_otherwise_is_named_as_such(name) -> None:
    """'NONE' got the list of methods and advice to install a plugin, with no word of 'none'."""
    with pytest.raises(UnknownMethodError, match=rf"{name!r} is 'none' spelled otherwise, which means no quantization: "
                                                 r"resolve_quant_config takes 'none' \(or None\)"):
        resolve_quant_config(name)


def test_none_where_a_method_must_quantize_says_what_none_means(tmp_path, capsys) -> None:
    from fastvideo_quant.cli import main

    assert main(["quantize", str(tmp_path), "--method", "none", "--out", str(tmp_path / "q")]) == 1
    err = capsys.readouterr().err
    assert "'none' means no quantization: resolve_quant_config takes 'none' (or None) for an unquantized model; where " \
           "a method is needed to quantize, name one of the available ones" in err, err
    assert "Install the plugin" not in err, err
