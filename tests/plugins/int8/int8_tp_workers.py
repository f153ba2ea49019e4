"""Rank functions for the int8 tensor-parallel tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import torch

K, N = 128, 64


def checkpoint(serialized: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The unsharded checkpoint of one layer (bitsandbytes int8, or float) and an input, seeded."""
    from fvq_int8 import Int8Config

    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) / K**0.5
    x = torch.randn(6, K, generator=g)
    return (Int8Config().quantize_weight(w) if serialized else {"weight": w}), x


def run_layers(rank: int, world: int, serialized: bool) -> dict:
    """Column (gathered) and row (all-reduced) layers at this TP size: outputs and this rank's tensors."""
    from fvq_int8 import Int8Config
    from int8_helpers import config, ensure_registered, load

    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear
    from fastvideo_quant.loader import process_weights_after_loading

    ensure_registered()
    tensors, x = checkpoint(serialized)
    cfg = config() if serialized else Int8Config()
    out = {}
    for kind, make in [("column", lambda: ColumnParallelLinear(K, N, bias=False, gather_output=True,
                                                                params_dtype=torch.float32, quant_config=cfg)),
                       ("row", lambda: RowParallelLinear(K, N, bias=False, input_is_parallel=False,
                                                         params_dtype=torch.float32, quant_config=cfg))]:
        layer = make()
        load(layer, tensors)
        process_weights_after_loading(layer)
        out[kind] = {"y": layer(x)[0], "weight": layer.weight.data.clone(), "SCB": layer.SCB.data.clone()}
    return out
