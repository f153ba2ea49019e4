"""The AWQ linear method: creates the AutoAWQ parameters, repacks them, and runs CPU or GPU kernels."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fastvideo_quant.errors import ConfigError, ModelStateError, ShardingError
from fastvideo_quant.layers.base import not_processed_error, tp_sizes_allowed
from fastvideo_quant.layers.linear import rank_sizes
from fastvideo_quant.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
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
    straight_through_grads,
    straight_through_tangent,
)
from fvq_awq import fp8_compute
from fvq_awq import ops as awq_ops
from fvq_awq.config import SUPPORTED_GROUP_SIZES, AWQConfig
from fvq_awq.format import PACK_FACTOR
from fvq_awq.layout import dequantize_kernel, repack_to_kernel
from fvq_awq.loading import group_rows_loader


@functools.cache
def awq_linear_cuda() -> Callable[..., torch.Tensor]:
    """The GPU dispatcher (Triton kernels), imported once on first use: CPU installs may lack Triton."""
    from fvq_awq.kernels.dispatch import awq_linear_cuda as linear

    return linear


def _rank_sizes(layer: torch.nn.Module, tp: int) -> tuple[list[int], int] | None:
    """``(output parts per rank, input per rank)`` of ``layer`` at TP size ``tp`` (the core's ``rank_sizes``); None
    when it cannot split so."""
    sizes = rank_sizes(layer, tp)
    return None if sizes is None else (sizes[0], sizes[2])


def _problems(parts: list[int], in_rank: int, group: int, fp8: bool = False) -> list[str]:
    """Why AWQ cannot hold a shard with output ``parts`` and ``in_rank`` inputs per rank (``fp8``: under
    ``fp8_compute``, whose fp8 product needs both in multiples of 16); [] when it can."""
    problems = [f"output shard {i} has {s} columns per rank, not a multiple of {PACK_FACTOR} (int4 packing)"
                for i, s in enumerate(parts) if s % PACK_FACTOR]
    if group != -1 and in_rank % group:
        problems.append(f"input size per rank {in_rank} is not a multiple of group_size {group}")
    if in_rank % PACK_FACTOR:
        problems.append(f"input size per rank {in_rank} is not a multiple of {PACK_FACTOR} (the kernels' layout packs "
                        f"{PACK_FACTOR} inputs into each int32 word)")
    fp8_problem = fp8 and fp8_compute.shape_problem(in_rank, sum(parts))
    if fp8_problem:
        problems.append(f"fp8_compute: {fp8_problem}")
    return problems


def _working_tp_sizes(layer: torch.nn.Module, group: int, fp8: bool = False) -> list[int]:
    """TP sizes (up to 64) at which this layer splits with every per-rank size packed and group-aligned (and, with
    ``fp8``, in multiples of 16 for fp8_compute)."""
    return tp_sizes_allowed(lambda tp: rank_sizes(layer, tp), lambda s: _problems(s[0], s[2], group, fp8))[1]


def _what_would_work(layer: torch.nn.Module, name: str, skip_key: str = "modules_to_not_convert") -> str:
    """The advice when no TP size works: the group sizes that fit the layer whole, or leaving it unquantized (listing
    it under ``skip_key``, the format's skip list)."""
    sizes = _rank_sizes(layer, 1)
    fits = [g for g in SUPPORTED_GROUP_SIZES if sizes is not None and not _problems(*sizes, g)]
    how = (f"quantize it with a group_size in {fits} (one that divides its input size {layer.input_size})" if fits
           else f"no AWQ group size fits its sizes (input {layer.input_size}, output {layer.output_size})")
    return (f"No TP size fixes this layer; {how}, or leave it unquantized when quantizing the checkpoint (list "
            f"{name!r} in {skip_key}: a checkpoint that stores it quantized cannot load it unquantized)")


def _group_sizes_at(tp: int, parts: list[int], in_rank: int, group: int, fp8: bool = False) -> str:
    """The advice to keep TP size ``tp`` instead: the other group sizes that align this rank's shard (none when the
    problem is the int4 packing or fp8_compute's sizes, which no group size changes)."""
    fits = [g for g in SUPPORTED_GROUP_SIZES if g != group and not _problems(parts, in_rank, g, fp8)]
    if not fits:
        return ""
    example = max(fits)  # the coarsest group that fits; -1 (one group per output channel) only when nothing else does
    named = [str(g) + (" (one group over the whole input)" if g == -1 else "") for g in fits]
    sizes = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"
    return (f"; or, to keep TP size {tp}, quantize the checkpoint with group_size {sizes}, e.g. "
            f"fvq quantize SRC --method awq --option group_size={example} --out DST (an AutoAWQ checkpoint; with "
            "llm-compressor: strategy 'group' with that group_size, or 'channel' for -1)")


def check_alignment(layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                    input_size: int, group_size: int, fp8: bool = False, skip_key: str = "modules_to_not_convert") -> None:
    """ShardingError naming the layer, the size and the TP sizes that work (or what would), when a shard breaks
    alignment (``fp8``: fp8_compute's too; the caller refuses a layer that fp8_compute cannot run at any TP size).
    ``skip_key``: the format's skip list, named where leaving the layer unquantized is the fix."""
    name = getattr(layer, "prefix", "") or type(layer).__name__
    tp = getattr(layer, "tp_size", 1)
    problems = _problems(output_partition_sizes, input_size_per_partition, group_size, fp8)
    if problems:
        works = _working_tp_sizes(layer, group_size, fp8)
        advice = (f"TP sizes that keep this layer aligned: {works}" if works
                  else _what_would_work(layer, name, skip_key))
        if works:
            advice += _group_sizes_at(tp, output_partition_sizes, input_size_per_partition, group_size, fp8)
        if fp8 and not _problems(output_partition_sizes, input_size_per_partition, group_size):
            advice += f"; or, to keep TP size {tp}, load without fp8_compute (the exact int4 product has no such rule)"
        if works:  # (the other layers may rule out more: the build stops at this one)
            advice += (". Those are this layer's: tp_fit(model) (fastvideo_quant.layers.linear) checks every layer at "
                       "once, on the model built at TP size 1 on the meta device")
        raise ShardingError(
            f"AWQ layer {name!r} ({type(layer).__name__}, TP size {tp}): " + "; ".join(problems) + f". {advice}"
        )


class AWQLinearMethod(LinearMethodBase):
    """Linear layers with AutoAWQ GEMM int4 weights.

    Checkpoint parameters (vLLM's ``AWQLinearMethod`` names and sharding): ``qweight`` and ``qzeros``
    packed along the output dim (8 per int32), ``scales``; column layers shard all three along the
    output dim, row layers along the input dim in whole groups. ``group_size == -1`` keeps one group,
    so row layers replicate ``qzeros``/``scales`` (the whole-column scale applies to any row subset).
    """

    def __init__(self, quant_config: AWQConfig) -> None:
        self.quant_config = quant_config
        self._act_dtypes = tuple(quant_config.get_supported_act_dtypes())
        self._fp8_min_m = quant_config.min_m_for_fp8()  # (0: the exact product at every M)

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        group_size = self.quant_config.group_size
        self.check_shard(layer, input_size_per_partition, output_partition_sizes, input_size)
        loader = extra_weight_attrs["weight_loader"]
        # a wrong row count explained by group_size (and that the config did not give it)
        group_loader = group_rows_loader(loader, input_size, group_size, self.quant_config.group_size_note())
        out = sum(output_partition_sizes)
        qweight = PackedvLLMParameter(
            data=torch.empty(input_size_per_partition, out // PACK_FACTOR, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR, weight_loader=loader)
        if group_size == -1:
            qzeros = PackedColumnParameter(data=torch.empty(1, out // PACK_FACTOR, dtype=torch.int32),
                                           output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR, weight_loader=group_loader)
            # fp16 as on disk (AutoAWQ): storing in bf16 would round the scales.
            scales = ChannelQuantScaleParameter(data=torch.full((1, out), float("nan"), dtype=torch.float16), output_dim=1,
                                                weight_loader=group_loader)
        else:
            groups = input_size_per_partition // group_size
            qzeros = PackedvLLMParameter(data=torch.empty(groups, out // PACK_FACTOR, dtype=torch.int32),
                                         input_dim=0, output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR,
                                         weight_loader=group_loader)
            scales = GroupQuantScaleParameter(data=torch.full((groups, out), float("nan"), dtype=torch.float16),
                                              input_dim=0, output_dim=1, weight_loader=group_loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)
        layer.awq_in_features = input_size_per_partition
        layer.awq_out_features = out

    def check_shard(self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                    input_size: int) -> None:
        """ConfigError for a layer fp8_compute cannot run at any TP size; ShardingError (check_alignment) for a shard
        the int4 packing, the groups or fp8_compute cannot hold at this TP size. Before anything is created."""
        group_size = self.rank_group_size()
        skip_key = self.quant_config.skip_list_key()
        whole = rank_sizes(layer, 1)
        problem = self._fp8_min_m and whole is not None and fp8_compute.shape_problem(whole[2], sum(whole[0]))
        if problem:  # (before anything is loaded; a layer that fp8_compute can run at other TP sizes: check_alignment)
            name = getattr(layer, "prefix", "") or type(layer).__name__
            raise ConfigError(f"AWQ layer {name!r}: fp8_compute cannot run it: {problem}. fp8_compute applies to "
                              f"every AWQ layer of the model: load without it ({skip_key} does not help here: it "
                              "marks a layer stored unquantized, and this one is stored in int4)")
        try:
            check_alignment(layer, input_size_per_partition, output_partition_sizes, input_size, group_size,
                            bool(self._fp8_min_m), skip_key)
        except ShardingError as exc:
            if not self.quant_config.group_size_note() or "group_size" not in str(exc).split(". ")[0]:
                raise  # (the note only where a group rule is among the problems)
            raise ShardingError(f"{exc}{self.quant_config.group_size_note()}") from None

    def rank_group_size(self) -> int:
        """The group size each rank's inputs must hold whole groups of (-1: no such rule)."""
        return self.quant_config.group_size

    def validate_loaded_weights(self, layer: torch.nn.Module) -> None:
        """WeightLoadError unless every ``scales`` entry is finite and > 0 and the bias is finite (reads the layer only).

        AutoAWQ writes ``scales = (max - min).clamp(min=1e-5) / 15`` (``awq/quantize/quantizer.py``
        ``pseudo_quantize_tensor`` with zero_point): a positive magnitude; the zero point carries the offset.
        Scales start as NaN, so one never loaded (a non-strict load) is refused too.
        """
        if hasattr(layer, "awq_layout"):
            return  # already in the kernel format (checked on the way there)
        check_finite(layer, "bias", "AWQ")
        s = layer.scales.data.float()
        check_entries(layer, "scales", "AWQ", ~torch.isfinite(s) | (s <= 0),
                      expected="finite and > 0 (AutoAWQ's (max - min) / 15)",
                      found="entries that are not",
                      fix="The checkpoint is corrupt or was written by a broken export; re-quantize the layer")

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Repack into the K-major kernel layout (see ``fvq_awq.layout``) and drop the checkpoint tensors."""
        self.validate_loaded_weights(layer)  # the loader ran it already; a direct call gets the same checks
        qw, zeros, scales, layout = self.kernel_tensors(layer)
        for name in self.checkpoint_tensor_names(layer):
            delattr(layer, name)
        # Persistent: a loaded model's state_dict holds what apply reads (copies between loaded models, EMA).
        layer.register_buffer("qweight_k", qw)
        layer.register_buffer("zeros_k", zeros)
        layer.register_buffer("scales_k", scales)
        layer.awq_layout = layout
        if self._fp8_min_m:
            # float32 [N]: each output row's max |W| / 448, the e4m3 weight's per-channel scale (fvq_awq.fp8_compute)
            layer.register_buffer("fp8_scale_k", fp8_compute.channel_scales(qw, zeros, scales, layout))

    def group(self, layer: torch.nn.Module) -> int:
        """This rank's group size in inputs (``-1``: all of this rank's inputs)."""
        return layer.awq_in_features if self.quant_config.group_size == -1 else self.quant_config.group_size

    def kernel_tensors(self, layer: torch.nn.Module):
        """The loaded checkpoint tensors in the kernel format: ``(qweight_k, zeros_k, scales_k, layout)``."""
        return repack_to_kernel(layer.qweight.data, layer.qzeros.data, layer.scales.data, self.group(layer))

    def checkpoint_tensor_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        """The parameters that hold the checkpoint's tensors until they are processed."""
        return ("qweight", "qzeros", "scales")

    def _kernel(self, layer: torch.nn.Module):
        """``(layout, qweight_k, zeros_k, scales_k)`` of a processed layer, the tensors checked against the layout
        (dtypes, the words' shape, the scales' rows) on every call: dict reads and compares only. A tensor replaced by
        hand (``functional_call``, an assignment) with a float copy, a cast or a transposed one was read as codes:
        garbage outputs on CPU, and on the GPU a kernel reading int32 words from a smaller buffer."""
        layout = layer.__dict__.get("awq_layout")
        if layout is None:
            raise not_processed_error(layer)
        buffers = layer._buffers
        q, z, s = buffers["qweight_k"], buffers["zeros_k"], buffers["scales_k"]
        if (q.dtype is not _INT32 or z.dtype is not _UINT8 or s.dtype is not _FLOAT16 or q.shape != layout.words_shape
                or z.shape != s.shape or s.shape[0] != layout.out_features):
            raise _replaced_error(layer, layout, q, z, s)
        return layout, q, z, s

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        layout, q, z, s = self._kernel(layer)
        return dequantize_kernel(q, z, s, layout)

    def input_order(self, layer: torch.nn.Module) -> torch.Tensor | None:
        """The input each kernel input reads (activation ordering: ``fvq_awq.act_order``), or None: the layer's own
        order. AutoAWQ checkpoints have none."""
        return None

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        layout, q, z, s = self._kernel(layer)
        if x.dtype not in self._act_dtypes:  # (a host-side compare; an integer input would come back truncated)
            raise act_dtype_error("AWQ", getattr(layer, "prefix", "") or type(layer).__name__, x, self._act_dtypes)
        # (also while compiling: requires_grad and grad mode are guarded constants, and a compiled model trained with
        # a kernel tensor turned on skipped it as silently)
        check_frozen_storage(layer, "AWQ", getattr(layer, "prefix", "") or type(layer).__name__)
        fp8_scale = layer.fp8_scale_k if self._fp8_min_m else None
        order = self.input_order(layer)
        in_features = layout.in_features if order is None else layer.awq_in_features
        if x.shape[-1] != in_features and (order is not None or not x.is_cuda):  # (else the kernels' own check)
            raise ValueError(
                f"AWQ layer {getattr(layer, 'prefix', '')!r}: input's last dim must be {in_features} (this "
                f"rank's in_features), found shape {tuple(x.shape)}"
            )
        if x.is_cuda:
            # One opaque op for dynamo, for autograd (its backward goes through the de-quantized weight) and for vmap
            # (its batching rule); eager inference skips the op wrapper's host time. With an input order both gather
            # the activations (the Triton gather) before the kernels.
            compiling, grad = torch.compiler.is_compiling(), needs_autograd(x, bias)
            if not (compiling or grad or batched(x, bias)):
                return awq_linear_cuda()(x, q, z, s, layout, bias, fp8_scale, self._fp8_min_m, order, in_features)
            args = (x, q, z, s, bias, layout.in_features, layout.out_features, layout.group, layout.bk8, fp8_scale,
                    self._fp8_min_m, order, in_features)
            if forward_ad_active():  # (the op has no forward derivative)
                return awq_ops.CudaLinearDualFunction.apply(*args)
            if grad and not compiling and torch._C._functorch.is_functorch_wrapped_tensor(x):
                return awq_ops.CudaLinearFunction.apply(*args)  # torch.func.grad & co. (the op's autograd refuses them)
            return awq_ops.linear(*args)
        if order is not None:
            x = x.index_select(-1, order)
        if fp8_scale is not None and fp8_compute.takes(x, layout.in_features, self._fp8_min_m):
            return fp8_compute.linear(x, q, z, s, layout, fp8_scale, bias)
        if needs_autograd(x, bias):
            return (_CpuLinearDualFunction if forward_ad_active() else _CpuLinearFunction).apply(x, q, z, s, layout, bias)
        return _cpu_linear(x, q, z, s, layout, bias)


def _cpu_linear(x: torch.Tensor, q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, layout,
                bias: torch.Tensor | None) -> torch.Tensor:
    """The CPU path: ``F.linear`` in float32 on the de-quantized weight, in ``x``'s dtype."""
    w = dequantize_kernel(q, z, s, layout)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


class _CpuLinearFunction(torch.autograd.Function):
    """The CPU path where autograd sees it: the backward saves the int4 kernel tensors and de-quantizes again, as the
    GPU op's does. Recorded through ``F.linear``, autograd kept the float32 ``[out, in]`` weight alive until backward
    (a LoRA over a 10 KB layer held 64 KB more), and a replaced ``scales_k`` requiring grad got a gradient the GPU op
    does not give."""

    #: torch.func.vmap over it (vmap(grad(f)) per-sample gradients, jacfwd, hessian): forward, backward and jvp are
    #: plain torch ops, batched as such; without it vmap refused the Function ("does not have vmap support")
    generate_vmap_rule = True

    @staticmethod
    def forward(x, q, z, s, layout, bias):  # noqa: ANN001, ANN205
        return _cpu_linear(x, q, z, s, layout, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _, q, z, s, layout, bias = inputs
        ctx.save_for_backward(q, z, s)
        ctx.layout, ctx.bias_dtype = layout, None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        q, z, s = ctx.saved_tensors
        grad_x, grad_bias = straight_through_grads(grad, dequantize_kernel(q, z, s, ctx.layout),
                                                   ctx.needs_input_grad[0], ctx.needs_input_grad[5], ctx.bias_dtype)
        return grad_x, None, None, None, None, grad_bias


class _CpuLinearDualFunction(_CpuLinearFunction):
    """:class:`_CpuLinearFunction` in forward-mode AD (``forward_ad_active``): the tangent through the de-quantized
    weight (``x_t @ W.T``), saving the int4 tensors as the backward does."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _CpuLinearFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[1:4])
        ctx.out_shape, ctx.out_dtype = output.shape, output.dtype

    @staticmethod
    def jvp(ctx, x_tangent, q_tangent, z_tangent, s_tangent, layout_tangent, bias_tangent):  # noqa: ANN001, ANN205
        q, z, s = ctx.saved_tensors
        return straight_through_tangent(x_tangent, bias_tangent, dequantize_kernel(q, z, s, ctx.layout), ctx.out_shape,
                                        ctx.out_dtype)


_INT32, _UINT8, _FLOAT16 = torch.int32, torch.uint8, torch.float16


def _replaced_error(layer: torch.nn.Module, layout, q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> ModelStateError:
    """The error of :meth:`AWQLinearMethod._kernel`, naming each kernel tensor that is not what the layout says."""
    out = layout.out_features
    wrong = []
    if q.dtype != torch.int32 or q.shape != layout.words_shape:
        wrong.append(f"qweight_k is {q.dtype} {tuple(q.shape)}, expected torch.int32 {tuple(layout.words_shape)}")
    for name, t, dtype in (("zeros_k", z, torch.uint8), ("scales_k", s, torch.float16)):
        if t.dtype != dtype or t.shape[:1] != (out,) or z.shape != s.shape:
            wrong.append(f"{name} is {t.dtype} {tuple(t.shape)}, expected {dtype} ({out}, groups), as the other")
    return ModelStateError(
        f"AWQ layer {getattr(layer, 'prefix', '') or type(layer).__name__!r}: {'; '.join(wrong)} — replaced or cast by "
        "hand (module-wide casts such as model.to(dtype) keep them; functional_call and assignments do not): give the "
        "kernel tensors of a loaded layer of the same size, or load the checkpoint again into a fresh model"
    )
