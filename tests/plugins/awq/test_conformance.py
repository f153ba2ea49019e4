"""The AWQ plugin through the shared conformance suite, as a third-party plugin would be checked."""

from fastvideo_quant.testing.conformance import ConformanceTests


class TestAWQConformance(ConformanceTests):
    method = "awq"
    supports_torch_compile = True  # CPU: plain torch; CUDA: one custom op, fvq_awq::linear
    config = {"group_size": 32}  # 256 inputs: row shards at TP=2 keep whole groups


class TestAWQWholeInputGroupConformance(ConformanceTests):
    method = "awq"
    supports_torch_compile = True  # CPU: plain torch; CUDA: one custom op, fvq_awq::linear
    config = {"group_size": -1}
