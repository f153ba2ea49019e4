"""The fp8 linear method: checkpoint parameters, their kernel format, and ``apply``.

Loaded (checkpoint) format, per rank — parameter classes do the TP sharding (weight_loader_v2):

* ``weight`` float8_e4m3fn ``[out, in]`` (ModelWeightParameter); online: ``params_dtype``, quantized
  in ``process_weights_after_loading`` per tensor, per channel or per block (``weight_scale_inv``);
* ``weight_scale``: PerTensorScaleParameter ``[num_shards]`` (one per q/k/v or gate/up) or
  ChannelQuantScaleParameter ``[out, 1]``; block: ``weight_scale_inv`` BlockQuantScaleParameter (named
  ``weight_scale`` for a compressed-tensors checkpoint, as it stores them; ``weight_scale_inv`` once processed);
* ``input_scale`` (static activations): PerTensorScaleParameter ``[num_shards]``.

Scales start as NaN and record which entries a load wrote (``fvq_fp8.loading``): ``validate_loaded_weights``
tells a scale the checkpoint never provided from one stored as NaN, and refuses both, and any scale that is not
finite and > 0, and a NaN fp8 weight — before any layer is processed. Weight scales implying weights above 1e4
(448 x scale: a scale stored as its reciprocal) return an Fp8ScaleWarning, which the loader issues once a load
(``fvq_fp8.plausible``).

Kernel format after ``process_weights_after_loading``: ``weight`` fp8 ``[out, in]``
row-major (its ``.t()`` is the column-major operand ``_scaled_mm`` wants, so nothing is
transposed), ``weight_scale`` float32 ``[1, out]``, ``weight_scale_scalar`` (one element, or
None when the channels' scales differ), ``input_scale`` (one element or None); the derived
tensors are buffers, so ``layer.to()`` moves them, and persistent, so a loaded layer's ``state_dict`` holds every
tensor ``apply`` reads (``load_state_dict`` between two loaded models restores the same outputs).
Block: ``weight_scale_inv`` float32 (one grid per fused shard, stacked: partial last blocks are part of the
format) and its ``weight_scale_cols`` ``[ceil(in/bk), out]`` buffer. Per-shard
scalars are *expanded to per-channel*, not re-quantized to the largest: that keeps every
stored fp8 value with the scale it was written with, so per-shard and fused loading agree
exactly (vLLM's max-scale re-quantization rounds the smaller shards a second time).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Parameter

from fastvideo_quant.errors import ModelStateError, ShardingError
from fastvideo_quant.layers.base import not_processed_error, tp_sizes_allowed, weights_processed
from fastvideo_quant.layers.linear import rank_sizes
from fastvideo_quant.parameter import ModelWeightParameter
from fastvideo_quant.processing import warn_if_called_directly
from fastvideo_quant.quantization.base import (
    LinearMethodBase,
    act_dtype_error,
    batched,
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
from fvq_fp8 import loading, plausible
from fvq_fp8.format import (
    FP8_DTYPE,
    expand_row_block_scale,
    quantize_per_block,
    quantize_per_channel,
    quantize_per_tensor,
    shard_scales_to_channels,
)
from fvq_fp8.kernels import gemm

if TYPE_CHECKING:
    from fvq_fp8.config import Fp8Config


class Fp8LinearMethod(LinearMethodBase):
    """W8A8 float8 e4m3 linear: fp8 ``_scaled_mm`` (and Triton kernels) on CUDA sm_89+; on CPU the same fp8
    product as a float32 matmul of the upcast operands (``kernels.gemm.fp8_product``)."""

    def __init__(self, quant_config: Fp8Config) -> None:
        self.quant_config = quant_config
        self._block = quant_config.weight_scale_strategy == "block"
        self._fast_accum = quant_config.use_fast_accum
        self._act_dtypes = tuple(quant_config.get_supported_act_dtypes())

    # --- checkpoint parameters ---------------------------------------------------------
    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        cfg = self.quant_config
        loader = extra_weight_attrs["weight_loader"]
        out = sum(output_partition_sizes)
        layer.logical_widths = list(output_partition_sizes)
        layer.orig_dtype = params_dtype
        # (a float weight to quantize on load starts NaN: processing one never loaded is refused as such, where it
        # quantized whatever memory torch.empty held)
        weight = (torch.empty(out, input_size_per_partition, dtype=FP8_DTYPE) if cfg.is_checkpoint_fp8_serialized
                  else torch.full((out, input_size_per_partition), float("nan"), dtype=params_dtype))
        layer.register_parameter(
            "weight", ModelWeightParameter(data=weight, input_dim=1, output_dim=0, weight_loader=loader)
        )
        layer.weight.nan_until_loaded = not cfg.is_checkpoint_fp8_serialized  # (check_finite: "never loaded")
        if not cfg.is_checkpoint_fp8_serialized:
            return
        shards = len(output_partition_sizes)
        if cfg.weight_scale_strategy == "block":
            _check_block_alignment(layer, cfg.weight_block_size)
            bn, bk = cfg.weight_block_size
            rows = sum(math.ceil(p / bn) for p in output_partition_sizes)  # one grid per shard, partial blocks kept
            scale = _nan(rows, math.ceil(input_size_per_partition / bk))
            layer.register_parameter(cfg.block_scale_name, loading.tracked(loading.TrackedBlockScaleParameter(
                part_sizes=output_partition_sizes, data=scale, input_dim=1, output_dim=0,
                block_size=cfg.weight_block_size, weight_loader=loader)))
        elif cfg.weight_scale_strategy == "channel":
            layer.register_parameter("weight_scale", loading.tracked(loading.TrackedChannelQuantScaleParameter(
                data=_nan(out, 1), output_dim=0, weight_loader=loader)))
        else:
            layer.register_parameter("weight_scale", loading.tracked(loading.TrackedPerTensorScaleParameter(
                data=_nan(shards), weight_loader=loader)))
        if cfg.activation_scheme == "static":
            layer.register_parameter("input_scale", loading.tracked(loading.TrackedPerTensorScaleParameter(
                data=_nan(shards), weight_loader=loader)))

    # --- checks on the loaded tensors --------------------------------------------------------
    def validate_loaded_weights(self, layer: torch.nn.Module) -> plausible.Fp8ScaleWarning | None:
        """WeightLoadError for a scale never loaded, a scale not finite and > 0, or a NaN/inf weight or bias
        (read-only); an Fp8ScaleWarning, returned for the loader to issue once a load, for weight scales implying
        implausibly large weights (plausible.py)."""
        if weights_processed(layer):
            return None  # already in the kernel format (checked on the way there)
        loading.check_weight(layer, FP8_DTYPE)
        check_finite(layer, "bias", "fp8")
        for name in ("weight_scale", "weight_scale_inv", "input_scale"):
            if isinstance(layer._parameters.get(name), torch.Tensor):
                loading.check_scale(layer, name)
        return plausible.implausible(layer, [n for n in ("weight_scale", "weight_scale_inv")
                                             if isinstance(layer._parameters.get(n), torch.Tensor)])

    # --- kernel format -------------------------------------------------------------------
    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        cfg = self.quant_config
        # (the loader ran it already and issued its warning with the other layers'; a direct call gets the same)
        warn_if_called_directly(self.validate_loaded_weights(layer))
        if cfg.is_checkpoint_fp8_serialized:
            weight, row = self._loaded_weight(layer)
        else:
            weight, row = self._online_quantize(layer)
        layer.weight = Parameter(weight.contiguous(), requires_grad=False)
        if row is not None:
            layer.weight_scale = Parameter(row.reshape(1, -1).contiguous(), requires_grad=False)
            uniform = bool((row == row.reshape(-1)[0]).all())
            _set_buffer(layer, "weight_scale_scalar", row.reshape(-1)[0].clone() if uniform else None)
        input_scale = getattr(layer, "input_scale", None)
        if input_scale is not None:
            # One activation feeds every fused shard: the largest calibrated scale covers them all.
            layer.input_scale = Parameter(input_scale.data.float().amax().reshape(()), requires_grad=False)
        else:
            _set_buffer(layer, "input_scale", None)
        if self._block:
            _set_buffer(layer, "weight_scale_cols", _block_scale_cols(layer, cfg))
            # weight_scale_inv is the fused weight's 128x128 grid when the blocks are 128x128 and every fused shard is
            # whole blocks; cuBLASLt takes it (gemm.block_scaled_mm) when its rows are a multiple of 4 floats.
            k_blocks = layer.weight_scale_inv.shape[1]
            layer.fp8_block_grid = (tuple(cfg.weight_block_size) == (gemm.BLOCK_MM, gemm.BLOCK_MM) and k_blocks % 4 == 0
                                    and all(w % gemm.BLOCK_MM == 0 for w in layer.logical_widths))
        n, k = layer.weight.shape
        layer.fp8_gpu_shape_ok = k % 16 == 0 and n % 16 == 0  # torch._scaled_mm's CUDA constraint
        layer.fp8_weight_shape = layer.weight.shape  # (what every call checks the weight against)

    def _loaded_weight(self, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.quant_config
        if cfg.weight_scale_strategy == "block":
            # (compressed-tensors names block scales weight_scale: the kernel format calls them weight_scale_inv)
            loaded = layer._parameters.pop(cfg.block_scale_name)
            layer.weight_scale_inv = Parameter(loaded.data.float(), requires_grad=False)
            return layer.weight.data, None
        if cfg.weight_scale_strategy == "channel":
            return layer.weight.data, layer.weight_scale.data.float().reshape(-1)
        return layer.weight.data, shard_scales_to_channels(layer.weight_scale.data, layer.logical_widths)

    def _online_quantize(self, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = layer.weight.data
        if self._block:
            # The tiles quantize_weight writes for each checkpoint tensor: one grid per fused shard.
            tiles = [quantize_per_block(part, self.quant_config.weight_block_size)
                     for part in w.split(layer.logical_widths)]
            layer.weight_scale_inv = Parameter(torch.cat([s for _, s in tiles]), requires_grad=False)
            return torch.cat([q for q, _ in tiles]), None
        if self.quant_config.weight_scale_strategy == "channel":
            q, scale = quantize_per_channel(w)
            return q, scale.reshape(-1)
        # One scale for the whole (possibly fused) layer: enables the tensor-wise GEMM.
        q, scale = quantize_per_tensor(w)
        return q, scale.reshape(1).expand(w.shape[0]).clone()

    # --- compute -----------------------------------------------------------------------
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # Hot path (host time dominates at small M): no imports, no per-call config lookups.
        if not torch.compiler.is_compiling():
            _check_input(layer, x)
        # (also while compiling: requires_grad and grad mode are guarded constants, and a compiled model trained with
        # a float8 weight turned on skipped it as silently)
        check_frozen_storage(layer, "fp8", _name(layer))
        if x.dtype not in self._act_dtypes:  # (also under torch.compile, where it is a constant)
            raise act_dtype_error("fp8", _name(layer), x, self._act_dtypes)
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        if x2.shape[0] == 0:
            return no_rows_output(x2, layer.weight.shape[0], bias).reshape(*x.shape[:-1], layer.weight.shape[0])
        if self._block:
            grid = layer.weight_scale_inv if layer.fp8_block_grid else None
            args = (x2, bias, layer.weight, layer.weight_scale_cols, grid, None, self.quant_config.weight_block_size[1],
                    self._fast_accum)
        else:
            args = (x2, bias, layer.weight, layer.weight_scale, layer.weight_scale_scalar, layer.input_scale, None,
                    self._fast_accum)
        if takes_linear_op(x2, bias):
            out = _linear_op(*args)
        elif needs_autograd(x2, bias):
            out = (_Fp8LinearDualFunction if forward_ad_active() else _Fp8LinearFunction).apply(*args)
        else:
            out = _fp8_forward(*args)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], out.shape[-1])

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        if self.quant_config.weight_scale_strategy == "block":
            return _dequantized(layer.weight.data, layer.weight_scale_cols.data, self.quant_config.weight_block_size[1])
        return _dequantized(layer.weight.data, layer.weight_scale.data, None)


def _dequantized(weight: torch.Tensor, scale: torch.Tensor, block_k: int | None) -> torch.Tensor:
    """Float32 ``[out, in]`` of the kernel-format weight: per block (``scale`` is ``weight_scale_cols``) or per
    channel / tensor (``weight_scale``)."""
    if block_k is not None:
        return expand_row_block_scale(scale.t(), block_k, weight.shape[1]) * weight.float()
    return weight.float() * scale.reshape(-1, 1)


def _fp8_forward(x2: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor, scale: torch.Tensor,
                 scalar: torch.Tensor | None, input_scale: torch.Tensor | None, block_k: int | None,
                 fast_accum: bool) -> torch.Tensor:
    """``scale``: the per-row weight scales (``weight_scale``), or with block scales (``block_k`` set)
    ``weight_scale_cols``; ``scalar``: the one weight scale when uniform, or with block scales the 128x128 block grid
    (``weight_scale_inv``) when the layer has one (``fp8_block_grid``)."""
    if block_k is not None:
        return gemm.fp8_block_linear(x2, weight, scale, block_k, bias, scalar)
    return gemm.fp8_linear(x2, weight, scale, scalar, input_scale, bias, fast_accum)


#: ``apply``'s forward as one op with the backward below and a batching rule, where ``takes_linear_op`` says: export,
#: torch.compile in grad mode (dynamo traced the Function's forward and failed with a dynamic token count:
#: "lift_tracked_freevar_to_input should not be called on root SubgraphTracer"), vmap
_linear_op = straight_through_linear_op(
    "fvq_fp8::quantized_linear", _fp8_forward,
    lambda weight, scale, scalar, input_scale, block_k, fast_accum: _dequantized(weight, scale, block_k))


class _Fp8LinearFunction(torch.autograd.Function):
    """``apply`` where autograd sees it (grad mode, an input or the bias requiring grad): the forward is the fp8 GEMM,
    the backward passes the gradient straight through the activation's quantization to the de-quantized weight
    (``grad_x = grad @ W_deq``), as AWQ's float path computes it.

    ``torch._scaled_mm`` has no derivative: without this a backward failed, and so did ``torch.compile`` of a model in
    grad mode (AOTAutograd traces the backward) — "derivative for aten::_scaled_mm is not implemented".
    """

    #: torch.func.vmap over it (vmap(grad(f)) per-sample gradients, jacfwd, hessian): forward, backward and jvp are
    #: batched as torch ops (and fp8's activation-quantization ops, which have batching rules); without it vmap refused
    #: the Function ("does not have vmap support")
    generate_vmap_rule = True

    # (forward without ctx, and setup_context: the form torch.func's transforms — grad, vjp, jacrev — take)
    @staticmethod
    def forward(x2, bias, weight, scale, scalar, input_scale, block_k, fast_accum):  # noqa: ANN001, ANN205
        # (vmap over the Function, per-sample gradients: the op's batching rule)
        forward = _linear_op if batched(x2, bias) else _fp8_forward
        return forward(x2, bias, weight, scale, scalar, input_scale, block_k, fast_accum)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.save_for_backward(inputs[2], inputs[3])
        ctx.block_k = inputs[6]

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, scale = ctx.saved_tensors
        grad_x, grad_bias = straight_through_grads(grad, _dequantized(weight, scale, ctx.block_k),
                                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1], grad.dtype)
        return grad_x, grad_bias, None, None, None, None, None, None


class _Fp8LinearDualFunction(_Fp8LinearFunction):
    """:class:`_Fp8LinearFunction` in forward-mode AD (``forward_ad_active``), with the tangent straight through to the
    de-quantized weight too (``x_t @ W_deq.T``): the kernel's ops gave a zero tangent, or none."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _Fp8LinearFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[2], inputs[3])
        ctx.out_shape, ctx.out_dtype = output.shape, output.dtype

    @staticmethod
    def jvp(ctx, x_tangent, bias_tangent, *_):  # noqa: ANN001, ANN205
        weight, scale = ctx.saved_tensors
        return straight_through_tangent(x_tangent, bias_tangent, _dequantized(weight, scale, ctx.block_k),
                                        ctx.out_shape, ctx.out_dtype)


