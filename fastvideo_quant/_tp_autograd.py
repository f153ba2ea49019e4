"""The layers' collectives with a backward, for TP > 1 while autograd records.

``torch.distributed``'s collectives have no autograd formula: run on a tensor that requires grad, ``all_reduce``
warns ("an autograd kernel was not registered") and the backward treats it as the identity, and a column layer's
input is copied to every rank without any collective at all, so each rank's input gradient held only its own
shard's part (the gradient of a column → row pair was 0.7 off at TP=2, with no error). Each function here pairs the
forward collective with the one that carries the gradient back over the same group (the regions of Megatron-LM's
tensor parallelism, Shoeybi et al. 2019, section 3):

======================  ==========================================  =============================================
function                forward                                     backward
======================  ==========================================  =============================================
copy_to_tp_region       identity (the whole input on every rank)    all-reduce (sum) of the input gradient
reduce_from_tp_region   all-reduce (sum) of the partial outputs     identity
scatter_to_tp_region    this rank's slice of the last dim           all-gather of the slices' gradients
gather_from_tp_region   all-gather along a dim (the last)           this rank's slice of the gradient
======================  ==========================================  =============================================

Their forward runs the inference path's own collective (:func:`~fastvideo_quant.distributed
.tensor_model_parallel_all_reduce` / ``_all_gather``, the same slice), so outputs are bit-identical to it. The
backward assumes what tensor parallelism assumes: every rank of the group computes the same loss from the same
(replicated) tensors, so the gradient reaching a replicated tensor is the same on every rank.

The layers call these only where :func:`recording` (grad mode on, the tensor requires grad); under ``torch.no_grad``
or ``torch.inference_mode``, and for tensors outside the graph, they run the plain collectives, so the inference
path (``torch.compile``, CUDA graphs) is unchanged. Double backward is refused (``once_differentiable``): the
backward collectives are not themselves differentiated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from fastvideo_quant.distributed import (
    split_tensor_along_last_dim,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from fastvideo_quant.quantization.base import forward_ad_active

__all__ = ["copy_to_tp_region", "gather_from_tp_region", "recording", "reduce_from_tp_region", "scatter_to_tp_region"]


def recording(t: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``t``: grad mode is on and ``t`` requires grad (it is an input that
    does, or was computed from one or from a parameter that does); or a forward-mode AD level is open
    (``torch.func.jvp``/``jacfwd``, ``forward_ad.dual_level``), whose dual tensors do not require grad and whose
    tangents the plain collectives do not carry (a row layer's partial tangents were never summed)."""
    return (t.requires_grad and torch.is_grad_enabled()) or forward_ad_active()


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied where it is a view: autograd refuses an in-place change to a view that a custom Function returned,
    and a layer's output is often added to in place (a residual). (Views arise only where the tensor's leading dims
    hold one row, e.g. one token.)"""
    if torch.compiler.is_compiling():  # (_is_view does not trace; a compiled graph's output may be a view too)
        return t.clone()
    return t.clone() if t._is_view() else t


def _all_reduced(grad: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    # (a copy: the incoming gradient may be shared with another branch of the graph, and the all-reduce is in place)
    return tensor_model_parallel_all_reduce(grad.clone(memory_format=torch.contiguous_format), group=group)


# (forward without ctx, and setup_context: the form torch.func's transforms — grad, vjp, functional_call training —
# take; the old form raised "must override the setup_context staticmethod" under them)
class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        return x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.group = inputs[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduced(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, group: dist.ProcessGroup, bias: torch.Tensor | None) -> torch.Tensor:
        # (into a copy: the inference path sums in place, but a method's output may be a view its own autograd
        # Function returned, which autograd refuses to have changed in place, or a tensor its backward saved)
        return tensor_model_parallel_all_reduce(x.clone(), group=group)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        bias = inputs[2]
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor | None]:
        if ctx.bias_meta is None:
            return grad, None, None
        shape, dtype = ctx.bias_meta
        leading = tuple(range(grad.dim() - 1))  # (none for a 1-d input: sum(dim=()) would sum every dim)
        bias_grad = grad.sum(dim=leading) if leading else grad
        return grad, None, bias_grad.reshape(shape).to(dtype)


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, rank: int, world: int, group: dist.ProcessGroup) -> torch.Tensor:
        return _own(split_tensor_along_last_dim(x, world)[rank].contiguous())

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.group = inputs[3]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return tensor_model_parallel_all_gather(grad.contiguous(), dim=-1, group=ctx.group), None, None, None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, rank: int, world: int, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        return _own(tensor_model_parallel_all_gather(x, dim=dim, group=group))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, ctx.rank, ctx.world, _, dim = inputs
        ctx.dim = dim % x.dim()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        if ctx.dim == grad.dim() - 1:
            part = split_tensor_along_last_dim(grad, ctx.world)[ctx.rank]
        else:
            part = grad.chunk(ctx.world, dim=ctx.dim)[ctx.rank]
        return part.contiguous(), None, None, None, None


# Forward mode: the same Functions with a jvp that runs each forward's collective on the tangent — separate classes, as
# dynamo refuses to trace a Function that defines jvp ("Unsupported custom jvp"), which the grad-mode ones must be.
class _CopyToRegionDual(_CopyToRegion):
    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, _: None) -> torch.Tensor:  # noqa: ANN001
        return x_tangent


class _ReduceFromRegionDual(_ReduceFromRegion):
    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _ReduceFromRegion.setup_context(ctx, inputs, output)
        ctx.group = inputs[1]

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, _: None, bias_tangent: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        # (the bias passed by the ranks that did not add it is not in the forward's sum: nor is its tangent)
        return tensor_model_parallel_all_reduce(x_tangent.clone(memory_format=torch.contiguous_format), group=ctx.group)


class _ScatterToRegionDual(_ScatterToRegion):
    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _ScatterToRegion.setup_context(ctx, inputs, output)
        ctx.rank, ctx.world = inputs[1], inputs[2]

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:  # noqa: ANN001
        return split_tensor_along_last_dim(x_tangent, ctx.world)[ctx.rank].contiguous()


class _GatherFromRegionDual(_GatherFromRegion):
    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _GatherFromRegion.setup_context(ctx, inputs, output)
        ctx.group = inputs[3]

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:  # noqa: ANN001
        return tensor_model_parallel_all_gather(x_tangent.contiguous(), dim=ctx.dim, group=ctx.group)


def copy_to_tp_region(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``x`` (a column layer's whole input, the same on every rank); backward: the input gradient summed over
    ``group``, each rank having computed its output shard's part."""
    return (_CopyToRegionDual if forward_ad_active() else _CopyToRegion).apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group: dist.ProcessGroup, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` summed over ``group``, into a copy (a row layer's partial outputs); backward: the gradient unchanged (the
    sum's gradient with respect to each rank's part). ``bias``: a replicated bias that another rank (rank 0) added
    before the sum, passed by the other ranks so that their copy gets its gradient too (the sum of the output's
    gradient over its leading dims), and stays equal to rank 0's under an optimizer."""
    return (_ReduceFromRegionDual if forward_ad_active() else _ReduceFromRegion).apply(x, group, bias)


def scatter_to_tp_region(x: torch.Tensor, rank: int, world: int, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's ``1/world`` of ``x``'s last dim, contiguous (a row layer splitting a whole input); backward: the
    slices' gradients all-gathered over ``group`` into the whole input's."""
    return (_ScatterToRegionDual if forward_ad_active() else _ScatterToRegion).apply(x, rank, world, group)


def gather_from_tp_region(x: torch.Tensor, rank: int, world: int, group: dist.ProcessGroup,
                          dim: int = -1) -> torch.Tensor:
    """Each rank's ``x`` concatenated along ``dim`` (the last: a column layer's ``gather_output``) in rank order over
    ``group``; backward: this rank's slice of the gradient. :func:`~fastvideo_quant.distributed
    .tensor_model_parallel_all_gather` takes it for a tensor autograd records."""
    return (_GatherFromRegionDual if forward_ad_active() else _GatherFromRegion).apply(x, rank, world, group, dim)
