"""The int8 plugin's Triton path as one torch custom op, so ``torch.compile(fullgraph=True)`` and CUDA graphs see
one opaque node instead of tracing into the kernels' Python launch code (which dynamo cannot trace).

Eager calls go to the kernels directly (``fvq_int8.kernels.int8_linear``: the op wrapper costs host time that
counts at small M); compiled code calls ``torch.ops.fvq_int8.linear``. Importing this module needs no Triton.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("fvq_int8::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
           out_dtype: torch.dtype) -> torch.Tensor:
    """``x [M, K] @ (int8 weight [N, K] * weight_scale[N]).T + bias`` in ``out_dtype`` (the Triton path)."""
    from fvq_int8.kernels import int8_linear

    return int8_linear(x, weight, weight_scale, bias, out_dtype)


@linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
      out_dtype: torch.dtype) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=out_dtype)
