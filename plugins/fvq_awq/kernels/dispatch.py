"""Pick the GPU path by M: GEMV (M <= 4), fused GEMM (M <= 256), else de-quantize then cuBLAS.

The thresholds and block sizes come from the H100 sweep in ``benchmarks/awq_sweep.py``
(see docs/methods/awq.md). Float32 activations always take the GEMV (exact float32 math).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GEMV_MAX_M = 4
FUSED_MAX_M = 256


def _gemm_blocks(M: int, N: int) -> dict:
    block_m = 16 if M <= 16 else (32 if M <= 32 else 64)
    return {"block_m": block_m, "block_n": 64, "split_k": 1, "num_warps": 4, "num_stages": 3}


def awq_linear_cuda(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                    layout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` on CUDA through the Triton kernels; ``x`` is ``[..., K]``."""
    from fvq_awq.kernels.gemm import awq_dequantize, awq_gemm
    from fvq_awq.kernels.gemv import awq_gemv

    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    M, N = x2.shape[0], layout.out_features
    if M <= GEMV_MAX_M or x.dtype == torch.float32:
        out = awq_gemv(x2, qweight_k, zeros_k, scales_k, layout, bias)
    elif M <= FUSED_MAX_M:
        out = awq_gemm(x2, qweight_k, zeros_k, scales_k, layout, bias, **_gemm_blocks(M, N))
    else:
        w = awq_dequantize(qweight_k, zeros_k, scales_k, layout, x.dtype)
        out = F.linear(x2, w, bias)
    return out.reshape(*lead, N)
