"""The fp8 GEMM: quantize activations, then ``torch._scaled_mm`` with the right scale layout (or, on CUDA at
mid M with dynamic activations, the core W8A8 Triton GEMM: ``TRITON_GEMM_MAX_M``).

Scale layouts ``torch._scaled_mm`` accepts (checked on torch 2.13 CPU and torch 2.11 CUDA):
tensor-wise (both scales one-element float32) or row-wise (``scale_a [M, 1]``, ``scale_b
[1, N]``, float32). On CUDA (sm_89+) ``mat2`` must be column-major, which is exactly the
``.t()`` view of the ``[out, in]`` row-major weight, so no transpose is ever materialised;
row-wise output must be bf16 there, so fp16/fp32 row-wise outputs go through an fp32
tensor-wise product and the scales are applied afterwards. CPU: torch 2.13 accepts both layouts,
torch 2.11 only one-element scales, so CPU row-wise always takes that fp32 route (fp8 products,
fp32 sums, the same numbers).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

from fastvideo_quant.errors import MethodUnavailableError
from fastvideo_quant.kernels import SMALL_M_MAX, W8A8_OUT_DTYPES, takes_small_m
from fvq_fp8.format import FP8_DTYPE
from fvq_fp8.kernels import ops

_CAPABILITY_OK: dict[int, bool] = {}

#: Largest M (tokens) that takes the one-launch W8A16 kernel on CUDA (``fastvideo_quant.kernels.small_m``; default
#: its tuned range, ``SMALL_M_MAX``). H100 (benchmarks/results/small-m-sweep_*.log):
#: 1.39-1.61x bf16 at M=16 (W8A8 eager 1.13-1.44x); at M=32 1.24-1.45x against W8A8's 0.99-1.44x eager (1.17-1.44x
#: GPU time: W8A8 is ahead on two shapes there, W16 has the better worst case); at M=64 it falls to ~1.1x.
#: ``FVQ_FP8_W8A16_MAX_M=0`` disables it.
W8A16_MAX_M = int(os.environ.get("FVQ_FP8_W8A16_MAX_M", str(SMALL_M_MAX)))

#: Largest M (tokens) whose dynamic per-token W8A8 product runs the core Triton GEMM
#: (``fastvideo_quant.kernels.w8a8_gemm``, scales and bias fused in its epilogue) on CUDA instead of row-wise
#: ``torch._scaled_mm``; it serves the M that the W8A16 kernel leaves. H100, 2026-11-25,
#: benchmarks/w8a8_gemm_sweep.py: at M=128 its GPU time equals or beats ``_scaled_mm`` (K x N 5120x5120: 21.2 vs
#: 23.7 µs; 13824x5120: 44.6 vs 48.9; the other two DiT shapes within 0.5 µs), and it is one direct launch where
#: ``_scaled_mm`` alone costs 31 µs of host per call (results/host-probe-m128_*): in the harness M=128 went from
#: 0.67-0.89x bf16 eager on three shapes to 1.24-1.45x on all four (results/fp8_*_run-b). M=256 is not measured:
#: the crossover lies between 128 and 1024. At M=1024 ``_scaled_mm`` is faster on the GPU, so
#: larger M keep it (as do static activation scales). ``FVQ_FP8_TRITON_GEMM_MAX_M=0`` disables it.
TRITON_GEMM_MAX_M = int(os.environ.get("FVQ_FP8_TRITON_GEMM_MAX_M", "256"))


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """The Triton entry points the eager CUDA paths call, imported once (not an import statement per call; not at
    module import either: CPU installs may lack Triton)."""
    from fastvideo_quant.kernels.small_m import small_m_linear
    from fastvideo_quant.kernels.w8a8_linear import w8a8_linear
    from fvq_fp8.kernels import act_quant_triton

    return SimpleNamespace(per_token_quant=act_quant_triton.per_token_quant, static_quant=act_quant_triton.static_quant,
                           small_m_linear=small_m_linear, w8a8_linear=w8a8_linear)


def require_fp8_gpu(device: torch.device) -> None:
    """MethodUnavailableError unless ``device`` has compute capability >= 8.9 (fp8 tensor cores)."""
    require_fp8_gpu_index(device.index if device.index is not None else torch.cuda.current_device())


def require_fp8_gpu_index(index: int) -> None:
    """:func:`require_fp8_gpu` for the CUDA device ``index`` (a dict lookup after the first call)."""
    if not _CAPABILITY_OK.get(index, False):
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY_OK[index] = (major, minor) >= (8, 9)
        if not _CAPABILITY_OK[index]:  # (raised on every call, not only the first)
            raise MethodUnavailableError(
                f"fp8: {torch.cuda.get_device_name(index)} has compute capability {major}.{minor}; float8 "
                "GEMMs (torch._scaled_mm) need >= 8.9 (Ada, Hopper). Use int8 or the unquantized method there"
            )


_UNITS: dict[torch.device, torch.Tensor] = {}


def _unit(device: torch.device) -> torch.Tensor:
    """A one-element float32 1.0 on ``device``, made once per device (not an allocation and a fill per call)."""
    one = _UNITS.get(device)
    if one is None:
        one = _UNITS[device] = torch.ones((), dtype=torch.float32, device=device)
    return one


def quantize_activation(x: torch.Tensor, input_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 ``x``, scale as ``[M, 1]`` for dynamic per-token or the one-element static scale)."""
    if x.is_cuda and not torch.compiler.is_compiling():
        # Eager: launch the Triton kernel directly; the custom-op wrapper costs host time that
        # dominates at small M. Under torch.compile the op keeps the graph whole.
        kernels = _cuda_kernels()
        if input_scale is None:
            return kernels.per_token_quant(x)
        return kernels.static_quant(x, input_scale), input_scale
    if input_scale is None:
        return ops.per_token_quant(x)
    return ops.static_quant(x, input_scale), input_scale


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """Small-M path: bf16/fp16 ``x`` times the fp8 weight widened in registers (one Triton launch).

    Activations are not quantized (a static ``input_scale`` is not used), as vLLM's Marlin fp8 path does.
    """
    if torch.compiler.is_compiling():
        return ops.w8a16_linear(x, weight, weight_scale_row, bias)
    return _cuda_kernels().small_m_linear(x, weight, weight_scale_row, bias)


