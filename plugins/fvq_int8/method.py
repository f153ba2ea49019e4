"""The int8 linear method: bitsandbytes-format weights, run by Triton on GPU or bitsandbytes on CPU.

Parameters (vLLM parameter classes, loaded through ``weight_loader_v2``):

* pre-quantized checkpoint: ``weight`` int8 ``[out, in]`` (ModelWeightParameter),
  ``SCB`` float32 ``[out]`` (ChannelQuantScaleParameter: split along out in column
  layers, whole in row layers — each row's absmax stays valid for any slice of the
  input dim), ``weight_format`` uint8 ``[1]`` (checked to be ``"row"``; optional in the
  checkpoint: a missing one means ``"row"``, as in bitsandbytes).
* float checkpoint: ``weight`` in the model dtype, quantized in
  ``process_weights_after_loading`` (row-wise, so fused == per-shard; in a row-parallel
  layer each rank's rows get the absmax of its own input slice).

After loading the layer holds ``weight`` int8 ``[N, K]`` (bitsandbytes' layout, also
the K-major operand the int8 tensor cores want), ``SCB`` and ``weight_scale = SCB / 127``
float32 ``[N]`` for the GEMM epilogue: 1 byte a weight plus 8 bytes a row.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Parameter

from fastvideo_quant.errors import ModelStateError
from fastvideo_quant.layers.base import not_processed_error, weights_processed
from fastvideo_quant.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    set_weight_attrs,
)
from fastvideo_quant.quantization.base import (
    LinearMethodBase,
    act_dtype_error,
    batched,
    check_entries,
    check_finite,
    check_frozen_storage,
    forward_ad_active,
    needs_autograd,
    no_rows_output,
    straight_through_grads,
    straight_through_linear_op,
    straight_through_tangent,
    takes_linear_op,
)
from fvq_int8 import format as fmt
from fvq_int8 import ops as int8_ops
from fvq_int8.bnb_path import bnb_functional, bnb_int8_linear
from fvq_int8.loading import named_loader, weight_format_loader

if TYPE_CHECKING:
    from fvq_int8.config import Int8Config


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (checked once)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def triton_int8_linear() -> Callable[..., torch.Tensor]:
    """The Triton int8 linear, imported once on first use (CPU installs may lack Triton)."""
    from fvq_int8.kernels import int8_linear

    return int8_linear


class Int8LinearMethod(LinearMethodBase):
    """LLM.int8() W8A8: per-row int8 weights, per-token int8 activations, optional outlier columns."""

    def __init__(self, config: Int8Config) -> None:
        self.config = config
        # Decided here, not per call: torch.compile cannot trace importlib's find_spec inside apply().
        self._triton_ok = config.backend == "auto" and config.threshold == 0 and triton_available()
        self._act_dtypes = tuple(config.get_supported_act_dtypes())

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        loader = extra_weight_attrs["weight_loader"]
        name = getattr(layer, "prefix", "") or type(layer).__name__
        rows = sum(output_partition_sizes)
        serialized = self.config.serialized
        # (a float weight to quantize on load starts NaN: processing one never loaded is refused as such, where it
        # quantized whatever memory torch.empty held)
        data = (torch.empty(rows, input_size_per_partition, dtype=torch.int8) if serialized
                else torch.full((rows, input_size_per_partition), float("nan"), dtype=params_dtype))
        weight = ModelWeightParameter(
            data=data,
            input_dim=1, output_dim=0,
            weight_loader=named_loader(loader, f"{name}.weight", "int8" if serialized else "float"),
        )
        weight.nan_until_loaded = not serialized  # (check_finite: "never loaded")
        layer.register_parameter("weight", weight)
        if serialized:
            # NaN until loaded: a scale never loaded (a non-strict load) fails validate_loaded_weights.
            scb = ChannelQuantScaleParameter(data=torch.full((rows,), float("nan")), output_dim=0,
                                             weight_loader=named_loader(loader, f"{name}.SCB", "float"))
            layer.register_parameter("SCB", scb)
            # Starts as "row" (0): bitsandbytes reads a missing weight_format as "row"
            # (maybe_rearrange_weight), so the loader may leave it unloaded (checkpoint_optional).
            wf = BasevLLMParameter(data=torch.full((1,), fmt.ROW_FORMAT, dtype=torch.uint8),
                                   weight_loader=weight_format_loader(loader, f"{name}.weight_format"))
            set_weight_attrs(wf, {"checkpoint_optional": True})
            layer.register_parameter("weight_format", wf)
        layer.int8_name = name

    def validate_loaded_weights(self, layer: torch.nn.Module) -> None:
        """WeightLoadError for an SCB that is not a finite absmax >= 0 (0 only for an all-zero row), a weight_format
        other than "row", a NaN/inf float weight to quantize, or a NaN/inf bias; reads the layer only."""
        if weights_processed(layer):
            return  # already in the kernel format (checked on the way there)
        check_finite(layer, "bias", "int8")
        name = getattr(layer, "int8_name", type(layer).__name__)
        if not self.config.serialized:
            check_finite(layer, "weight", "int8")  # quantized on load: a NaN/inf would spoil its row's SCB
            return
        fmt.check_row_format(layer.weight_format.data[0], f"{name}.weight_format")
        fmt.check_pair(layer.weight.data, layer.SCB.data, name)
        bad, expected = fmt.bad_scb(layer.weight.data, layer.SCB.data, getattr(layer, "params_dtype", torch.float32))
        check_entries(layer, "SCB", "int8", bad, expected=expected, found="rows that are not",
                      fix="The checkpoint is corrupt or was written by a broken export; re-quantize the layer")

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        name = getattr(layer, "int8_name", type(layer).__name__)
        self.validate_loaded_weights(layer)  # the loader ran it already; a direct call gets the same checks
        if self.config.serialized:
            q, scb = layer.weight.data, layer.SCB.data.float()
            del layer.weight_format
        else:
            q, scb = fmt.quantize_rows(layer.weight.data)
        fmt.check_pair(q, scb, name)
        layer.weight = Parameter(q.contiguous(), requires_grad=False)
        layer.SCB = Parameter(scb.contiguous(), requires_grad=False)
        layer.weight_scale = Parameter(scb / 127.0, requires_grad=False)
        bnb_functional()  # bitsandbytes imported here, not first inside apply, where torch.compile may be tracing

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not weights_processed(layer):
            # (a pre-quantized checkpoint's weight is int8 already, so its dtype cannot tell)
            raise not_processed_error(layer)
        if x.dtype not in self._act_dtypes:  # (a host-side compare; an integer input would come back truncated)
            raise act_dtype_error("int8", layer.int8_name, x, self._act_dtypes)
        weight, scale = layer.weight, layer.weight_scale
        n, k = weight.shape
        if weight.dtype != torch.int8 or scale.shape[0] != n:
            raise ModelStateError(
                f"{layer.int8_name}: weight is {weight.dtype} {tuple(weight.shape)} and weight_scale "
                f"{tuple(scale.shape)}, expected an int8 weight of one row per scale — replaced or cast by hand "
                "(module-wide casts such as model.to(dtype) keep them; functional_call and assignments do not): give "
                "the tensors of a loaded layer of the same size, or load the checkpoint again into a fresh model")
        if x.shape[-1] != k:
            raise ValueError(f"{layer.int8_name}: input's last dim must be {k} (in_features), found shape "
                             f"{tuple(x.shape)}")
        check_frozen_storage(layer, "int8", layer.int8_name)
        if x.dim() == 2:  # the common case: no reshape views to build (host time counts at small M)
            return self._run(layer, weight, scale, x, bias)
        out = self._run(layer, weight, scale, x.reshape(-1, k), bias)
        return out.reshape(*x.shape[:-1], n)

    def _backend(self, x: torch.Tensor) -> str:
        backend = self.config.backend
        if backend == "auto":
            return "triton" if self._triton_ok and x.is_cuda else "bitsandbytes"
        return backend

    def _run(self, layer: torch.nn.Module, weight: torch.Tensor, scale: torch.Tensor, x2: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
        if x2.shape[0] == 0:
            return no_rows_output(x2, weight.shape[0], bias)
        args = (x2, bias, weight, scale, layer.SCB, self._backend(x2), self.config.threshold)
        if takes_linear_op(x2, bias):
            return _linear_op(*args)
        if needs_autograd(x2, bias):
            return (_Int8LinearDualFunction if forward_ad_active() else _Int8LinearFunction).apply(*args)
        return _int8_forward(*args)

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        return fmt.dequantize_rows(layer.weight.data, layer.SCB.data)


def _int8_forward(x2: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor, weight_scale: torch.Tensor,
                  scb: torch.Tensor, backend: str, threshold: float) -> torch.Tensor:
    if backend == "triton":
        if torch.compiler.is_compiling():  # one opaque op for dynamo; eager skips the op wrapper's host time
            return int8_ops.linear(x2, weight, weight_scale, bias, x2.dtype)
        return triton_int8_linear()(x2, weight, weight_scale, bias, x2.dtype)
    return bnb_int8_linear(x2, weight, scb, bias, threshold)


#: ``apply``'s forward as one op with the backward below and a batching rule, where ``takes_linear_op`` says: export,
#: torch.compile in grad mode (dynamo traced the Function's forward and failed with a dynamic token count:
#: "lift_tracked_freevar_to_input should not be called on root SubgraphTracer"), vmap
_linear_op = straight_through_linear_op(
    "fvq_int8::quantized_linear", _int8_forward,
    lambda weight, weight_scale, scb, backend, threshold: _dequantized(weight, weight_scale))


class _Int8LinearFunction(torch.autograd.Function):
    """``apply`` where autograd sees it (grad mode, an input or the bias requiring grad): the forward is the int8
    GEMM, the backward passes the gradient straight through the activation's quantization to the de-quantized weight
    (``grad_x = grad @ W_deq``), as AWQ's float path computes it.

    Neither the Triton kernels nor bitsandbytes' ops have a derivative: a backward got no gradient (Triton) or a
    wrong one with a warning (bitsandbytes), and ``torch.compile`` in grad mode failed on ``fvq_int8::linear``.
    """

    #: torch.func.vmap over it (vmap(grad(f)) per-sample gradients): forward (a batched input goes to the op, whose
    #: batching rule makes the batch one call), backward and jvp are batched as torch ops
    generate_vmap_rule = True

    # (forward without ctx, and setup_context: the form torch.func's transforms — grad, vjp, jacrev — take)
    @staticmethod
    def forward(x2, bias, weight, weight_scale, scb, backend, threshold):  # noqa: ANN001, ANN205
        # (vmap over the Function, per-sample gradients: the op's batching rule)
        forward = _linear_op if batched(x2, bias) else _int8_forward
        return forward(x2, bias, weight, weight_scale, scb, backend, threshold)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.save_for_backward(inputs[2], inputs[3])

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, weight_scale = ctx.saved_tensors
        w = _dequantized(weight, weight_scale)
        grad_x, grad_bias = straight_through_grads(grad, w, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                                   grad.dtype)
        return grad_x, grad_bias, None, None, None, None, None


class _Int8LinearDualFunction(_Int8LinearFunction):
    """:class:`_Int8LinearFunction` in forward-mode AD (``forward_ad_active``), with the tangent straight through to
    the de-quantized weight too (``x_t @ W_deq.T``): bitsandbytes' ops gave a zero tangent."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _Int8LinearFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[2], inputs[3])
        ctx.out_shape, ctx.out_dtype = output.shape, output.dtype

    @staticmethod
    def jvp(ctx, x_tangent, bias_tangent, *_):  # noqa: ANN001, ANN205
        weight, weight_scale = ctx.saved_tensors
        return straight_through_tangent(x_tangent, bias_tangent, _dequantized(weight, weight_scale), ctx.out_shape,
                                        ctx.out_dtype)


def _dequantized(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return weight.float() * weight_scale.float().reshape(-1, 1)
