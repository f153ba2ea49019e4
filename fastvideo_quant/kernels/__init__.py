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
#: float8 e4m3fn, the fp8 format the plugins store and compute in, and its largest finite value (448).
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)


_UNITS: dict[torch.device, torch.Tensor] = {}


def unit_scale(device: torch.device) -> torch.Tensor:
    """A one-element float32 1.0 on ``device`` (an unscaled ``torch._scaled_mm``'s scales), made once per device: not
    an allocation and a fill per call."""
    one = _UNITS.get(device)
    if one is None:
        one = torch.ones((), dtype=torch.float32, device=device)
        if not torch.compiler.is_compiling():  # (one made while tracing — torch.export — is fake: never kept)
            _UNITS[device] = one
    return one


def fp8_cast_by_reciprocal(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``fp8(clamp(x * (1 / scale)))`` of float32 ``x``: one reciprocal per scale, a multiply per element — the
    arithmetic of the quantization kernels (``per_token_quant``'s ``div_ieee`` reciprocal), so their results equal
    this bit for bit."""
    return (x * scale.reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def fp8_scale_of(amax: torch.Tensor) -> torch.Tensor:
    """``max(amax, FP8_AMAX_EPS) / 448``, float32, as the quantization kernels compute it: tensor / tensor, IEEE
    division on CPU and CUDA (CUDA computes ``t / 448.0`` as ``t * (1 / 448)``, an ulp off at times), so the kernels'
    IEEE ``div_rn`` matches it bit for bit on both."""
    amax = amax.clamp(min=FP8_AMAX_EPS)
    return amax / torch.full_like(amax, FP8_MAX)


def fp8_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic fp8 quantization of ``x`` ``[M, K]`` in torch: (fp8 ``[M, K]``, float32 scales ``[M, 1]``),
    ``scale = max(amax, FP8_AMAX_EPS) / 448``. The reference the per-token kernel is tested against (bit for bit), and
    the CPU path of the plugins that quantize activations to fp8."""
    xf = x.float()
    scale = fp8_scale_of(xf.abs().amax(dim=1, keepdim=True))
    return fp8_cast_by_reciprocal(xf, scale), scale


def takes_small_m(x: torch.Tensor, out_dtype: torch.dtype, limit: int) -> bool:
    """Whether a plugin sends ``x`` [M, K] to the small-M kernel: CUDA, bf16/fp16 in and out, M <= ``limit``.

    M is compared last: traced (torch.export / torch.compile with a dynamic M), a comparison of M is a guard, and a
    CPU input, which no M sends anywhere else, must not get one (an export with a dynamic token count failed)."""
    return x.is_cuda and x.dtype in SMALL_M_ACT_DTYPES and out_dtype == x.dtype and x.shape[0] <= limit
