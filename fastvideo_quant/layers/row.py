"""RowParallelLinear: weights split along the input dim, results all-reduced."""

from __future__ import annotations

import torch
from torch.nn import Parameter

from fastvideo_quant._tp_autograd import recording, reduce_from_tp_region, scatter_to_tp_region
from fastvideo_quant.distributed import (
    split_tensor_along_last_dim,
    tensor_model_parallel_all_reduce,
)
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.base import LinearBase, divide_with_advice, flag, shard_sizes
from fastvideo_quant.lazy import TensorLike
from fastvideo_quant.parameter import (
    BasevLLMParameter,
)
from fastvideo_quant.quantization.base import QuantizationConfig


class RowParallelLinear(LinearBase):
    """``Y = X A + b`` with ``A`` split by rows (input dim) over TP ranks; results all-reduced."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        reduce_results: bool = True,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        layer = f"RowParallelLinear {prefix!r}"
        bias, input_is_parallel, reduce_results, skip_bias_add = (
            flag(value, name, layer) for name, value in (("bias", bias), ("input_is_parallel", input_is_parallel),
                                                         ("reduce_results", reduce_results),
                                                         ("skip_bias_add", skip_bias_add)))
        if not reduce_results and bias and not skip_bias_add:
            raise ConfigError(
                f"RowParallelLinear {prefix!r}: reduce_results=False with a bias that is added would add "
                "the bias once per rank before the caller's reduction; pass skip_bias_add=True or bias=False"
            )
        super().__init__(input_size, output_size, skip_bias_add, params_dtype, quant_config, prefix,
                         return_bias=return_bias)
        self.input_is_parallel = input_is_parallel
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide_with_advice(
            input_size, self.tp_size, f"RowParallelLinear {prefix!r} input size", quant_config,
            lambda t: shard_sizes(t, self.input_size, [self.output_size], row=True))
        self.output_size_per_partition = output_size
        self.output_partition_sizes = [output_size]
        self._create_weights(self.input_size_per_partition, self.output_partition_sizes)
        self._create_bias(output_size, bias, {"output_dim": 0})

    def weight_loader(self, param: Parameter, loaded_weight: TensorLike) -> None:
        """v1 loader: ``loaded_weight`` is the full checkpoint tensor; this rank's ``1/tp_size`` of it along the
        parameter's ``input_dim`` is copied in, or all of it when the parameter has no ``input_dim`` (the bias,
        per-output-channel scales: the same on every rank). Delegates to :meth:`LinearBase._load_along`."""
        self._check_loaded(param, loaded_weight)
        self._load_along(param, loaded_weight, getattr(param, "input_dim", None),
                         ("input_dim", self.input_size_per_partition))

    def weight_loader_v2(self, param: BasevLLMParameter, loaded_weight: TensorLike) -> None:
        """v2 loader: the parameter's class shards the full checkpoint tensor, in
        :meth:`~fastvideo_quant.parameter.BasevLLMParameter.load_row_parallel_weight` (along its ``input_dim``, or
        whole for a class without one). Delegates to :meth:`LinearBase._load_v2`."""
        self._check_loaded(param, loaded_weight)
        self._load_v2(param, loaded_weight, param.load_row_parallel_weight)

    def forward(self, input_: torch.Tensor) -> tuple[torch.Tensor, Parameter | None] | torch.Tensor:
        """``(output, output_bias)`` as FastVideo's and vLLM's (``input_``: their argument's name); the output alone
        with ``return_bias=False`` (vLLM's)."""
        x, autocast = self._autocast(input_)
        if self.input_is_parallel:
            self._check_parallel_width(x)
            input_parallel = x
        else:
            self._check_width(x, self.input_size)
            if self.tp_size > 1 and recording(x):  # the slices' gradients are gathered back into the input's
                input_parallel = scatter_to_tp_region(x, self.tp_rank, self.tp_size,
                                                      self._collective_group("all-gather (of the input gradient)"))
            else:
                input_parallel = split_tensor_along_last_dim(x, self.tp_size)[self.tp_rank].contiguous()
        # Only rank 0 adds the bias, so the all-reduce adds it once.
        bias = None if (self.tp_rank > 0 or self.skip_bias_add) else self.bias
        output = self._run_method(input_parallel, bias, autocast)
        if self.reduce_results and self.tp_size > 1:
            output = self._reduce(output, bias)
        return (output, self.bias if self.skip_bias_add else None) if self.return_bias else output

    def _reduce(self, output: torch.Tensor, added_bias: torch.Tensor | None) -> torch.Tensor:
        """The all-reduce of the ranks' partial outputs over the layer's TP group. While autograd records, the output's
        gradient reaches every rank's part unchanged, and a rank that did not add the bias (rank 0 did) gives it the
        gradient it would have had added after the sum, so every rank's copy of the bias gets the same one."""
        group = self._collective_group("all-reduce")
        other_bias = self.bias if (added_bias is None and not self.skip_bias_add and self.bias is not None
                                   and recording(self.bias)) else None
        if recording(output) or other_bias is not None:
            return reduce_from_tp_region(output, group, other_bias)
        return tensor_model_parallel_all_reduce(output, group=group)

    def _check_parallel_width(self, x: torch.Tensor) -> None:
        if self.tp_size == 1:
            self._check_width(x, self.input_size)
            return
        whole = x.dim() > 0 and x.shape[-1] == self.input_size
        self._check_width(x, self.input_size_per_partition,
                          f"this rank's {self.input_size_per_partition} (input_size {self.input_size} over TP "
                          f"{self.tp_size})",
                          "; this is the whole input: build the layer with input_is_parallel=False to split it here"
                          if whole else "")

    def extra_repr(self) -> str:
        return (
            f"input_features={self.input_size_per_partition}, output_features={self.output_size}, "
            f"bias={self.bias is not None}, tp_size={self.tp_size}, reduce_results={self.reduce_results}"
        )
