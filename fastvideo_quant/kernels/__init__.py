"""Kernel utilities shared by plugins (imported lazily; nothing here imports Triton at module load)."""

from __future__ import annotations

import torch

#: The largest M (tokens) the one-launch small-M kernel (``kernels/small_m.py``) is tuned for, and the plugins'
#: default threshold for it. Here, not in ``small_m``, so plugins can read it on installs without Triton.
SMALL_M_MAX = 32
#: Activation dtypes the small-M kernel takes (its output dtype is the input's).
SMALL_M_ACT_DTYPES = (torch.bfloat16, torch.float16)
#: Output dtypes of the W8A8 GEMM (``kernels/w8a8_gemm.py``), here so plugins can route on installs without Triton.
W8A8_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: Floor on an fp8 amax, so an all-zero row or tensor gets a finite, non-zero scale (vLLM uses 1e-12 too); the
#: per-token kernel (``per_token_quant``) and the fp8 plugin's references share it.
FP8_AMAX_EPS = 1e-12


def takes_small_m(x: torch.Tensor, out_dtype: torch.dtype, limit: int) -> bool:
    """Whether a plugin sends ``x`` [M, K] to the small-M kernel: CUDA, bf16/fp16 in and out, M <= ``limit``."""
    return x.shape[0] <= limit and x.is_cuda and x.dtype in SMALL_M_ACT_DTYPES and out_dtype == x.dtype
