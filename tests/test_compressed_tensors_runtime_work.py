"""compressed-tensors sections whose tensors compute right only with work at run time that our layers do not do —
online rotations (QuIP, SpinQuant R4), sparse-compressed weights — are refused by every plugin reading
compressed-tensors, naming the field; rotations fused into the weights (weight_input / weight_output) are read.
(Was: accepted as an unread key; the layers computed x (W H)^T for x W^T, with no error.)"""

from __future__ import annotations

import copy

import pytest

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization import resolve_quant_config


def _args(**kw) -> dict:
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False, **kw}


FP8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
       "config_groups": {"group_0": {"targets": ["Linear"], "weights": _args(),
                                     "input_activations": _args(strategy="token", dynamic=True)}}}
W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
         "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                       "weights": _args(num_bits=4, type="int", strategy="group", group_size=128)}}}
# QuIP's default: rotation u fused into the weights' output side, v applied online to the inputs (llm-compressor
# QuIPModifier; compressed-tensors TransformArgs)
QUIP = {"config_groups": {
    "u": {"type": "hadamard", "apply": [{"targets": ["Linear"], "location": "weight_output", "inverse": False}]},
    "v": {"type": "hadamard", "apply": [{"targets": ["Linear"], "location": "input", "inverse": False},
                                        {"targets": ["Linear"], "location": "weight_input", "inverse": True}]}}}
OFFLINE = {"config_groups": {  # SpinQuant R1 / R2: both sides fused into the weights
    "R1": {"type": "hadamard", "apply": [{"targets": ["re:.*o_proj$"], "location": "weight_output"},
                                         {"targets": ["re:.*q_proj$"], "location": "weight_input", "inverse": True}]}}}


def _with(section: dict, **extra) -> dict:
    return {**copy.deepcopy(section), **extra}


@pytest.mark.parametrize("section, method", [(FP8, "fp8"), (W4A16, "awq")])
def test_online_rotations_are_refused_naming_the_group_and_location(section, method):
    with pytest.raises(ConfigError, match=r"transform_config.config_groups.v.apply\[0\] has location 'input', an online "
                                          rf"transform .* which {method} does not apply"):
        resolve_quant_config(hf_config={"quantization_config": _with(section, transform_config=QUIP)})


@pytest.mark.parametrize("section, method", [(FP8, "fp8"), (W4A16, "awq")])
def test_rotations_fused_into_the_weights_and_empty_sections_are_read(section, method):
    for extra in ({"transform_config": OFFLINE}, {"transform_config": {}}, {"sparsity_config": {}},
                  {"sparsity_config": {"format": "dense"}}):
        assert resolve_quant_config(hf_config={"quantization_config": _with(section, **extra)}).get_name() == method


@pytest.mark.parametrize("section, method", [(FP8, "fp8"), (W4A16, "awq")])
def test_sparse_compressed_weights_and_unreadable_transforms_are_refused(section, method):
    sparse = _with(section, sparsity_config={"format": "sparse-24-bitmask", "targets": ["Linear"]})
    with pytest.raises(ConfigError, match=rf"sparsity_config format 'sparse-24-bitmask': .* which {method} does not read"):
        resolve_quant_config(hf_config={"quantization_config": sparse})
    odd = _with(section, transform_config={"v": [1]})
    with pytest.raises(ConfigError, match=rf"transform_config .* has no config_groups object, so {method} cannot tell"):
        resolve_quant_config(hf_config={"quantization_config": odd})


def test_awq_asked_for_by_name_explains_a_w4a16_section_it_cannot_read():
    """(Was: "the given hf_config's 'quantization_config' says the checkpoint is quantized with 'fp8'; drop the flag
    or pass 'fp8'" — and fp8 cannot read it either.)"""
    naive = _with(W4A16, format="naive-quantized")
    with pytest.raises(ConfigError, match=r"format 'naive-quantized' of the section: awq reads 'pack-quantized'"):
        resolve_quant_config("awq", hf_config={"quantization_config": naive})
    with pytest.raises(ConfigError, match=r"quantized with 'fp8'"):  # (an fp8 section stays fp8's)
        resolve_quant_config("awq", hf_config={"quantization_config": FP8})
