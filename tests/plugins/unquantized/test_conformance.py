"""The built-in unquantized method, checked by the conformance suite exactly as a third-party plugin would be."""

from fastvideo_quant.testing.conformance import ConformanceTests


class TestUnquantizedConformance(ConformanceTests):
    method = "unquantized"
