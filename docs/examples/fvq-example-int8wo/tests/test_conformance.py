"""The plugin proves itself with fastvideo-quant's conformance suite: subclass it, name the method."""

from fastvideo_quant.testing.conformance import ConformanceTests


class TestExampleInt8WeightOnly(ConformanceTests):
    method = "example_int8wo"
    weight_rel_error = 0.02  # int8 per-channel rounding of a Gaussian weight: ~0.8% measured
