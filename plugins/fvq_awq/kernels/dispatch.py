"""Pick the GPU path and block sizes by M and shape: GEMV, fused GEMM (``gemm`` or weights-left ``gemm_t``),
or de-quantize then cuBLAS.

Choices come from ``tuning.json`` beside this file, written by the H100 sweep
(``benchmarks/awq_sweep.py --tuning``): for each swept ``(K, N)`` and M bucket, the fastest
configuration after a correctness check. ``FVQ_AWQ_TUNING=<path>`` points at another table.
Shapes not in the table use the defaults below. Float32 activations always take the GEMV
(float32 math throughout); the fused GEMM needs a dot K-extent of at least 16.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from fvq_awq.kernels.common import blocks_per_step

_DEFAULT_TABLE = Path(__file__).with_name("tuning.json")
MS = (1, 4, 16, 64, 256, 1024, 4096)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {}


def choose(M: int, K: int, N: int) -> dict:
    """The configuration for an ``[M, K] x [K, N]`` product: ``{"kind": ..., **kernel kwargs}``."""
    return dict(_choose(M, K, N, os.environ.get("FVQ_AWQ_TUNING", str(_DEFAULT_TABLE))))


@functools.lru_cache(maxsize=256)
def _choose(M: int, K: int, N: int, path: str) -> dict:
    """Cached per shape: the eager M=1 call spends tens of µs on the host, so the lookup stays out of it."""
    table = _load(path)
    bucket = next((m for m in MS if m >= M), MS[-1])
    entry = table.get(f"{K}x{N}x{bucket}")
    if entry is not None:
        return dict(entry)
    if M <= 4:
        return {"kind": "gemv", "block_n": 8, "r": 4, "num_warps": 4, "num_stages": 3}
    if M <= 16:
        return {"kind": "gemm_t", "block_m": 16, "block_n": 64, "split_k": 2, "r": 1, "num_warps": 4, "num_stages": 3}
    if M <= 256:
        return {"kind": "gemm", "block_m": 64, "block_n": 128, "split_k": 1, "r": 1, "num_warps": 4, "num_stages": 3}
    return {"kind": "dequant", "block_n": 32, "r": 2}


def awq_linear_cuda(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                    layout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` on CUDA through the Triton kernels; ``x`` is ``[..., K]``."""
    from fvq_awq.kernels.gemm import awq_dequantize, awq_gemm, awq_gemm_t
    from fvq_awq.kernels.gemv import awq_gemv

    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    M, K, N = x2.shape[0], layout.in_features, layout.out_features
    cfg = choose(M, K, N)
    kind = cfg.pop("kind")
    if x.dtype == torch.float32:
        kind, cfg = "gemv", {}
    elif kind in ("gemm", "gemm_t") and blocks_per_step(layout, cfg.get("r", 1)) * layout.bk8 < 16:
        kind, cfg = ("gemv", {}) if M <= 16 else ("dequant", {})
    if kind == "gemv":
        out = awq_gemv(x2, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
    elif kind == "gemm":
        out = awq_gemm(x2, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
    elif kind == "gemm_t":
        out = awq_gemm_t(x2, qweight_k, zeros_k, scales_k, layout, bias, **cfg)
    else:
        w = awq_dequantize(qweight_k, zeros_k, scales_k, layout, x.dtype, **cfg)
        out = F.linear(x2, w, bias)
    return out.reshape(*lead, N)