def _nan(*shape: int) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=torch.float32)


def _set_buffer(layer: torch.nn.Module, name: str, value: torch.Tensor | None) -> None:
    """A derived tensor as a buffer: ``layer.to()``/``.cuda()`` move it; persistent, so state_dict keeps it (None:
    no entry)."""
    if name in layer._parameters:
        del layer._parameters[name]
    elif name in vars(layer):
        delattr(layer, name)
    layer.register_buffer(name, value)


_name = loading.layer_name


def _block_scale_cols(layer: torch.nn.Module, cfg: Fp8Config) -> torch.Tensor:
    """``[ceil(K/bk), N]``: each K block's weight scale per output row (the block GEMM's layout).

    Computed once after loading (``weight_scale_cols`` buffer, ``N * K / bk`` floats), not per apply.
    """
    rows = loading.block_rows(layer.logical_widths, cfg.weight_block_size[0], layer.weight_scale_inv.device)
    return layer.weight_scale_inv[rows].t().contiguous()

def _check_input(layer: torch.nn.Module, x: torch.Tensor) -> None:
    # On every eager call: attribute reads and integer compares only (host time is what mid-M eager calls are bound
    # by); messages are built on failure.
    if not weights_processed(layer):
        raise not_processed_error(layer)
    weight = layer.weight
    if weight.dtype != FP8_DTYPE or weight.shape != layer.fp8_weight_shape:  # (before the input is measured by it)
        raise ModelStateError(
            f"fp8 layer {_name(layer)!r}: weight is {weight.dtype} {tuple(weight.shape)}, expected {FP8_DTYPE} "
            f"{tuple(layer.fp8_weight_shape)} — it was replaced or cast by hand (module-wide casts such as "
            "model.to(dtype) keep it; functional_call and assignments do not); load the checkpoint again into a fresh "
            "model"
        )
    k = weight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"fp8 layer {_name(layer)!r}: input's last dim must be {k}, found shape {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"fp8 layer {_name(layer)!r}: input is on {x.device}, the weight on {weight.device}; move "
                         "the input to the layer's device")
    if x.is_cuda:
        gemm.require_fp8_gpu_index(x.get_device())
        if not layer.fp8_gpu_shape_ok:
            n = weight.shape[0]
            raise ShardingError(
                f"fp8 layer {_name(layer)!r}: torch._scaled_mm on CUDA needs in and out sizes divisible by 16, "
                f"this rank has in={k}, out={n}; pick a TP size that keeps them multiples of 16"
            )


