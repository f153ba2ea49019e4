"""Shared helpers of the int8 plugin tests: building layers, loading bitsandbytes state dicts, errors."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from fastvideo_quant.layers.linear import LinearBase

#: The Triton-backend tests need triton (the [test] extra installs it); without it they skip, saying so.
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="the int8 Triton backend needs triton: pip install 'triton>=3.9'")
TRITON = pytest.param("triton", marks=needs_triton)


def ensure_registered() -> None:
    """Without an installed entry point (a bare checkout on PYTHONPATH), register the plugin in-process."""
    from fastvideo_quant.plugins import ensure_registered as ensure

    ensure("int8", "fvq_int8.hooks")


def config(**kw: Any):
    from fvq_int8 import Int8Config

    return Int8Config.from_config({"quant_method": "bitsandbytes", "load_in_8bit": True,
                                   "llm_int8_threshold": 0.0, **kw})


def load(layer: LinearBase, tensors: dict[str, torch.Tensor], shard_id: Any = None) -> None:
    """Load checkpoint tensors by name through each parameter's weight_loader (as a model loader does)."""
    params = dict(layer.named_parameters())
    for name, tensor in tensors.items():
        param = params[name]
        if shard_id is None:
            param.weight_loader(param, tensor)
        else:
            param.weight_loader(param, tensor, shard_id)


def bnb_state_dict(weight: torch.Tensor, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What bitsandbytes itself saves for a ``Linear8bitLt`` holding ``weight`` (quantized by bitsandbytes)."""
    import bitsandbytes as bnb

    n, k = weight.shape
    fp = torch.nn.Linear(k, n, bias=bias is not None)
    with torch.no_grad():
        fp.weight.copy_(weight)
        if bias is not None:
            fp.bias.copy_(bias)
    mod = bnb.nn.Linear8bitLt(k, n, bias=bias is not None, has_fp16_weights=False, threshold=0.0)
    mod.load_state_dict(fp.state_dict())
    mod = mod.to("cpu")  # quantizes: Int8Params -> int8 CB + SCB
    return {k: v.clone() for k, v in mod.state_dict().items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()
