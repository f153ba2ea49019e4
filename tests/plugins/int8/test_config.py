"""Int8Config: the Hugging Face bitsandbytes convention, our short name, refusals, and the missing-bnb path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fvq_int8 import Int8Config
from fvq_int8 import config as config_mod

from fastvideo_quant.errors import ConfigError, MethodUnavailableError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.plugins import get_registry
from fastvideo_quant.quantization.selection import QUANTIZATION_METHODS, resolve_quant_config

HF = {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0,
      "llm_int8_skip_modules": ["proj_out"]}


def test_hf_bitsandbytes_config_is_claimed_and_read():
    cfg = resolve_quant_config(hf_config={"quantization_config": HF})
    assert isinstance(cfg, Int8Config)
    assert (cfg.threshold, cfg.serialized, cfg.modules_to_not_convert) == (6.0, True, ["proj_out"])


def test_short_name_is_online_threshold_zero():
    cfg = resolve_quant_config("int8")
    assert (cfg.threshold, cfg.serialized) == (0.0, False)


def test_hf_default_threshold_is_six():
    assert Int8Config.from_config({"quant_method": "bitsandbytes", "load_in_8bit": True}).threshold == 6.0


def test_to_dict_round_trips_as_hf_config():
    d = Int8Config.from_config(HF).to_dict()
    assert d["quant_method"] == "bitsandbytes" and d["load_in_8bit"] and not d["load_in_4bit"]
    again = Int8Config.from_config(d)
    assert again.to_dict() == d and again.serialized


def test_4bit_is_refused_clearly():
    with pytest.raises(ConfigError, match="4-bit bnb .* not supported"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "bitsandbytes",
                                                                  "load_in_4bit": True}})


@pytest.mark.parametrize("bad, match", [
    ({"quant_method": "bitsandbytes"}, "load_in_8bit=true"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_has_fp16_weight": True}, "training"),
    ({"llm_int8_threshold": -1.0}, ">= 0"),
    ({"llm_int8_threshold": float("nan")}, r"llm_int8_threshold must be a number >= 0, found nan"),  # (loaded before)
    ({"fvq_backend": "cuda"}, "fvq_backend"),
    ({"fvq_backend": "triton", "llm_int8_threshold": 6.0}, "threshold 0 only"),
])
def test_bad_configs_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        Int8Config.from_config(bad)


def test_skipped_modules_are_unquantized():
    layer = ReplicatedLinear(32, 16, quant_config=Int8Config.from_config(HF), prefix="blocks.0.proj_out")
    assert layer.weight.dtype == torch.get_default_dtype()
    assert type(layer.quant_method).__name__ == "UnquantizedLinearMethod"


def test_missing_bitsandbytes_lists_unavailable_with_install_command(monkeypatch):
    monkeypatch.setattr(config_mod, "bitsandbytes_installed", lambda: False)
    assert "int8" in QUANTIZATION_METHODS and "int8" in get_registry().by_name  # still registered
    reason = Int8Config.unavailable_reason()
    assert "pip install 'bitsandbytes>=0.46'" in reason and 'pip install -e ".[int8]"' in reason
    assert "fastvideo-quant[int8]" not in reason  # not on PyPI: a registry install of the extra cannot work
    with pytest.raises(MethodUnavailableError, match=r"run: pip install 'bitsandbytes>=0\.46'"):
        resolve_quant_config("int8")
    with pytest.raises(MethodUnavailableError, match="bitsandbytes"):
        ReplicatedLinear(32, 16, quant_config=Int8Config(), prefix="x")


def test_hooks_and_config_do_not_import_bitsandbytes():
    code = ("import sys, fvq_int8.hooks, fvq_int8.config, fvq_int8.method; "
            "assert 'bitsandbytes' not in sys.modules, 'imported bitsandbytes'; "
            "assert 'triton' not in sys.modules, 'imported triton'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_triton_backend_without_triton_is_a_named_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with pytest.raises(MethodUnavailableError, match=r"fvq_backend 'triton' needs the triton package.*pip install"):
        Int8Config(backend="triton")
    Int8Config(backend="auto")  # auto falls back to bitsandbytes without triton


def test_auto_backend_is_decided_when_the_method_is_built_not_per_call(monkeypatch):
    """apply() must not look Triton up: torch.compile cannot trace importlib's find_spec (it failed on the H200)."""
    import importlib.util
    from types import SimpleNamespace

    from fvq_int8 import method as method_mod

    m = Int8Config(backend="auto").get_quant_method(ReplicatedLinear(8, 8, bias=False), prefix="x")
    method_mod.triton_available.cache_clear()

    def no_lookup(name, *a):
        raise AssertionError(f"find_spec({name!r}) called at apply time")

    monkeypatch.setattr(importlib.util, "find_spec", no_lookup)
    try:
        expect = "triton" if m._triton_ok else "bitsandbytes"
        assert m._backend(SimpleNamespace(is_cuda=True)) == expect
        assert m._backend(SimpleNamespace(is_cuda=False)) == "bitsandbytes"
    finally:
        monkeypatch.undo()
        method_mod.triton_available.cache_clear()


