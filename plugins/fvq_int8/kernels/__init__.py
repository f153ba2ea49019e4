"""Triton compute of the int8 plugin: per-token activation quantization, and the routing to the core kernels
(``fastvideo_quant.kernels``: the small-M W8A16 kernel, the W8A8 GEMM shared with fp8).

Imported lazily (only when the Triton path runs), so CPU installs without
Triton never touch them. Under ``TRITON_INTERPRET=1`` they run on CPU tensors.
"""

import os

import torch

from fastvideo_quant.kernels import SMALL_M_MAX, takes_small_m
from fastvideo_quant.kernels.w8_small_m_cuda import linear as w8a16_linear
from fastvideo_quant.kernels.w8a8_linear import w8a8_linear
from fvq_int8.kernels.quant import quantize_per_token

__all__ = ["W8A16_MAX_M", "int8_linear", "quantize_per_token"]

#: Largest M (tokens) that takes a one-launch W8A16 kernel on CUDA (int8 weights widened to bf16/fp16 in registers,
#: activations not quantized): the CUDA C++ one (``fastvideo_quant.kernels.w8_small_m_cuda``) at M <= 16 where its
#: rule picks a tile, else the Triton one (``fastvideo_quant.kernels.small_m``). H100
#: (benchmarks/results/small-m-sweep_*.json): 1.31-1.61x bf16 at M<=32 on the four DiT shapes, where the
#: two-launch W8A8 path is host-bound (0.44-1.32x eager). ``FVQ_INT8_W8A16_MAX_M=0`` disables it.
W8A16_MAX_M = int(os.environ.get("FVQ_INT8_W8A16_MAX_M", str(SMALL_M_MAX)))


def int8_linear(x, weight, weight_scale, bias, out_dtype):
    """``x @ dequant(weight).T + bias``: W8A16 at small M on CUDA, else ``x`` quantized per token (two kernels,
    no int32 round trip; ``quantize_per_token``'s arithmetic)."""
    if takes_small_m(x, out_dtype, W8A16_MAX_M):
        return w8a16_linear(x, weight, weight_scale, bias)
    # quantize_per_token's kernel, then the GEMM, through a launch plan cached per shape (host time at mid M)
    return w8a8_linear(x, torch.int8, weight, weight_scale, bias, out_dtype)
