"""AWQ's ``modules_to_not_convert`` means what AutoAWQ, vLLM, SGLang and transformers take it to mean: substrings of
module names. A checkpoint in the wild whose list holds a MoE router ``mlp.gate`` has ``mlp.gate_proj`` left in bf16
too (AutoAWQ's writer skipped it by the same rule), so our reader must build that layer unquantized."""

import pytest
from fvq_awq.config import AWQConfig

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, ReplicatedLinear


def _config(skip: list[str]) -> AWQConfig:
    return AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": skip})


def _method(skip: list[str], prefix: str, layer=None) -> str:
    layer = layer or ReplicatedLinear(64, 64, bias=False, quant_config=None)
    return type(_config(skip).get_quant_method(layer, prefix)).__name__


@pytest.mark.parametrize("prefix, skipped", [
    ("model.layers.0.mlp.gate", True),
    ("model.layers.0.mlp.gate_proj", True),  # a substring, as every AWQ reader and AutoAWQ's writer match it
    ("model.layers.0.mlp.up_proj", False),
    ("model.layers.0.self_attn.q_proj", False),
])
def test_entries_match_substrings(prefix, skipped):
    assert (_method(["mlp.gate"], prefix) == "UnquantizedLinearMethod") is skipped


def test_entry_inside_a_component():
    assert _method(["visual"], "model.visual_merger.proj") == "UnquantizedLinearMethod"
    assert _method(["visual"], "model.language_model.layers.0.mlp.down_proj") == "AWQLinearMethod"


def test_fused_layer_decided_by_its_checkpoint_modules():
    layer = MergedColumnParallelLinear(64, [64, 64], bias=False, quant_config=None)
    prefix = "model.layers.0.mlp.gate_up_proj"
    # "mlp.gate" is inside the fused name too, but the checkpoint holds gate_proj (skipped) and up_proj (quantized)
    for skip in (["mlp.gate"], ["gate_proj"]):
        with pytest.raises(ConfigError, match=r"names \['model.layers.0.mlp.gate_proj'\] and not "
                                             r"\['model.layers.0.mlp.up_proj'\]: one layer cannot be quantized "
                                             r"differently across its parts. Name all of them or none"):
            _config(skip).get_quant_method(layer, prefix)
    assert _method(["mlp"], prefix, layer) == "UnquantizedLinearMethod"
    assert _method(["gate_proj", "up_proj"], prefix, layer) == "UnquantizedLinearMethod"
    assert _method(["self_attn"], prefix, layer) == "AWQLinearMethod"
