"""The AWQ plugin's GPU dispatcher as one torch custom op, so ``torch.compile(fullgraph=True)`` and CUDA graphs
see one opaque node instead of tracing into the kernels' Python launch code (which dynamo cannot trace).

Eager calls go to the dispatcher directly (the op wrapper costs host time that counts at M=1); compiled code
calls ``torch.ops.fvq_awq.linear``. The layer's ``KernelLayout`` travels as its four ints (ops take tensors and
scalars). Importing this module needs no Triton.
"""

from __future__ import annotations

import torch

from fastvideo_quant.quantization.base import register_row_batching, straight_through_grads, straight_through_tangent
from fvq_awq.layout import KernelLayout, dequantize_kernel


@torch.library.custom_op("fvq_awq::linear", mutates_args=())
def linear(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
           bias: torch.Tensor | None, in_features: int, out_features: int, group: int, bk8: int,
           fp8_scale: torch.Tensor | None = None, fp8_min_m: int = 0, order: torch.Tensor | None = None,
           x_features: int = 0) -> torch.Tensor:
    """``x [..., K] @ W.T (+ bias)`` with ``W`` in the kernel layout (the Triton dispatcher; CUDA tensors).
    ``fp8_scale``/``fp8_min_m``: the fp8 route from that many rows (``fvq_awq.fp8_compute``); 0: never.
    ``order`` (activation ordering): ``x`` is ``[..., x_features]`` and the product ``x[..., order] @ W.T``."""
    from fvq_awq.kernels.dispatch import awq_linear_cuda

    return awq_linear_cuda(x, qweight_k, zeros_k, scales_k, KernelLayout(in_features, out_features, group, bk8), bias,
                           fp8_scale, fp8_min_m, order, x_features)


@linear.register_fake
def _(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
      bias: torch.Tensor | None, in_features: int, out_features: int, group: int, bk8: int,
      fp8_scale: torch.Tensor | None = None, fp8_min_m: int = 0, order: torch.Tensor | None = None,
      x_features: int = 0) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    x, qweight_k, zeros_k, scales_k, bias, in_features, out_features, group, bk8, _, _, order = inputs[:12]
    ctx.save_for_backward(qweight_k, zeros_k, scales_k, order)
    ctx.layout = (in_features, out_features, group, bk8)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.x_features = x.shape[-1]


def _backward(ctx, grad: torch.Tensor):  # noqa: ANN202
    """The gradient straight through to the de-quantized weight (what the CPU path, ``F.linear`` on it, computes; with
    the fp8 route too, whose forward approximates that product):
    ``grad_x = grad @ W``, ``grad_bias = grad`` summed over the rows; the packed tensors get none. With ``order``,
    ``grad_x`` is scattered back to the inputs each kernel input read (``index_add``: a padding input reads input 0
    with a weight of exactly zero, so it adds zero there)."""
    qweight_k, zeros_k, scales_k, order = ctx.saved_tensors
    w = dequantize_kernel(qweight_k, zeros_k, scales_k, KernelLayout(*ctx.layout))
    grad_x, grad_bias = straight_through_grads(grad, w, ctx.needs_input_grad[0], ctx.needs_input_grad[4], ctx.bias_dtype)
    if grad_x is not None and order is not None:
        grad_x = grad_x.new_zeros(*grad_x.shape[:-1], ctx.x_features).index_add_(-1, order, grad_x)
    return grad_x, None, None, None, grad_bias, None, None, None, None, None, None, None, None


linear.register_autograd(_backward, setup_context=_setup_context)
#: vmap: a batch of inputs is one call (the op takes [..., K]); eager CUDA calls it under vmap (method.apply)
register_row_batching(linear, "fvq_awq::linear", x_arg=0, bias_arg=4, two_d=False)


class CudaLinearFunction(torch.autograd.Function):
    """:func:`linear` (the op, so a batched input takes its batching rule) with its backward, as an
    ``autograd.Function``: for ``torch.func``'s ``grad``, ``vjp``, ``jacrev`` and per-sample gradients
    (``vmap(grad(f))``), which torch's custom-op autograd refuses ("must override the setup_context staticmethod")."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):  # noqa: ANN002, ANN205
        return linear(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class CudaLinearDualFunction(CudaLinearFunction):
    """:class:`CudaLinearFunction` in forward-mode AD (``jvp``, ``jacfwd``, ``forward_ad``), with the tangent straight
    through to the de-quantized weight (``x_t[..., order] @ W.T``), as the backward."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[1], inputs[2], inputs[3], inputs[11])
        ctx.out_shape, ctx.out_dtype = output.shape, output.dtype

    @staticmethod
    def jvp(ctx, x_tangent, *tangents):  # noqa: ANN001, ANN002, ANN205
        qweight_k, zeros_k, scales_k, order = ctx.saved_tensors
        w = dequantize_kernel(qweight_k, zeros_k, scales_k, KernelLayout(*ctx.layout))
        if x_tangent is not None and order is not None:
            x_tangent = x_tangent.index_select(-1, order)
        return straight_through_tangent(x_tangent, tangents[3], w, ctx.out_shape, ctx.out_dtype)
