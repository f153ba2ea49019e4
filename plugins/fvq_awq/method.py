"""The AWQ linear method: creates the AutoAWQ parameters, repacks them, and runs CPU or GPU kernels."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fastvideo_quant.errors import NotProcessedError, ShardingError
from fastvideo_quant.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
)
from fastvideo_quant.quantization.base import LinearMethodBase
from fvq_awq import ops as awq_ops
from fvq_awq.config import AWQConfig
from fvq_awq.format import PACK_FACTOR
from fvq_awq.layout import dequantize_kernel, repack_to_kernel


@functools.cache
def awq_linear_cuda() -> Callable[..., torch.Tensor]:
    """The GPU dispatcher (Triton kernels), imported once on first use: CPU installs may lack Triton."""
    from fvq_awq.kernels.dispatch import awq_linear_cuda as linear

    return linear


def _working_tp_sizes(full_outputs: list[int], full_input: int, group: int,
                      row: bool) -> list[int]:
    """TP sizes (up to 64) at which every per-rank size keeps packing and group alignment."""
    good = []
    for tp in range(1, 65):
        outs_ok = row or all(s % tp == 0 and (s // tp) % PACK_FACTOR == 0 for s in full_outputs)
        in_ok = not row or (full_input % tp == 0 and (group == -1 or (full_input // tp) % group == 0))
        if outs_ok and in_ok:
            good.append(tp)
    return good


def check_alignment(layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                    input_size: int, group_size: int) -> None:
    """ShardingError naming the layer, the size and the TP sizes that work, when a shard breaks alignment."""
    name = getattr(layer, "prefix", "") or type(layer).__name__
    tp = getattr(layer, "tp_size", 1)
    row = input_size_per_partition != input_size
    full_outputs = [s * (1 if row else tp) for s in output_partition_sizes]
    problems = [f"output shard {i} has {s} columns per rank, not a multiple of {PACK_FACTOR} (int4 packing)"
                for i, s in enumerate(output_partition_sizes) if s % PACK_FACTOR]
    if group_size != -1 and input_size_per_partition % group_size:
        problems.append(f"input size per rank {input_size_per_partition} is not a multiple of group_size {group_size}")
    if input_size_per_partition % PACK_FACTOR:
        problems.append(f"input size per rank {input_size_per_partition} is not a multiple of {PACK_FACTOR}")
    if problems:
        works = _working_tp_sizes(full_outputs, input_size, group_size, row)
        raise ShardingError(
            f"AWQ layer {name!r} ({type(layer).__name__}, TP size {tp}): " + "; ".join(problems)
            + f". TP sizes that keep this layer aligned: {works}"
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

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        group_size = self.quant_config.group_size
        check_alignment(layer, input_size_per_partition, output_partition_sizes, input_size, group_size)
        loader = extra_weight_attrs["weight_loader"]
        out = sum(output_partition_sizes)
        qweight = PackedvLLMParameter(
            data=torch.empty(input_size_per_partition, out // PACK_FACTOR, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR, weight_loader=loader)
        if group_size == -1:
            qzeros = PackedColumnParameter(data=torch.empty(1, out // PACK_FACTOR, dtype=torch.int32),
                                           output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR, weight_loader=loader)
            # fp16 as on disk (AutoAWQ): storing in bf16 would round the scales.
            scales = ChannelQuantScaleParameter(data=torch.empty(1, out, dtype=torch.float16), output_dim=1,
                                                weight_loader=loader)
        else:
            groups = input_size_per_partition // group_size
            qzeros = PackedvLLMParameter(data=torch.empty(groups, out // PACK_FACTOR, dtype=torch.int32),
                                         input_dim=0, output_dim=1, packed_dim=1, packed_factor=PACK_FACTOR,
                                         weight_loader=loader)
            scales = GroupQuantScaleParameter(data=torch.empty(groups, out, dtype=torch.float16),
                                              input_dim=0, output_dim=1, weight_loader=loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)
        layer.awq_in_features = input_size_per_partition
        layer.awq_out_features = out

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Repack into the K-major kernel layout (see ``fvq_awq.layout``) and drop the checkpoint tensors."""
        k = layer.awq_in_features
        group = k if self.quant_config.group_size == -1 else self.quant_config.group_size
        qw, zeros, scales, layout = repack_to_kernel(layer.qweight.data, layer.qzeros.data, layer.scales.data, group)
        for name in ("qweight", "qzeros", "scales"):
            delattr(layer, name)
        layer.register_buffer("qweight_k", qw, persistent=False)
        layer.register_buffer("zeros_k", zeros, persistent=False)
        layer.register_buffer("scales_k", scales, persistent=False)
        layer.awq_layout = layout

    def _checked_layout(self, layer: torch.nn.Module):
        if not hasattr(layer, "awq_layout"):
            raise NotProcessedError(
                f"AWQ layer {getattr(layer, 'prefix', '')!r}: process_weights_after_loading() has not run; "
                "call it after loading the checkpoint and before apply()"
            )
        return layer.awq_layout

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        layout = self._checked_layout(layer)
        return dequantize_kernel(layer.qweight_k, layer.zeros_k, layer.scales_k, layout)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        layout = self._checked_layout(layer)
        if x.is_cuda:
            if torch.compiler.is_compiling():  # one opaque op for dynamo; eager skips the op wrapper's host time
                return awq_ops.linear(x, layer.qweight_k, layer.zeros_k, layer.scales_k, bias, layout.in_features,
                                      layout.out_features, layout.group, layout.bk8)
            return awq_linear_cuda()(x, layer.qweight_k, layer.zeros_k, layer.scales_k, layout, bias)
        w = dequantize_kernel(layer.qweight_k, layer.zeros_k, layer.scales_k, layout)
        b = None if bias is None else bias.float()
        return F.linear(x.float(), w, b).to(x.dtype)
