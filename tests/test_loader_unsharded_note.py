"""A model whose layers were all built at TP size 1 (before ``init_process_group``) loaded where the tensor-parallel
group has several ranks: every rank holds the whole weights, which the TP guide says to avoid by building after init.
The load goes through (a model replicated on purpose is right so, and the layers keep their TP size: see
tests/tp_group_workers.built_before_init) with a CheckpointWarning saying so, how to silence it and how to shard.
(Was: nothing said.)"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointWarning
from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.loader.checks import UNSHARDED_NOTE
from fastvideo_quant.testing.distributed import run_distributed


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = ColumnParallelLinear(16, 32, bias=False, prefix="up")
        self.down = RowParallelLinear(32, 16, bias=False, prefix="down")


def _loads(model: torch.nn.Module, ckpt: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(model, ckpt)
    return [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def worker(rank: int, world: int, ckpt: str, rendezvous: str) -> dict[str, Any]:
    dist.barrier()
    dist.destroy_process_group()
    before = Model()  # (built without torch.distributed: TP size 1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    after = Model()
    out = {"before": _loads(before, ckpt), "tp_size": before.up.tp_size, "after": _loads(after, ckpt)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=UNSHARDED_NOTE, category=CheckpointWarning)  # (as the note says)
        load_checkpoint(_built_at_tp1(), ckpt)
    out["silenced"] = [str(w.message) for w in caught]
    dist.barrier()
    return out


def _built_at_tp1() -> torch.nn.Module:
    """Another model at TP size 1, as one built before init (without initialising torch.distributed again)."""
    from fastvideo_quant.distributed import building_as

    with building_as(0, 1):
        return Model()


def test_a_model_built_before_init_is_noted_at_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file({"up.weight": torch.randn(32, 16), "down.weight": torch.randn(16, 32)}, str(tmp_path / "model.safetensors"))
    for res in run_distributed(worker, 2, str(tmp_path), str(tmp_path / "rendezvous")):
        assert res["tp_size"] == 1  # (kept: a note, not a change)
        assert len(res["before"]) == 1, res["before"]
        note = res["before"][0]
        assert note.startswith(f"{UNSHARDED_NOTE} (2 layer(s): 'up', 'down'), while torch.distributed is initialised "
                               "and the tensor-parallel group has 2 ranks"), note
        assert "warnings.filterwarnings('ignore'" in note and "build the model after init_process_group" in note, note
        assert res["after"] == []  # (sharded: built after init)
        assert res["silenced"] == []
