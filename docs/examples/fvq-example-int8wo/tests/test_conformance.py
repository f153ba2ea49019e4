"""The plugin proves itself with fastvideo-quant's conformance suite: subclass it, name the method."""

from fastvideo_quant.testing.conformance import ConformanceTests


class TestExampleInt8WeightOnly(ConformanceTests):
    method = "example_int8wo"
    # The weight-fidelity bound is declared on the config (Int8WeightOnlyConfig.weight_rel_error = 0.0125, which
    # `fvq check` uses); a suite class may set a tighter one for its own run. int8 per-channel rounding of the
    # suite's Gaussian weights measures 0.0069-0.0071 on every layer class.
    weight_rel_error = 0.01
