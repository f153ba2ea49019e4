"""Triton kernels of the int8 plugin: per-token activation quantization and the int8 GEMM.

Imported lazily (only when the Triton path runs), so CPU installs without
Triton never touch them. Under ``TRITON_INTERPRET=1`` they run on CPU tensors.
"""

from fvq_int8.kernels.gemm import int8_gemm_dequant
from fvq_int8.kernels.quant import quantize_per_token

__all__ = ["int8_gemm_dequant", "int8_linear", "quantize_per_token"]


def int8_linear(x, weight, weight_scale, bias, out_dtype):
    """``x @ dequant(weight).T + bias`` with ``x`` quantized per token: two kernels, no int32 round trip."""
    xq, x_scale = quantize_per_token(x)
    return int8_gemm_dequant(xq, x_scale, weight, weight_scale, bias, out_dtype)
