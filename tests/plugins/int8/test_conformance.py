"""The int8 plugin through the shared conformance suite, as a third-party plugin would be checked."""

from int8_helpers import needs_triton

from fastvideo_quant.testing.conformance import ConformanceTests


class TestInt8Conformance(ConformanceTests):
    """Pre-quantized bitsandbytes checkpoint, threshold 0 (bitsandbytes CPU ops here)."""

    method = "int8"
    supports_torch_compile = True  # bitsandbytes' ops (CPU) / one custom op, fvq_int8::linear (Triton path)


@needs_triton
class TestInt8TritonConformance(ConformanceTests):
    """The Triton W8A8 kernels (interpreted on CPU) through the same suite."""

    method = "int8"
    supports_torch_compile = True  # bitsandbytes' ops (CPU) / one custom op, fvq_int8::linear (Triton path)
    config = {"fvq_backend": "triton"}
