"""Rank functions for the fp8 tensor-parallel tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastvideo_quant.errors import ShardingError

K, N = 256, 192


def _register() -> None:
    from fastvideo_quant.plugins import get_registry, register_plugin

    if "fp8" not in get_registry().by_name:
        import fvq_fp8.hooks

        register_plugin(fvq_fp8.hooks, "fp8")


def checkpoint(config: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The unsharded fp8 checkpoint tensors of one layer, and an input, both seeded."""
    from fvq_fp8 import Fp8Config

    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) / K**0.5
    x = torch.randn(6, K, generator=g).bfloat16()
    return Fp8Config.from_config(config).quantize_weight(w), x


def _build(kind: str, config: dict, **kwargs):
    from fvq_fp8 import Fp8Config

    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear

    cls = ColumnParallelLinear if kind == "column" else RowParallelLinear
    extra = {"gather_output": True} if kind == "column" else {}
    return cls(K, N, bias=False, params_dtype=torch.bfloat16, quant_config=Fp8Config.from_config(config),
               prefix=f"blocks.0.{kind}", **extra, **kwargs)


def run_layer(rank: int, world: int, kind: str, config: dict) -> dict[str, torch.Tensor]:
    """Load the full checkpoint on every rank (each takes its slice), run it; return output and this rank's weight."""
    _register()
    tensors, x = checkpoint(config)
    layer = _build(kind, config)
    params = dict(layer.named_parameters())
    for name, t in tensors.items():
        params[name].weight_loader(params[name], t)
    layer.quant_method.process_weights_after_loading(layer)
    xin = x if kind == "column" else x.chunk(world, dim=-1)[rank].contiguous()
    return {"out": layer(xin)[0], "dequant": layer.quant_method.dequantize_weight(layer)}


def run_all(rank: int, world: int, configs: dict[str, dict]) -> dict:
    """Every (config, layer kind) on this rank, plus the block-misalignment error: one spawn for the whole test file."""
    results = {(name, kind): run_layer(rank, world, kind, cfg) for name, cfg in configs.items()
               for kind in ("column", "row")}
    results["misaligned"] = block_misaligned_error(rank, world)
    return results


def block_misaligned_error(rank: int, world: int) -> str:
    """A row-parallel layer whose per-rank input (128) is not a multiple of bk=96."""
    _register()
    try:
        _build("row", {"quant_method": "fp8", "weight_block_size": [64, 96]})
    except ShardingError as exc:
        return str(exc)
    return "no error"


def load_demo(rank: int, world: int, path: str, x: torch.Tensor) -> dict:
    """The demo model of checkpoint ``path`` (its config.json) on this rank: output for ``x``, each fp8 layer's scheme
    (weight scale strategy, activation scheme) and de-quantized weight (this rank's shard)."""
    _register()
    from fastvideo_quant.demo.model import DemoConfig, DemoDiT
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    cfg = DemoConfig.from_dict(json.loads((Path(path) / "config.json").read_text()))
    model = DemoDiT(cfg, quant_config=resolve_quant_config(checkpoint=path))
    load_checkpoint(model, path)
    methods = {n: getattr(m, "quant_method", None) for n, m in model.named_modules()}
    schemes = {n: (m.quant_config.weight_scale_strategy, m.quant_config.activation_scheme)
               for n, m in methods.items() if type(m).__name__ == "Fp8LinearMethod"}
    weights = {n: methods[n].dequantize_weight(model.get_submodule(n)) for n in schemes}
    with torch.no_grad():
        return {"out": model(x), "schemes": schemes, "weights": weights}
