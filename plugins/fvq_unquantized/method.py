"""Plain ``F.linear`` in the input's dtype: the reference every other method is measured against."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fastvideo_quant.parameter import ModelWeightParameter
from fastvideo_quant.quantization.base import (
    LinearMethodBase,
    QuantizationConfig,
    Tolerance,
    act_dtype_error,
    check_finite,
)

#: What ``apply`` computes in (``UnquantizedConfig.get_supported_act_dtypes``).
_ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class UnquantizedLinearMethod(LinearMethodBase):
    """Weights stored as ``[out, in]`` in ``params_dtype``; ``apply`` is ``F.linear``."""

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
        """One float ``weight`` ``[sum(output_partition_sizes), input_size_per_partition]`` in ``params_dtype``,
        sharded by the layer (``output_dim`` 0, ``input_dim`` 1); the bias is the layer's."""
        weight = ModelWeightParameter(
            data=torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            input_dim=1,
            output_dim=0,
            weight_loader=extra_weight_attrs["weight_loader"],
        )
        layer.register_parameter("weight", weight)

    def validate_loaded_weights(self, layer: torch.nn.Module) -> None:
        """WeightLoadError for a NaN/inf entry in the weight or the bias (reads the layer only)."""
        check_finite(layer, "weight", "unquantized")
        check_finite(layer, "bias", "unquantized")

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear`` in ``x``'s dtype, as every method's ``apply``: an input of another supported float dtype than
        the weight's is computed at its own precision, the weight (and bias) cast for the call — a copy each call, so
        keep inputs in ``params_dtype`` on hot paths. Under autocast ``F.linear`` casts by itself."""
        weight = layer.weight
        if x.dtype != weight.dtype:
            weight, bias = self._cast_for(layer, x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def _cast_for(layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dtype not in _ACT_DTYPES:
            raise act_dtype_error("unquantized", getattr(layer, "prefix", "") or type(layer).__name__, x, _ACT_DTYPES)
        if not x.is_meta and torch.is_autocast_enabled(x.device.type):  # (no autocast on meta: it raises there)
            return weight, bias
        return weight.to(x.dtype), None if bias is None else bias.to(x.dtype)

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        """The weight itself in float32 (nothing to de-quantize)."""
        return layer.weight.detach().float()


class UnquantizedConfig(QuantizationConfig):
    """Selects :class:`UnquantizedLinearMethod` for every linear layer."""

    # Against a float32 matmul of the same weights: bf16 products accumulate in
    # fp32 but round inputs and output to bf16 (2^-8 relative), so ~4e-3 typical.
    # float16 and float32 are held to their own rounding: measured 2.3e-4 and
    # 6.1e-7 at K=2048 on an H100 (9.3e-8 on CPU; benchmarks/apply_error_by_dtype.py),
    # so a float16 or float32 input computed in bfloat16 (~2e-3) fails. (float32 on
    # CUDA assumes torch's default matmul precision: allow_tf32 on takes ~1e-3.)
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=1e-2, dtypes={
        torch.float16: Tolerance(max_rel_error=1e-3), torch.float32: Tolerance(max_rel_error=1e-5)})
    weight_rel_error: ClassVar[float] = 1e-6  # the float weight itself
    supports_torch_compile: ClassVar[bool] = True

    @classmethod
    def get_name(cls) -> str:
        """``"unquantized"``."""
        return "unquantized"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        """bfloat16, float16 and float32: ``apply`` computes in the input's dtype."""
        return list(_ACT_DTYPES)

    @classmethod
    def get_min_capability(cls) -> int:
        """0: ``F.linear`` runs on any GPU."""
        return 0

    @classmethod
    def cpu_support(cls) -> str | None:
        """Runs on CPU natively, through ``torch.nn.functional.linear``."""
        return "native: torch.nn.functional.linear"

    @staticmethod
    def get_config_filenames() -> list[str]:
        """``[]``: a float checkpoint has no method config file."""
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UnquantizedConfig:
        """A new ``UnquantizedConfig``; reads no key of ``config`` (there are no settings)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """``{"quant_method": "unquantized"}``."""
        return {"quant_method": self.get_name()}

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> UnquantizedLinearMethod | None:
        """:class:`UnquantizedLinearMethod` for a linear layer (a ``LinearBase``), None for any other; ``prefix`` is
        not used."""
        from fastvideo_quant.layers.linear import LinearBase

        return UnquantizedLinearMethod() if isinstance(layer, LinearBase) else None

    def quantize_weight(
        self, weight: torch.Tensor, *, prefix: str = "", activations: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"weight": weight}``: the float weight itself, stored as is; ``prefix`` and ``activations`` are not
        used."""
        return {"weight": weight}
