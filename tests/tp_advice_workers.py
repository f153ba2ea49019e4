"""Rank functions for tests/test_tp_method_advice.py (importable by spawned ranks)."""

from __future__ import annotations

import torch.distributed as dist

from fastvideo_quant.distributed import tp_group
from fastvideo_quant.errors import ConfigError, ShardingError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear


def _error(build) -> str | None:
    try:
        build()
    except (ShardingError, ConfigError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def refusals(rank: int, world: int) -> dict[str, str | None]:
    """3 ranks: layers whose sizes do not divide by 3, under methods whose alignment rules out some divisors; then
    over a TP group of 2 (ranks 0 and 1; rank 2 alone), an AWQ layer fp8_compute cannot run at TP=2 only."""
    from fvq_awq.config import AWQConfig
    from fvq_fp8.config import Fp8Config

    block = Fp8Config(is_checkpoint_fp8_serialized=True, weight_block_size=[128, 128], activation_scheme="dynamic")
    online = Fp8Config(weight_block_size=[128, 128], activation_scheme="dynamic")  # each rank makes its own grid
    out = {
        "fp8_online_row": _error(lambda: RowParallelLinear(640, 64, bias=False, quant_config=online, prefix="blk.o2")),
        "awq_row": _error(lambda: RowParallelLinear(320, 64, bias=False, quant_config=AWQConfig(group_size=64),
                                                    prefix="blk.down_proj")),
        "fp8_merged": _error(lambda: MergedColumnParallelLinear(160, [200, 56], bias=False, quant_config=block,
                                                                prefix="blk.gate_up_proj")),
        "fp8_qkv": _error(lambda: QKVParallelLinear(256, 64, 4, 4, bias=False, quant_config=block, prefix="blk.qkv")),
        "plain_row": _error(lambda: RowParallelLinear(320, 64, bias=False, prefix="blk.o")),
        # a quant_config that is no config (a name): the sizes' error, not an AttributeError from the advice
        "named_config": _error(lambda: MergedColumnParallelLinear(160, [200, 56], bias=False, quant_config="fp8",
                                                                  prefix="blk.m")),
    }
    groups = [dist.new_group([0, 1]), dist.new_group([2])]
    with tp_group(groups[rank // 2]):
        out["fp8_compute"] = _error(lambda: MergedColumnParallelLinear(
            256, [160, 176], bias=False, quant_config=AWQConfig(group_size=64, fp8_compute=True), prefix="blk.gate_up"))
    return out