def takes_triton_gemm(x: torch.Tensor, input_scale: torch.Tensor | None, use_fast_accum: bool) -> bool:
    """Whether ``x`` [M, K] runs the Triton W8A8 GEMM: CUDA, dynamic activations, M <= ``TRITON_GEMM_MAX_M``.

    Only with fast accumulation (Triton's fp8 dot on Hopper accumulates as ``use_fast_accum=True`` does).
    """
    return (x.shape[0] <= TRITON_GEMM_MAX_M and x.is_cuda and input_scale is None and use_fast_accum
            and x.dtype in W8A8_OUT_DTYPES)


def triton_w8a8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Per-token fp8 quantization of ``x`` and the core W8A8 Triton GEMM: eager calls go through
    ``fastvideo_quant.kernels.w8a8_linear`` (a cached launch plan per shape: host time is what eager mid-M calls are
    bound by), compiled code calls the two custom ops."""
    if torch.compiler.is_compiling():
        xq, x_scale = ops.per_token_quant(x)
        return ops.w8a8_gemm(xq, x_scale, weight, weight_scale_row, bias, out_dtype)
    return _cuda_kernels().w8a8_linear(x, FP8_DTYPE, weight, weight_scale_row, bias, out_dtype)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_row: torch.Tensor,
    weight_scale_scalar: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    use_fast_accum: bool = True,
) -> torch.Tensor:
    """``x [M, K] @ (weight * scale).T + bias`` with fp8 ``x``; output dtype ``x.dtype``.

    :param weight: float8_e4m3fn ``[N, K]`` row-major.
    :param weight_scale_row: float32 ``[1, N]`` (per output channel; per-shard scales expanded).
    :param weight_scale_scalar: float32 one-element scale when all channels share it, else None.
    :param input_scale: float32 one-element static activation scale, or None for dynamic per-token.
    """
    out_dtype = x.dtype
    if takes_small_m(x, out_dtype, W8A16_MAX_M):
        return w8a16_linear(x, weight, weight_scale_row, bias)
    if takes_triton_gemm(x, input_scale, use_fast_accum):
        return triton_w8a8_linear(x, weight, weight_scale_row, bias, out_dtype)
    xq, x_scale = quantize_activation(x, input_scale)
    if x_scale.numel() == 1 and weight_scale_scalar is not None:
        fused_bias = out_dtype != torch.float32  # _scaled_mm refuses a bias with float32 output
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale.reshape(()), scale_b=weight_scale_scalar,
                               bias=_bias(bias, out_dtype) if fused_bias else None, out_dtype=out_dtype,
                               use_fast_accum=use_fast_accum)
        return out if fused_bias or bias is None else out + bias.to(out_dtype)
    if x_scale.numel() == 1:
        x_scale = x_scale.reshape(1, 1).expand(x.shape[0], 1).contiguous()
    if x.is_cuda and out_dtype == torch.bfloat16:
        return torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale_row,
                                bias=_bias(bias, out_dtype), out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    # CPU (torch 2.11 CPU accepts only one-element scales; 2.13 also row-wise, same numbers) and
    # CUDA fp16/fp32: fp8 product summed in fp32 with unit scales, then the row and column scales.
    one = _unit(x.device)
    acc = torch._scaled_mm(xq, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                           use_fast_accum=use_fast_accum)
    acc = acc * x_scale * weight_scale_row
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)


def _bias(bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(out_dtype)


def fp8_block_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_cols: torch.Tensor,
    block_k: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Block-scaled W8A8: activations quantized per token and per ``block_k`` columns (DeepSeek-V3 style).

    One fp8 ``_scaled_mm`` per K block, each rescaled by its activation-group and weight-block
    scales and summed in fp32: exact block semantics, every product in fp8. Correct on CPU and
    CUDA; not a tuned GPU kernel (K/block_k launches).

    :param scale_cols: float32 ``[ceil(K/block_k), N]``: each K block's weight scale per output row.
    """
    xq, x_scale = ops.per_group_quant_ref(x, block_k)
    one = _unit(x.device)
    acc = torch.zeros(x.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    for kb in range(scale_cols.shape[0]):
        k0, k1 = kb * block_k, min((kb + 1) * block_k, x.shape[1])
        part = torch._scaled_mm(xq[:, k0:k1], weight[:, k0:k1].t(), scale_a=one, scale_b=one,
                                out_dtype=torch.float32)
        acc += part * x_scale[:, kb : kb + 1] * scale_cols[kb]
    if bias is not None:
        acc += bias.float()
    return acc.to(x.dtype)
