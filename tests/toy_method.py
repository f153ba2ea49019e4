"""A minimal third-party-style method for the `fvq quantize` tests: per-row symmetric int8 weights.

It writes its skip list under its own key (``skip_modules``), as a real format would,
so the tests check that ``fvq quantize`` goes through the contract attribute
``modules_to_not_convert`` rather than assuming a key. ``toy-noskip`` forgets the skip
list in ``to_dict``: quantizing with it must fail loudly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fastvideo_quant.parameter import ChannelQuantScaleParameter, ModelWeightParameter
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.base import LinearMethodBase, QuantizationConfig


class ToyLinearMethod(LinearMethodBase):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        out = sum(output_partition_sizes)
        loader = extra["weight_loader"]
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(out, input_size_per_partition, dtype=torch.int8), input_dim=1, output_dim=0,
            weight_loader=loader))
        layer.register_parameter("weight_scale", ChannelQuantScaleParameter(
            data=torch.empty(out, dtype=torch.float32), output_dim=0, weight_loader=loader))

    def dequantize_weight(self, layer) -> torch.Tensor:
        return layer.weight.float() * layer.weight_scale[:, None]

    def apply(self, layer, x, bias=None):
        return F.linear(x, self.dequantize_weight(layer).to(x.dtype), bias)


class ToyConfig(QuantizationConfig):
    #: (prefix, activations shape or None) of every quantize_weight call, for the tests.
    calls: list[tuple[str, tuple[int, ...] | None]] = []

    @classmethod
    def get_name(cls) -> str:
        return "toy-int8"

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.float32, torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @classmethod
    def cpu_support(cls) -> str | None:
        return "torch"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ToyConfig:
        self = cls()
        self.modules_to_not_convert = list(config.get("skip_modules") or [])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.get_name(), "skip_modules": list(self.modules_to_not_convert)}

    def get_quant_method(self, layer, prefix):
        from fastvideo_quant.layers.linear import LinearBase, UnquantizedLinearMethod

        if not isinstance(layer, LinearBase):
            return None
        return UnquantizedLinearMethod() if self.is_layer_skipped(prefix) else ToyLinearMethod()

    def quantize_weight(self, weight, *, prefix="", activations=None):
        if activations is not None and activations.shape[-1] != weight.shape[1]:
            raise ValueError(f"{prefix}: activations {tuple(activations.shape)} do not fit weight {tuple(weight.shape)}")
        ToyConfig.calls.append((prefix, None if activations is None else tuple(activations.shape)))
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        return {"weight": torch.round(w / scale[:, None]).to(torch.int8), "weight_scale": scale}


class ToyNoSkipConfig(ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-noskip"

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.get_name()}


class ToyPlugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(ToyConfig, ToyLinearMethod, weight_loader_v2=True)
        register(ToyNoSkipConfig, ToyLinearMethod, weight_loader_v2=True)


class ForgetfulMethod(ToyLinearMethod):
    """Bug: a scale registered without the layer's weight_loader."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        out = sum(output_partition_sizes)
        layer.register_parameter("weight_scale", torch.nn.Parameter(torch.ones(out), requires_grad=False))


class ForgetfulConfig(ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-forgetful"

    def get_quant_method(self, layer, prefix):
        return ForgetfulMethod()


class ForgetfulPlugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(ForgetfulConfig, ForgetfulMethod, weight_loader_v2=False)
