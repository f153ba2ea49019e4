"""Rank function for tests/test_loader_names.py (importable by spawned ranks): merged parts read by each rank."""

from __future__ import annotations

import torch

from fastvideo_quant.layers.linear import ColumnParallelLinear
from fastvideo_quant.loader import load_checkpoint


def load_merged_column(rank: int, world: int, path: str, mapping: dict) -> dict[str, torch.Tensor]:
    """A ColumnParallelLinear(32, 96) whose weight and bias are three checkpoint parts: this rank's rows."""
    model = torch.nn.Module()
    model.qkv = ColumnParallelLinear(32, 96, params_dtype=torch.float32, prefix="qkv")
    load_checkpoint(model, path, param_names_mapping=mapping)
    return {"weight": model.qkv.weight.detach().clone(), "bias": model.qkv.bias.detach().clone()}
