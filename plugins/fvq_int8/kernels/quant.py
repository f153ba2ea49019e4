"""Per-token (per-row) symmetric int8 quantization of activations: the core kernel with int8 output.

``q[m, k] = round(x[m, k] * 127 / absmax_m)`` and ``scale[m] = absmax_m / 127`` — bitsandbytes'
``int8_vectorwise_quant`` at threshold 0, with the scale stored already divided by 127 so the GEMM epilogue is
one multiply (``fastvideo_quant.kernels.per_token_quant``, shared with the fp8 plugin).
"""

from __future__ import annotations

import torch

from fastvideo_quant.kernels.per_token_quant import per_token_quant


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[M, K]`` and float32 scale ``[M]`` (= absmax / 127) of a 2-D float activation."""
    return per_token_quant(x, torch.int8, flat_scale=True)
