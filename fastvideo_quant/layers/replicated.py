"""ReplicatedLinear: the same weights on every rank."""

from __future__ import annotations

import torch
from torch.nn import Parameter

from fastvideo_quant.layers.base import LinearBase
from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.quantization.base import QuantizationConfig


class ReplicatedLinear(LinearBase):
    """A linear layer whose weights are the same on every rank."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        super().__init__(input_size, output_size, skip_bias_add, params_dtype, quant_config, prefix,
                         return_bias=return_bias)
        self.output_partition_sizes = [output_size]
        self._create_weights(self.input_size, [self.output_size])
        self._create_bias(output_size, bias, {"output_dim": 0})

    def weight_loader(self, param: Parameter, loaded_weight: TensorLike) -> None:
        """The full checkpoint tensor, copied whole on every rank. Delegates to :meth:`LinearBase._load_along` (a
        ``fastvideo_quant.parameter`` class's through its ``load_replicated_weight``, so that one recording its loads
        sees this one).

        The layer has no ``weight_loader_v2``: the parameters of a method registered with ``weight_loader_v2=True``
        load through this too."""
        self._check_loaded(param, loaded_weight)
        self._load_along(param, loaded_weight, None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Parameter | None] | torch.Tensor:
        x, autocast = self._autocast(x)
        self._check_width(x, self.input_size)
        bias = self.bias if not self.skip_bias_add else None
        output = self._run_method(x, bias, autocast)
        return (output, self.bias if self.skip_bias_add else None) if self.return_bias else output

    def extra_repr(self) -> str:
        return f"in_features={self.input_size}, output_features={self.output_size}, bias={self.bias is not None}"
