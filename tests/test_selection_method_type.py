"""A quant_method that is not a string (``"quant_method": 8`` in config.json) is reported as such, not looked up as a
method named '8'."""

from __future__ import annotations

import json

import pytest

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.selection import resolve_quant_config


def test_a_numeric_quant_method_in_config_json_must_be_a_string(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": 8}}))
    with pytest.raises(ConfigError) as info:
        resolve_quant_config(checkpoint=tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'config.json'}'s 'quantization_config': 'quant_method' must be a string "
                           "naming the method, found int 8: write the method's name as a JSON string, one of ["), text
    assert "'fp8'" in text and "which no loaded plugin registers" not in text, text


def test_a_boolean_quant_method_in_hf_config_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"the given hf_config's 'quantization_config': 'quant_method' must be a "
                                          r"string naming the method, found bool True"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": True}})


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_quant_method_names_the_value_and_the_methods(tmp_path, value) -> None:
    """'quant_method': "" or null beside other keys said "has no 'quant_method'; found keys ['quant_method', ...]"."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": value, "bits": 4}}))
    with pytest.raises(ConfigError, match=rf"quantization config names no method: 'quant_method' is {value!r} \(keys "
                                          r"\['bits', 'quant_method'\]\); give the method's name, one of \[.*'awq'.*\]"):
        resolve_quant_config(checkpoint=tmp_path)
