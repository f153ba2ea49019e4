"""A checkpoint's quantization section is read where it is and as it is spelled, or refused before any layer is built.

A key its method does not read that is a close match of one it reads (``llm_int8_treshold``), a section under a
misspelled config.json key (``quantisation_config``) and a section passed as the whole config are ConfigErrors;
keys of the formats real checkpoints are written in (transformers, AutoAWQ, vLLM, compressed-tensors) still load.
"""

from __future__ import annotations

import json

import pytest

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config
from fastvideo_quant.quantization.config_keys import keys_asked

# What transformers.BitsAndBytesConfig(load_in_8bit=True).to_dict() writes.
HF_BNB_8BIT = {
    "_load_in_4bit": False, "_load_in_8bit": True, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": False,
    "load_in_8bit": True, "quant_method": "bitsandbytes",
}
# transformers.AwqConfig(bits=4, group_size=128).to_dict().
HF_AWQ = {
    "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm", "backend": "autoawq",
    "do_fuse": False, "fuse_max_seq_len": None, "modules_to_fuse": None, "modules_to_not_convert": None,
    "exllama_config": None,
}
# AutoAWQ's quant_config.json.
AUTOAWQ = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM", "modules_to_not_convert": None}
# DeepSeek-V3 / transformers FineGrainedFP8Config.
FP8_BLOCK = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128],
             "modules_to_not_convert": None, "dequantize": False}
# llm-compressor FP8_DYNAMIC (compressed-tensors 0.9).
CT_FP8 = {
    "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
    "global_compression_ratio": 1.2, "kv_cache_scheme": None, "sparsity_config": {}, "version": "0.9.0",
    "ignore": ["lm_head"], "transform_config": None,
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False, "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True, "symmetric": True},
    }},
}


def _checkpoint(tmp_path, config=None, **files):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return tmp_path


@pytest.mark.parametrize(("section", "method"), [
    (HF_BNB_8BIT, "int8"), (HF_AWQ, "awq"), (FP8_BLOCK, "fp8"), (CT_FP8, "fp8"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "written_by": "mytool 1.2"}, "fp8"),
])
def test_real_checkpoint_sections_still_load(section, method) -> None:
    config = resolve_quant_config(hf_config={"model_type": "llama", "quantization_config": section})
    assert config.get_name() == method


def test_autoawq_quant_config_json_still_loads(tmp_path) -> None:
    assert resolve_quant_config(checkpoint=_checkpoint(tmp_path, quant_config=AUTOAWQ)).group_size == 128


def test_misspelled_int8_threshold_is_refused_not_defaulted_to_6() -> None:
    section = {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_treshold": 0.0}
    with pytest.raises(ConfigError) as info:
        resolve_quant_config(hf_config={"quantization_config": section})
    text = str(info.value)
    assert text.startswith("the given hf_config's 'quantization_config': key llm_int8_treshold=0.0: Int8Config.from_config "
                           "of method 'int8'")
    assert "does not read 'llm_int8_treshold', so it would be ignored" in text
    assert "(did you mean 'llm_int8_threshold'?)" in text


def test_misspelled_fp8_key_in_checkpoint_config_json_names_the_file(tmp_path) -> None:
    ckpt = _checkpoint(tmp_path, {"quantization_config": {"quant_method": "fp8", "activaton_scheme": "static"}})
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'config.json'}'s 'quantization_config': key "
                                          r"activaton_scheme=\"static\": Fp8Config.from_config of method 'fp8'.*"
                                          r"did you mean 'activation_scheme'\?"):
        resolve_quant_config(checkpoint=ckpt)


def test_misspelled_key_in_autoawq_file_names_the_file(tmp_path) -> None:
    ckpt = _checkpoint(tmp_path, quant_config={**AUTOAWQ, "q_group_sise": 64})
    with pytest.raises(ConfigError, match=r"quant_config.json: key q_group_sise=64: AWQConfig.*did you mean 'q_group_size'"):
        resolve_quant_config(checkpoint=ckpt)


@pytest.mark.parametrize(("method", "section", "key", "meant"), [
    ("awq", {"quant_method": "awq", "Group_Size": 64}, "Group_Size", "group_size"),
    ("int8", {"quant_method": "int8", "fvq_serialised": True}, "fvq_serialised", "fvq_serialized"),
    ("fp8", {"quant_method": "fp8", "weight_block_sizes": [128, 128]}, "weight_block_sizes", "weight_block_size"),
])
def test_case_plural_and_british_spellings_are_refused(method, section, key, meant) -> None:
    with pytest.raises(ConfigError, match=rf"key {key}=.*did you mean '{meant}'"):
        resolve_quant_config(hf_config={"quantization_config": section})


