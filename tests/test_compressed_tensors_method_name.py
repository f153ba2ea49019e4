"""``'compressed-tensors'`` as the method name, as vLLM's ``--quantization compressed-tensors`` takes it: the checkpoint
format, whose section's config groups choose the method. (Was: "unknown quantization method 'compressed-tensors'", while
a misplaced section's error advised passing exactly that name.)"""

from __future__ import annotations

import pytest

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization import resolve_quant_config

ARGS = {"num_bits": 8, "type": "float", "symmetric": True}
FP8_CT = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"], "config_groups": {
    "g0": {"targets": ["Linear"], "weights": {**ARGS, "strategy": "channel", "dynamic": False},
           "input_activations": {**ARGS, "strategy": "token", "dynamic": True}}}}
W4A16_CT = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {
    "g0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                              "group_size": 128}}}}


@pytest.mark.parametrize(("section", "method"), [(FP8_CT, "fp8"), (W4A16_CT, "awq")])
def test_the_format_name_loads_what_the_section_chooses(section, method):
    hf = {"quantization_config": section}
    named = resolve_quant_config("compressed-tensors", hf_config=hf)
    chosen = resolve_quant_config(hf_config=hf)
    assert named.get_name() == chosen.get_name() == method
    assert named.to_dict() == chosen.to_dict() and named.reads_quantized_checkpoint()


def test_the_format_name_over_another_format_is_refused():
    with pytest.raises(ConfigError, match=r"quantization method 'compressed-tensors' was asked for .*, but the given "
                                          r"hf_config.* declares 'fp8' in that method's own format \(quant_method 'fp8'\); "
                                          r"drop the flag or pass 'fp8'"):
        resolve_quant_config("compressed-tensors", hf_config={"quantization_config": {"quant_method": "fp8"}})


def test_the_format_name_without_a_checkpoint_section_says_what_it_needs(tmp_path):
    with pytest.raises(ConfigError, match=r"'compressed-tensors' names a checkpoint format, not a method: .* no "
                                          r"checkpoint config was given\. Pass the checkpoint"):
        resolve_quant_config("compressed-tensors")
    with pytest.raises(ConfigError, match=r"the given hf_config has no quantization section\. Pass the checkpoint"):
        resolve_quant_config("compressed-tensors", hf_config={"architectures": ["DiT"]})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"checkpoint '{tmp_path}' has no quantization config\. Pass the checkpoint"):
        resolve_quant_config("compressed-tensors", checkpoint=tmp_path)


def test_a_section_passed_as_the_whole_config_is_not_told_to_pass_its_name():
    """Its method's name alone builds the default (online) config, which a serialized checkpoint does not fit."""
    with pytest.raises(ConfigError) as err:
        resolve_quant_config(hf_config=FP8_CT)
    assert "resolve_quant_config('compressed-tensors')" not in str(err.value)
    assert "hf_config={'quantization_config': {'quant_method': 'compressed-tensors', ...}}" in str(err.value)
