"""A plugin's from_config that raises something other than our errors (a KeyError on a key it expects) is that
plugin's PluginError, naming the config class, the plugin, the exception and where it was raised, at every place a
config is built (selection, fvq quantize); a ConfigError it raises passes through as it is."""

from __future__ import annotations

import pytest
import torch
import toy_method
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.errors import ConfigError, PluginError
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint


class StrictConfig(toy_method.ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-strict"

    @classmethod
    def from_config(cls, config):
        if config.get("bits") == "x":
            raise ConfigError("toy-strict: bits must be an int")
        config["group_size"]  # the bug: a key read without a default  # noqa: B018
        return super().from_config(config)


class Plugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(StrictConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)


@pytest.fixture(autouse=True, scope="module")
def registered():
    plugins.register_plugin(Plugin(), name="toy-strict")
    yield
    plugins.unregister_plugin("toy-strict")


def _expected() -> str:
    return (f"StrictConfig.from_config of method 'toy-strict' of plugin 'toy-strict' (in-process) raised KeyError: "
            f"'group_size' (at {__file__}:")


def test_selection_names_the_plugin() -> None:
    with pytest.raises(PluginError) as info:
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "toy-strict"}})
    assert str(info.value).startswith(_expected()), str(info.value)
    assert "keys ['quant_method']" in str(info.value), str(info.value)
    assert "should raise fastvideo_quant.errors.ConfigError" in str(info.value)


def test_fvq_quantize_names_the_plugin(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    save_file({"l.weight": torch.randn(8, 16)}, str(src / "model.safetensors"))
    with pytest.raises(PluginError, match=r"StrictConfig.from_config of method 'toy-strict' .* raised KeyError"):
        quantize_checkpoint(src, tmp_path / "out", "toy-strict")


def test_a_config_error_passes_through() -> None:
    with pytest.raises(ConfigError, match="toy-strict: bits must be an int"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "toy-strict", "bits": "x"}})