def test_load_in_8bit_is_read_for_the_short_name_too():
    assert Int8Config.from_config({"load_in_8bit": True}).to_dict()["load_in_8bit"] is True
    with pytest.raises(ConfigError, match=r"load_in_8bit=false.*8-bit"):
        Int8Config.from_config({"load_in_8bit": False})
    with pytest.raises(ConfigError, match="load_in_8bit must be true or false"):
        Int8Config.from_config({"load_in_8bit": "yes"})


def test_4bit_message_fits_an_option_and_a_checkpoint():
    with pytest.raises(ConfigError) as info:
        Int8Config.from_config({"load_in_4bit": True})
    assert "this checkpoint" not in str(info.value) and "load_in_4bit=true" in str(info.value)


@pytest.mark.parametrize("key", ["load_in_4bit", "llm_int8_has_fp16_weight", "fvq_serialized", "load_in_8bit"])
def test_a_boolean_written_as_a_string_is_refused_naming_what_was_found(key):
    """ "false" is truthy: read as a truth value it had turned 4-bit and training mode on ("load_in_4bit=true asks
    for 4-bit"), stating a value the config does not hold."""
    section = {**HF, key: "false"}
    with pytest.raises(ConfigError, match=rf"int8: {key} must be true or false \(a JSON boolean\), found str 'false'"):
        resolve_quant_config(hf_config={"quantization_config": section})


#: What transformers' BitsAndBytesConfig.to_dict() wrote before it wrote quant_method (and transformers still loads)
LEGACY = {"llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
          "llm_int8_threshold": 6.0, "load_in_8bit": True, "load_in_4bit": False}


@pytest.mark.parametrize("method", [None, "int8", "bitsandbytes"])
def test_a_bitsandbytes_section_without_quant_method_is_read_as_transformers_reads_it(method, tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": LEGACY}))
    cfg = resolve_quant_config(method, checkpoint=tmp_path)
    assert isinstance(cfg, Int8Config) and cfg.reads_quantized_checkpoint() and cfg.threshold == 6.0
    current = resolve_quant_config(hf_config={"quantization_config": {**LEGACY, "quant_method": "bitsandbytes"}})
    assert cfg.to_dict() == current.to_dict()


def test_a_4bit_section_without_quant_method_gets_the_4bit_refusal():
    with pytest.raises(ConfigError, match="load_in_4bit=true asks for 4-bit bnb"):
        resolve_quant_config(hf_config={"quantization_config": {**LEGACY, "load_in_8bit": False, "load_in_4bit": True,
                                                                 "bnb_4bit_quant_type": "nf4"}})


def test_a_section_without_quant_method_or_bitsandbytes_keys_still_names_no_method():
    with pytest.raises(ConfigError, match="names no method"):
        resolve_quant_config(hf_config={"quantization_config": {"load_in_8bit": False, "bits": 4}})