def _check_block_alignment(layer: torch.nn.Module, block: tuple[int, int]) -> None:
    """ShardingError when a TP split cuts through a block (vLLM validate_block_quant_shapes), naming the TP sizes
    that work. Unsplit sizes need no alignment: a partial last block is part of the format."""
    tp = getattr(layer, "tp_size", 1)
    problems = _block_problems(layer, block, tp)
    if problems:
        works = tp_sizes_allowed(lambda t: rank_sizes(layer, t), lambda s: block_shard_problems(*s, block))[1]
        raise ShardingError(
            f"fp8 layer {_name(layer)!r} ({type(layer).__name__}, TP size {tp}): " + "; ".join(problems)
            + f", so its block scales cannot be split across TP ranks at block size {list(block)}. "
            f"TP sizes that work for this layer: {works}"
        )


def _block_problems(layer: torch.nn.Module, block: tuple[int, int], tp: int) -> list[str] | None:
    """Why TP size ``tp`` cuts through a block of ``layer`` ([] if it does not; None if the layer cannot split so)."""
    sizes = rank_sizes(layer, tp)
    return None if sizes is None else block_shard_problems(*sizes, block)


def block_shard_problems(parts: list[int], whole: list[int], in_rank: int, in_total: int,
                         block: tuple[int, int]) -> list[str]:
    """Why a shard of these sizes cuts through a block (a split part or input not whole blocks); [] if it does not.
    Unsplit sizes need no alignment: a partial last block is part of the format."""
    bn, bk = block
    problems = [f"output shard {i} has {p} rows per rank (of {w}), not a multiple of bn={bn}"
                for i, (p, w) in enumerate(zip(parts, whole, strict=True)) if p != w and p % bn]
    if in_rank != in_total and in_rank % bk:
        problems.append(f"input size per rank {in_rank} (of {in_total}) is not a multiple of bk={bk}")
    return problems
