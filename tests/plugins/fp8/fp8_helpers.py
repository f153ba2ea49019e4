"""Shared builders for the fp8 tests: layers loaded from fp8 checkpoint tensors, and error metrics."""

from __future__ import annotations

from typing import Any

import torch
from fvq_fp8.config import Fp8Config

from fastvideo_quant.layers.linear import ReplicatedLinear


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def fp8_layer(weight: torch.Tensor, config: dict[str, Any], *, bias: torch.Tensor | None = None,
              dtype: torch.dtype = torch.bfloat16, activations: torch.Tensor | None = None,
              device: str = "cpu") -> ReplicatedLinear:
    """A ReplicatedLinear holding ``weight`` ([N, K]) written by ``quantize_weight`` and read back."""
    writer = Fp8Config.from_config(config)
    tensors = writer.quantize_weight(weight, activations=activations)
    cfg = Fp8Config.from_config(writer.to_dict())
    n, k = weight.shape
    with torch.device(device):
        layer = ReplicatedLinear(k, n, bias=bias is not None, params_dtype=dtype, quant_config=cfg, prefix="l")
    params = dict(layer.named_parameters())
    for name, t in tensors.items():
        params[name].weight_loader(params[name], t.to(device))
    if bias is not None:
        layer.weight_loader(layer.bias, bias.to(device, dtype))
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def reference(layer: ReplicatedLinear, x: torch.Tensor) -> torch.Tensor:
    """float32 ``x @ dequantize_weight(layer).T + bias``."""
    ref = x.float() @ layer.quant_method.dequantize_weight(layer).T
    return ref if layer.bias is None else ref + layer.bias.float()
