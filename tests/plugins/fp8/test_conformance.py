"""The fp8 plugin through the shared conformance suite, as a third-party plugin would be checked."""

from fastvideo_quant.testing.conformance import ConformanceTests


class TestFp8OnlineConformance(ConformanceTests):
    method = "fp8"  # from_config({}): online quantization of float checkpoints


class TestFp8ChannelConformance(ConformanceTests):
    method = "fp8"
    config = {"quant_method": "fp8", "weight_scale_strategy": "channel"}


class TestFp8BlockConformance(ConformanceTests):
    method = "fp8"
    config = {"quant_method": "fp8", "weight_block_size": [16, 32]}  # TP=2 kv shards are 16 rows: bn must divide 16


class TestFp8CompressedTensorsBlockConformance(ConformanceTests):
    """llm-compressor's FP8_BLOCK layout: block scales named weight_scale (compressed-tensors), dynamic activations."""

    method = "fp8"
    config = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [16, 32],
                    "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 32,
                              "dynamic": True}}}}


class TestFp8StaticConformance(ConformanceTests):
    """Static per-tensor activation scales: the suite quantizes with calibration activations, a different range for
    each part of a fused layer (whose one input scale must be the parts' largest)."""

    method = "fp8"
    config = {"quant_method": "fp8", "activation_scheme": "static"}
