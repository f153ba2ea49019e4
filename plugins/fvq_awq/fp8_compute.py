"""AWQ int4 weights multiplied in fp8 at large M: the opt-in ``fp8_compute`` route (W4A8).

At large M the exact GPU path de-quantizes the whole int4 weight to bf16 (2 bytes a weight written, then read by
cuBLAS) and runs a bf16 GEMM: 0.93-0.97x bf16 at M=4096 on an H100, 0.72-0.77x at M=1024. With
``AWQConfig(fp8_compute=True)`` calls of ``fp8_compute_min_m`` rows or more instead

1. convert the int4 weight to float8 e4m3 ``[N, K]`` (one Triton launch, 1 byte a weight written): each output row's
   de-quantized values ``(q - z) * s`` times ``1 / t[n]``, clamped to ±448, with ``t[n] = max_k |W[n, k]| / 448``
   computed once, when the weights are processed (:func:`channel_scales`);
2. quantize the activations per token to e4m3 (the core kernel, ``scale = max(amax, 1e-12) / 448``);
3. multiply in fp8 on the tensor cores: row-wise ``torch._scaled_mm`` (scales ``[M, 1]`` and ``t`` as ``[1, N]``,
   fast accumulation), bf16 output (fp16 activations: converted after; float32: an unscaled float32 product, the
   scales applied after it).

The int4 weight stays what is stored (0.26x bf16); the fp8 copy exists for one call at a time. The result is not the
exact AWQ product: two more roundings, the weight's to e4m3 per output channel and the activations' per token.
Against the de-quantized weight in float64 that is ~3.8e-2 relative error on Gaussian data (the fp8 plugin's W8A8 is
~2.6e-2), next to the int4 rounding itself (~0.10 against the original weight: 0.101 -> 0.107 with both roundings,
``tests/test_awq_fp8_compute.py``). Calls below ``fp8_compute_min_m`` rows run the exact path (the int4 kernels are
faster there), so a model's numerics depend on its row count, as they do between any two kernels.

CPU runs the same arithmetic (the e4m3 weight and activations upcast to float32, every product exact, summed in
float32), so numerics do not change with the device; CUDA needs fp8 tensor cores (compute capability 8.9+).
"""

from __future__ import annotations

import functools
import os

import torch

from fastvideo_quant.errors import MethodUnavailableError
from fastvideo_quant.kernels import FP8_DTYPE, fp8_cast_by_reciprocal, fp8_per_token_ref, fp8_scale_of, unit_scale
from fvq_awq.layout import KernelLayout, dequantize_kernel

#: Rows (tokens) from which ``fp8_compute`` layers take the fp8 route when the config does not say
#: (``fp8_compute_min_m``). ``FVQ_AWQ_FP8_MIN_M`` overrides it.
FP8_COMPUTE_MIN_M = int(os.environ.get("FVQ_AWQ_FP8_MIN_M", "129"))

#: What the input and output features per rank must be multiples of for the fp8 route (``torch._scaled_mm``).
FP8_ALIGN = 16

#: Weight elements de-quantized at a time by :func:`channel_scales` (16 MiB of float32).
_CHUNK_NUMEL = 1 << 22


def shape_problem(in_features: int, out_features: int) -> str | None:
    """Why a layer with these sizes per rank cannot take the fp8 route (``torch._scaled_mm`` wants both in multiples
    of 16), or None."""
    bad = [f"{name} {size}" for name, size in (("input features", in_features), ("output features", out_features))
           if size % FP8_ALIGN]
    return None if not bad else f"{' and '.join(bad)} per rank not a multiple of {FP8_ALIGN}"