def test_keys_of_other_conventions_are_accepted() -> None:
    # Less close than a typo to 'bits' / 'version' (0.67): another tool's keys, not misspellings.
    section = {"quant_method": "awq", "num_bits": 4, "format_version": "1"}
    assert resolve_quant_config(hf_config={"quantization_config": section}).group_size == 128


def test_misspelling_that_makes_from_config_refuse_is_named() -> None:
    # from_config's own refusal ("must set load_in_8bit=true") would hide the cause.
    with pytest.raises(ConfigError, match=r"key load_in_8bt=true: .*did you mean 'load_in_8bit'"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bt": True}})


@pytest.mark.parametrize(("key", "section"), [
    ("quantisation_config", {"quant_method": "fp8"}),
    ("quantization_cfg", {"bits": 4, "group_size": 128}),
    ("quantization_configs", {"quant_method": "awq"}),
    ("quant_config", {"quant_method": "awq", "bits": 4}),
])
def test_misspelled_section_key_is_refused(tmp_path, key, section) -> None:
    ckpt = _checkpoint(tmp_path, {"model_type": "llama", key: section})
    with pytest.raises(ConfigError, match=rf"config.json has a key '{key}', which .*would load as unquantized; "
                                          r"did you mean 'quantization_config'\?"):
        resolve_quant_config(checkpoint=ckpt)


def test_compression_config_misspelled_suggests_it() -> None:
    with pytest.raises(ConfigError, match=r"hf_config has a key 'compress_config'.*did you mean 'compression_config'\?"):
        resolve_quant_config(hf_config={"compress_config": CT_FP8})


def test_other_sub_configs_are_not_taken_for_a_section(tmp_path) -> None:
    config = {"text_config": {"hidden_size": 8}, "vision_config": {}, "generation_config": {"do_sample": False},
              "attention_config": {"heads": 2}, "action_config": None, "quantization_config": None}
    assert resolve_quant_config(checkpoint=_checkpoint(tmp_path, config)) is None


def test_section_passed_as_the_whole_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^hf_config has a top-level 'quant_method' \('fp8'\): that is a quantization "
                                          r"section, not a whole config.json.*under 'quantization_config' "
                                          r"\(hf_config=\{'quantization_config': \{'quant_method': 'fp8', \.\.\.\}\}\); a "
                                          r"method's name alone would build its default config"):
        resolve_quant_config(hf_config={"quant_method": "fp8"})


def test_null_section_means_unquantized_and_empty_one_is_refused() -> None:
    assert resolve_quant_config(hf_config={"quantization_config": None}) is None
    with pytest.raises(ConfigError, match=r"'quantization_config': quantization config is empty \(\{\}\): give its "
                                          r"'quant_method', or make it null"):
        resolve_quant_config(hf_config={"quantization_config": {}})


@pytest.mark.parametrize("method", ["int8", "fp8", "awq"])
def test_declared_unread_keys_are_not_keys_the_config_reads(method) -> None:
    cls = get_quantization_config(method)
    assert not cls.unread_checkpoint_keys & keys_asked(cls, {})


def test_config_json_with_the_section_at_top_level_is_refused(tmp_path) -> None:
    ckpt = _checkpoint(tmp_path, {"model_type": "llama", "quant_method": "awq", "bits": 4, "group_size": 128})
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'config.json'} has a top-level 'quant_method' \('awq'\): .*"
                                          r"move the quantization keys into a 'quantization_config' object"):
        resolve_quant_config(checkpoint=ckpt)


@pytest.mark.parametrize("fmt", ["e5m2", "E5M2", "fp8"])
def test_an_fp8_section_with_another_fmt_is_refused(fmt) -> None:
    """fmt is not read for the weights (float8_e4m3fn always): a section saying another format would load wrong."""
    from fvq_fp8 import Fp8Config

    with pytest.raises(ConfigError, match=rf"fp8 config: fmt='{fmt}' is not supported; expected 'e4m3'"):
        Fp8Config.from_config({**FP8_BLOCK, "fmt": fmt})
    assert tuple(Fp8Config.from_config({**FP8_BLOCK, "fmt": "E4M3"}).weight_block_size) == (128, 128)


@pytest.mark.parametrize("key", ["exclude_modules", "skip_modules", "ignore"])
def test_a_skip_list_under_a_key_the_method_does_not_read_is_refused(key) -> None:
    """ModelOpt's exclude_modules in an fp8 section was dropped silently: proj_out would be built fp8."""
    section = {"quant_method": "fp8", "activation_scheme": "static", key: ["proj_out"]}
    with pytest.raises(ConfigError, match=rf"key '{key}' holds a skip list \(\['proj_out'\]: .*does not read: the "
                                          r"modules it names would be built quantized. Move its entries to a key this "
                                          r"config reads \(ignored_layers, modules_to_not_convert\)"):
        resolve_quant_config(hf_config={"quantization_config": section})


def test_an_empty_unread_skip_list_is_accepted() -> None:
    assert resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8", "exclude_modules": []}})
