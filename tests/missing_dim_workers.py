"""Run on spawned gloo ranks by test_v1_missing_dims.py: a v1 method whose weight lacks its sharding dim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import Parameter
from toy_method import ToyConfig

from fastvideo_quant.parameter import set_weight_attrs
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.base import LinearMethodBase


class NoDimsMethod(LinearMethodBase):
    """Bug: a weight sized per rank, [out_per_rank, in_per_rank], with neither output_dim nor input_dim (v1)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        weight = Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
                           requires_grad=False)
        set_weight_attrs(weight, extra)
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight, bias)


class NoDimsConfig(ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "test-no-dims"

    def get_quant_method(self, layer, prefix):
        return NoDimsMethod()


class NoDimsPlugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(NoDimsConfig, NoDimsMethod, weight_loader_v2=False)


def load_errors(rank: int, world: int) -> dict[str, str | None]:
    """The error of loading each layer class's full checkpoint weight into the per-rank weight (None if it loaded)."""
    from fastvideo_quant.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear
    from fastvideo_quant.plugins import register_plugin, unregister_plugin
    from fastvideo_quant.quantization import resolve_quant_config

    register_plugin(NoDimsPlugin(), name="no-dims")
    try:
        cfg = resolve_quant_config("test-no-dims")
        layers = {"column": ColumnParallelLinear(64, 32, bias=False, quant_config=cfg, prefix="blk.up"),
                  "row": RowParallelLinear(64, 32, bias=False, quant_config=cfg, prefix="blk.down"),
                  "merged": MergedColumnParallelLinear(64, [32, 16], bias=False, quant_config=cfg, prefix="blk.gu")}
        full = {"column": [(torch.randn(32, 64), None)], "row": [(torch.randn(32, 64), None)],
                "merged": [(torch.randn(32, 64), 0), (torch.randn(16, 64), 1)]}
        out: dict[str, str | None] = {}
        for kind, layer in layers.items():
            try:
                for tensor, shard in full[kind]:
                    args = (layer.weight, tensor) if shard is None else (layer.weight, tensor, shard)
                    layer.weight_loader(*args)
                out[kind] = None
            except Exception as exc:  # noqa: BLE001 - the message is what the test reads
                out[kind] = f"{type(exc).__name__}: {exc}"
        return out
    finally:
        unregister_plugin("no-dims")
