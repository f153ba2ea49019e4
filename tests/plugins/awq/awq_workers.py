"""Helpers for the AWQ tests; module-level so spawned gloo ranks can import them."""

from __future__ import annotations

import torch
from fvq_awq.config import AWQConfig
from fvq_awq.format import pack_awq

from fastvideo_quant import plugins
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)


def ensure_registered() -> None:
    plugins.ensure_registered("awq", "fvq_awq.hooks")


def checkpoint(k: int, n: int, group: int, seed: int) -> dict[str, torch.Tensor]:
    """Random AutoAWQ tensors for one ``[k, n]`` linear."""
    gen = torch.Generator().manual_seed(seed)
    g = k if group == -1 else group
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // g, n), generator=gen)
    s = (torch.rand(k // g, n, generator=gen) * 0.02 + 0.001).half()
    return {"qweight": pack_awq(q), "qzeros": pack_awq(z), "scales": s}


def build(kind: str, group: int, k: int = 128, n: int = 64, seed: int = 0, **options):
    """A layer of ``kind`` loaded from checkpoints (per fused shard), processed; returns (layer, parts). ``options``:
    more ``AWQConfig`` arguments."""
    ensure_registered()
    cfg = AWQConfig(group_size=group, **options)
    if kind == "column":
        layer, parts = ColumnParallelLinear(k, n, bias=False, quant_config=cfg, prefix="col"), [(None, n)]
    elif kind == "row":
        layer, parts = RowParallelLinear(k, n, bias=False, quant_config=cfg, prefix="row"), [(None, n)]
    elif kind == "merged":
        layer = MergedColumnParallelLinear(k, [n, n // 2], bias=False, quant_config=cfg, prefix="gate_up")
        parts = [(0, n), (1, n // 2)]
    else:  # qkv: 4 q heads, 2 kv heads of 16
        layer = QKVParallelLinear(k, 16, 4, 2, bias=False, quant_config=cfg, prefix="qkv")
        parts = [("q", 64), ("k", 32), ("v", 32)]
    params = dict(layer.named_parameters())
    tensors = []
    for i, (shard, size) in enumerate(parts):
        t = checkpoint(k, size, group, seed + i)
        tensors.append(t)
        for name, value in t.items():
            p = params[name]
            p.weight_loader(p, value) if shard is None else p.weight_loader(p, value, shard)
    loaded = {name: params[name].data.clone() for name in ("qweight", "qzeros", "scales")}
    layer.quant_method.process_weights_after_loading(layer)
    return layer, tensors, loaded


def tp_worker(rank: int, world: int, kind: str, group: int, x: torch.Tensor):
    """Build the layer on this rank; return its loaded shards, its weight and its output."""
    layer, _, loaded = build(kind, group)
    xin = x.chunk(world, dim=-1)[rank] if kind == "row" else x
    out, _ = layer(xin)
    return loaded, layer.quant_method.dequantize_weight(layer), out
