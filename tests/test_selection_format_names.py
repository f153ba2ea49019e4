"""A checkpoint format's name as the method (vLLM's ``--quantization bitsandbytes``): accepted where a registered
config claims checkpoints declaring that ``quant_method`` (int8 claims 'bitsandbytes', the name ``fvq quantize --method
int8`` writes), derived from the plugins' ``override_quantization_method``, as 'compressed-tensors' is. (Was: "unknown
quantization method 'bitsandbytes'".)"""

from __future__ import annotations

import json

import pytest
import torch
import toy_method
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.errors import ConfigError, UnknownMethodError
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config
from fastvideo_quant.quantization.selection import format_readers

BNB = {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0}


def _checkpoint(tmp_path, section) -> str:
    save_file({"a.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    return str(tmp_path)


def test_bitsandbytes_is_read_by_int8() -> None:
    assert format_readers("bitsandbytes") == ["int8"]
    assert format_readers("nosuchformat") == []


def test_bitsandbytes_loads_a_checkpoint_declaring_it(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")  # (int8 builds only where it is installed)
    ckpt = _checkpoint(tmp_path, BNB)
    config = resolve_quant_config("bitsandbytes", checkpoint=ckpt)
    assert config.get_name() == "int8"
    assert config.to_dict() == resolve_quant_config(checkpoint=ckpt).to_dict()
    assert resolve_quant_config("bitsandbytes", hf_config={"quantization_config": BNB}).get_name() == "int8"


def test_bitsandbytes_over_another_format_names_both(tmp_path) -> None:
    ckpt = _checkpoint(tmp_path, {"quant_method": "fp8", "activation_scheme": "dynamic"})
    with pytest.raises(ConfigError, match=r"quantization method 'bitsandbytes' was asked for \(a checkpoint format: a "
                                          r"section declaring it loads with method 'int8'\), but .*config\.json's "
                                          r"'quantization_config' declares 'fp8'.*drop the flag or pass 'fp8'"):
        resolve_quant_config("bitsandbytes", checkpoint=ckpt)


def test_bitsandbytes_alone_names_the_method_to_quantize_on_load() -> None:
    with pytest.raises(ConfigError, match=r"'bitsandbytes' names a checkpoint format, not a method: a section declaring "
                                          r"it loads with method 'int8', and no checkpoint config was given.*"
                                          r"resolve_quant_config\('int8'\)"):
        resolve_quant_config("bitsandbytes")


def test_the_format_name_where_a_method_is_needed_names_its_reader() -> None:
    """...and only that: no plugin is missing, so the usual closing advice to install one is left out."""
    with pytest.raises(UnknownMethodError, match=r"checkpoints declaring quant_method 'bitsandbytes' load with method "
                                                 r"'int8', so pass 'int8'$"):
        get_quantization_config("bitsandbytes")


class ClaimingConfig(toy_method.ToyConfig):
    """A third party's method that reads checkpoints its tool writes as quant_method 'mytool'."""

    @classmethod
    def get_name(cls) -> str:
        return "toy-claims"

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant):
        return cls.get_name() if hf_quant_cfg.get("quant_method") == "mytool" else None


class ClaimingPlugin:
    @plugins.hookimpl
    def register_quantization_methods(self, register) -> None:
        register(ClaimingConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)


def test_a_third_partys_format_name_is_accepted_the_same_way(fresh_plugins, tmp_path) -> None:
    plugins.register_plugin(ClaimingPlugin(), name="toy-claims")
    fresh_plugins.append("toy-claims")
    ckpt = _checkpoint(tmp_path, {"quant_method": "mytool"})
    assert resolve_quant_config("mytool", checkpoint=ckpt).get_name() == "toy-claims"
