"""The int8 plugin through the shared conformance suite, as a third-party plugin would be checked."""

from int8_helpers import needs_triton

from fastvideo_quant.testing.conformance import ConformanceTests


class TestInt8Conformance(ConformanceTests):
    """Pre-quantized bitsandbytes checkpoint, threshold 0 (bitsandbytes CPU ops here)."""

    method = "int8"


@needs_triton
class TestInt8TritonConformance(ConformanceTests):
    """The Triton W8A8 kernels (interpreted on CPU) through the same suite."""

    method = "int8"
    config = {"fvq_backend": "triton"}
