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
