"""Rank functions for tests/test_loader_agreement.py (importable by spawned ranks): every rank of a sharded model
agrees on a failed load_checkpoint."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from fastvideo_quant.distributed import tp_group
from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint

DT = torch.float32
X = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=DT)


def full_tensors() -> dict[str, torch.Tensor]:
    """The unsharded checkpoint: up (16 → 8, column), down (8 → 16, row), with biases."""
    g = torch.Generator().manual_seed(0)
    return {"up.weight": torch.randn(8, 16, generator=g), "up.bias": torch.randn(8, generator=g),
            "down.weight": torch.randn(16, 8, generator=g), "down.bias": torch.randn(16, generator=g)}


class Model(torch.nn.Module):
    def __init__(self, raise_in_mapping: BaseException | None = None) -> None:
        super().__init__()
        self.up = ColumnParallelLinear(16, 8, bias=True, params_dtype=DT, prefix="up")
        self.down = RowParallelLinear(8, 16, bias=True, params_dtype=DT, prefix="down")
        self._raise = raise_in_mapping

    @property
    def packed_modules_mapping(self) -> dict:
        if self._raise is not None:
            raise self._raise  # an exception that is not ours, raised inside load_checkpoint's checks
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x)[0])[0]


def _build(how: str) -> Model:
    torch.manual_seed(100 + dist.get_rank())  # every rank's initial weights differ from the checkpoint's
    if how == "meta":
        with torch.device("meta"):
            return Model()
    raises = {"foreign": FileNotFoundError(2, "No such file or directory", "/nowhere/model.safetensors"),
              "interrupted": KeyboardInterrupt()}  # Ctrl-C on this rank during its checks
    model = Model(raises.get(how))
    if how == "process_fails":  # past the checks: this rank's layer fails to process what was written
        def fail(layer):
            raise RuntimeError("no kernel for this shard")

        model.up.quant_method.process_weights_after_loading = fail
    if how == "mixed":  # up in the current (sub-)group, down over the whole world
        with tp_group(None):
            model.down = RowParallelLinear(8, 16, bias=True, params_dtype=DT, prefix="down")
    with torch.no_grad():  # defined values: uninitialised memory may hold NaN, which torch.equal never finds unchanged
        for p in model.parameters():
            p.normal_()
    return model


def _count_collectives(counts: dict[str, int]) -> None:
    for name in ("all_reduce", "all_gather_object", "barrier", "broadcast"):
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*args, **kwargs)

        setattr(dist, name, counted)


def load_on_each_rank(rank: int, world: int, paths: list[str], how: list[str], groups: list[list[int]] | None = None,
                      collective: bool = True) -> dict[str, Any]:
    """Rank ``r`` loads ``paths[r]`` into a model built as ``how[r]`` (inside its TP group of ``groups``); returns
    what it raised, whether its parameters changed, the collectives the load made, and (after a load) the output of a
    forward pass, which all-reduces over the group."""
    group = None
    if groups:
        made = [dist.new_group(g) for g in groups]
        group = next(g for g, ranks in zip(made, groups) if rank in ranks)
    with tp_group(group):
        model = _build(how[rank])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    counts: dict[str, int] = {}
    real = {name: getattr(dist, name) for name in ("all_reduce", "all_gather_object", "barrier", "broadcast")}
    _count_collectives(counts)
    out: dict[str, Any] = {"tp_size": model.up.tp_size}
    try:
        load_checkpoint(model, paths[rank], collective=collective)
        out["raised"] = None
    except BaseException as exc:  # noqa: BLE001 - what each rank raised (an interrupt included) is the result
        out["raised"] = type(exc).__name__
        out["message"] = str(exc)
        out["notes"] = list(getattr(exc, "__notes__", []))
        out["failed"] = getattr(exc, "failed", None)
        out["written"] = getattr(exc, "written", None)
    finally:
        for name, fn in real.items():
            setattr(dist, name, fn)
    out["collectives"] = counts
    if how[rank] != "meta":
        out["unchanged"] = all(torch.equal(before[n].view(torch.uint8), p.detach().view(torch.uint8))
                               for n, p in model.named_parameters())  # bits: a NaN is unchanged too
    if out["raised"] is None:
        with torch.no_grad():
            out["output"] = model(X)
    elif out["written"] or how[rank] == "process_fails":  # a load that failed past the checks: forward is refused
        try:
            with torch.no_grad():
                model(X)
            out["forward_raised"] = None
        except Exception as exc:  # noqa: BLE001 - what the forward raised is the result
            out["forward_raised"] = f"{type(exc).__name__}: {exc}"
    return out


def hang_in_a_collective(rank: int, world: int) -> None:
    """What a load refused on one rank only used to cause: rank 1 never joins, rank 0 waits in a barrier."""
    import time

    if rank == 1:
        time.sleep(600)
    dist.barrier()
