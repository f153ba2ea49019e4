"""AWQ layers of compressed-tensors W4A16 checkpoints through the shared conformance suite: symmetric groups of 32
(llm-compressor's W4A16 at a group size whose row shards stay whole at TP=2) and asymmetric per-channel scales
(W4A16_ASYM, strategy channel). The suite writes the checkpoints with AWQConfig.quantize_weight (compressed-tensors'
tensors) and loads them with from_config(to_dict())."""

from fastvideo_quant.testing.conformance import ConformanceTests


def _section(symmetric: bool, strategy: str, group_size: int | None) -> dict:
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": strategy, "group_size": group_size,
               "dynamic": False, "actorder": None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None}}}


class TestCompressedTensorsW4A16Conformance(ConformanceTests):
    method = "awq"
    config = _section(True, "group", 32)
    weight_rel_error = 0.13  # measured 0.095 (symmetric round-to-nearest, groups of 32, 256 inputs, 4 seeds)


class TestCompressedTensorsW4A16AsymChannelConformance(ConformanceTests):
    method = "awq"
    config = _section(False, "channel", None)
