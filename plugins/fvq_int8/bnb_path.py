"""The bitsandbytes path: LLM.int8() through bitsandbytes' own ops (the reference, and threshold > 0).

This is what ``bitsandbytes.matmul(x, CB, state=MatmulLtState(threshold=t,
has_fp16_weights=False, is_training=False))`` runs in inference (``MatMul8bitLt.forward``,
bitsandbytes 0.50): quantize the activation per row with outlier columns held back
(``int8_vectorwise_quant``), then ``int8_scaled_mm`` (int8 GEMM + ``int8_mm_dequant``) or,
with a threshold, ``int8_mixed_scaled_mm``, which adds the outlier columns back in float
against the de-quantized weight columns. The ops are called directly to skip the autograd
wrapper. bitsandbytes is imported here only, once, on first use.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch

#: bitsandbytes (0.50 here) warns at import, on CPUs with AVX512-BF16 and without the optional ``kernels`` package, that
#: its *4-bit* CPU GEMM could not be loaded — nothing int8 uses. Only that record is dropped.
_UNUSED_4BIT_WARNING = "Failed to load CPU gemm_4bit_forward"


def _drop_unused_4bit_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_UNUSED_4BIT_WARNING)


# At import of this module, not in bnb_functional(): torch.compile traces that function and cannot trace logging.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_unused_4bit_warning)


_BNBF: ModuleType | None = None


def bnb_functional() -> ModuleType:
    """``bitsandbytes.functional``, imported once on first use (importing it registers torch.ops.bitsandbytes).

    A module global rather than ``functools.cache``: torch.compile traces this call inside apply and warns about
    cached functions (their cache is not guarded); the global is set by the method's constructor, before any trace.
    """
    global _BNBF
    if _BNBF is None:
        import bitsandbytes.functional as bnbf

        _BNBF = bnbf
    return _BNBF


@functools.cache
def import_problem() -> str | None:
    """None when bitsandbytes imports; else ``import bitsandbytes.functional raised RuntimeError: ...``.

    Tried once per process (through :func:`bnb_functional`, so a working import is the one the method uses): a
    bitsandbytes that is installed but cannot import (its native library missing, a torch it does not support) makes
    the method unavailable, with this as the reason, instead of an error from the first layer that runs it.
    """
    try:
        bnb_functional()
    except Exception as exc:  # noqa: BLE001 - any import failure makes the method unavailable; it is reported
        return f"import bitsandbytes.functional raised {type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def bnb_int8_linear(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None,
                    threshold: float) -> torch.Tensor:
    """``x [M, K] @ dequant(weight [N, K], SCB).T + bias`` through bitsandbytes; output in ``x.dtype``.

    K = 1 (a one-input layer, or a row-parallel rank's one input) is computed as ``F.linear`` of the de-quantized
    weight, what bitsandbytes' mixed path computes for an outlier column: its CPU product is ``torch._int_mm``, which
    on AVX-512 returns wrong sums at K = 1 (torch 2.13: ``[[844947408, ...]]`` for ``[[16129, ...]]``)."""
    if weight.shape[1] == 1:
        w = weight.float() * (scb.float() / 127).reshape(-1, 1)
        out = torch.nn.functional.linear(x.float(), w, None if bias is None else bias.float())
        return out.to(x.dtype)
    bnbf = bnb_functional()
    # bitsandbytes' CUDA kernels take float16 only (MatMul8bitLt casts too); its CPU ops take any float.
    a = x.to(torch.float16) if x.is_cuda else x
    if threshold > 0 and a is x:
        a = a.clone()  # int8_vectorwise_quant zeroes outliers in place while it quantizes
    ca, sca, outlier_cols = bnbf.int8_vectorwise_quant(a, threshold=threshold)
    b = None if bias is None else bias.to(a.dtype)
    if threshold > 0:
        out, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(a, ca, weight, sca, scb, outlier_cols, b)
    else:
        out = torch.ops.bitsandbytes.int8_scaled_mm(ca, weight, sca, scb, bias=b, dtype=a.dtype)
    return out.to(x.dtype)