def channel_scales(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                   layout: KernelLayout) -> torch.Tensor:
    """float32 ``[N]``: ``max(max_k |W[n, k]|, 1e-12) / 448`` of the de-quantized weight, row by row (the whole
    weight is never de-quantized at once)."""
    n, k = layout.out_features, layout.in_features
    rows = max(1, _CHUNK_NUMEL // max(k, 1))
    amax = torch.empty(n, dtype=torch.float32, device=qweight_k.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        part = KernelLayout(k, r1 - r0, layout.group, layout.bk8)
        amax[r0:r1] = dequantize_kernel(qweight_k[r0:r1], zeros_k[r0:r1], scales_k[r0:r1], part).abs().amax(dim=1)
    return fp8_scale_of(amax)


def fp8_weight_ref(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout: KernelLayout,
                   fp8_scale: torch.Tensor) -> torch.Tensor:
    """The e4m3 weight ``[N, K]`` of the fp8 route in torch: the reference the Triton conversion
    (``awq_dequantize(..., float8_e4m3fn, fp8_scale=)``) equals bit for bit, and the CPU path."""
    return fp8_cast_by_reciprocal(dequantize_kernel(qweight_k, zeros_k, scales_k, layout), fp8_scale[:, None])


def takes(x: torch.Tensor, in_features: int, min_m: int) -> bool:
    """Whether a call with ``x [..., in_features]`` takes the fp8 route: ``min_m`` rows or more (``min_m`` 0: never;
    an empty ``x``: never)."""
    return x.numel() >= min_m * in_features > 0


def linear(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
           layout: KernelLayout, fp8_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [..., K] @ W.T (+ bias)`` through the fp8 route (see the module docstring); output ``[..., N]`` in
    ``x.dtype``."""
    x2 = x if x.dim() == 2 else x.reshape(-1, layout.in_features)
    if x.is_cuda:
        out = _linear_cuda(x2, qweight_k, zeros_k, scales_k, layout, fp8_scale, bias)
    else:
        w8 = fp8_weight_ref(qweight_k, zeros_k, scales_k, layout, fp8_scale)
        xq, sx = fp8_per_token_ref(x2)
        acc = (xq.float() @ w8.float().t()).mul_(sx).mul_(fp8_scale)
        if bias is not None:
            acc.add_(bias.float())
        out = acc.to(x.dtype)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], layout.out_features)


def _linear_cuda(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                 layout: KernelLayout, fp8_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    index = x.get_device()
    require_fp8_tensor_cores(index)
    kernels = _cuda_kernels()
    w8 = _convert(qweight_k, zeros_k, scales_k, layout, fp8_scale, index, kernels)
    x = x if x.stride(-1) == 1 else x.contiguous()
    # (up to the workspace's rows, the activations go to the core's per-(stream, thread) workspace, as the fp8
    # method's eager route does: _scaled_mm, launched right after on this stream, is their only reader)
    xq, sx = kernels.per_token_quant_scratch(x, FP8_DTYPE)
    if x.dtype == torch.float32:  # (row-wise _scaled_mm writes bf16 only: the unscaled product in float32)
        acc = torch._scaled_mm(xq, w8.t(), scale_a=unit_scale(x.device), scale_b=unit_scale(x.device),
                               out_dtype=torch.float32, use_fast_accum=True).mul_(sx).mul_(fp8_scale)
        return acc if bias is None else acc.add_(bias.float())
    out = torch._scaled_mm(xq, w8.t(), scale_a=sx, scale_b=fp8_scale.view(1, -1),
                           bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16,
                           use_fast_accum=True)
    return out if x.dtype == torch.bfloat16 else out.to(x.dtype)


def _convert(qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout: KernelLayout,
             fp8_scale: torch.Tensor, index: int, kernels) -> torch.Tensor:
    """The e4m3 weight ``[N, K]`` of this call, freshly allocated (it is the size of an fp8 layer's weight: not kept
    between calls). The conversion's bound launch and int arguments are kept by (layout, device, the four tensors'
    dtypes and 16-byte alignment): the first call per key runs the checked ``awq_dequantize``; later calls allocate
    and launch, skipping its checks and key construction (eager host time: ``benchmarks/awq_fp8_compute.py --host``)."""
    key = (layout, index, qweight_k.dtype, zeros_k.dtype, scales_k.dtype, fp8_scale.dtype, qweight_k.data_ptr() % 16,
           zeros_k.data_ptr() % 16, scales_k.data_ptr() % 16, fp8_scale.data_ptr() % 16)
    w8 = torch.empty((layout.out_features, layout.in_features), dtype=FP8_DTYPE, device=qweight_k.device)
    plan = kernels.conversions.get(key)
    if plan is None:  # (a fresh allocation is 512-byte aligned: the bound launch's key holds w8's alignment as True)
        kernels.conversions.put(key, kernels.bind_fp8_conversion(qweight_k, zeros_k, scales_k, layout, w8, fp8_scale))
        return w8
    launch, ints = plan
    launch((qweight_k, scales_k, zeros_k, w8, fp8_scale, *ints),
           torch._C._cuda_getCurrentRawStream(index) if index >= 0 else None)  # (-1: CPU tensors, the interpreter)
    return w8


@functools.cache
def _cuda_kernels():
    """The Triton entry points, imported on first use (CPU installs may lack Triton)."""
    from types import SimpleNamespace

    from fastvideo_quant.kernels.per_token_quant import per_token_quant_scratch
    from fastvideo_quant.kernels.triton_launch import PlanCache
    from fvq_awq.kernels.gemm import bind_fp8_conversion

    return SimpleNamespace(bind_fp8_conversion=bind_fp8_conversion, per_token_quant_scratch=per_token_quant_scratch,
                           conversions=PlanCache())


_FP8_OK: dict[int, bool] = {}


def require_fp8_tensor_cores(index: int) -> None:
    """MethodUnavailableError unless CUDA device ``index`` has compute capability 8.9+ (asked once per device)."""
    ok = _FP8_OK.get(index)
    if ok is None:
        ok = _FP8_OK[index] = torch.cuda.get_device_capability(index) >= (8, 9)
    if not ok:
        major, minor = torch.cuda.get_device_capability(index)
        raise MethodUnavailableError(
            f"awq: fp8_compute multiplies in float8 (torch._scaled_mm), which needs compute capability 8.9+ (Ada, "
            f"Hopper); {torch.cuda.get_device_name(index)} has {major}.{minor}. Load the checkpoint without "
            "fp8_compute (the exact int4 kernels run here)")
