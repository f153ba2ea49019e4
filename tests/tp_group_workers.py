"""Rank functions for tests/test_tp_groups.py (importable by spawned ranks): layers keep the TP group they were built
with, fused gathers come back in the TP=1 layout, and bad TP inputs are named errors."""

from __future__ import annotations

import copy
import pickle
import weakref
from typing import Any

import torch
import torch.distributed as dist

from fastvideo_quant.distributed import get_tp_group, set_tp_group, tp_group
from fastvideo_quant.errors import ShardingError
from fastvideo_quant.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint

W = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
B = torch.randn(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
X = torch.randn(3, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
DT = torch.float64


def _fill_row(layer: RowParallelLinear) -> RowParallelLinear:
    k = layer.input_size_per_partition
    layer.weight.data.copy_(W[:, layer.tp_rank * k:(layer.tp_rank + 1) * k])
    return layer


def _fill_column(layer: ColumnParallelLinear, bias: bool = False) -> ColumnParallelLinear:
    n = layer.output_size_per_partition
    layer.weight.data.copy_(W[layer.tp_rank * n:(layer.tp_rank + 1) * n])
    if bias:
        layer.bias.data.copy_(B[layer.tp_rank * n:(layer.tp_rank + 1) * n])
    return layer


def built_in_a_sub_group(rank: int, world: int) -> dict[str, Any]:
    """4 ranks, TP groups {0, 1} and {2, 3}: layers built inside ``tp_group(g)`` and run after the block."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    with tp_group(groups[rank // 2]):
        row = _fill_row(RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="o"))
        col = _fill_column(ColumnParallelLinear(64, 32, bias=False, gather_output=True, params_dtype=DT, prefix="c"))
    twin = pickle.loads(pickle.dumps(row))  # no group: runs over the TP group current at call time
    outside = _error(lambda: twin(X))  # the world (4 ranks): would sum over both sub-groups
    with tp_group(groups[rank // 2]):
        inside = twin(X)[0]
    return {"tp_size": (row.tp_size, col.tp_size), "row": row(X)[0], "column": col(X)[0], "unpickled_outside": outside,
            "unpickled_inside": inside}


def saved_at_tp2(rank: int, world: int) -> bytes:
    """A filled RowParallelLinear built at TP=2, as ``torch.save(layer)`` bytes (to run in a process without it)."""
    import io

    buffer = io.BytesIO()
    torch.save(_fill_row(RowParallelLinear(64, 32, bias=False, params_dtype=DT, prefix="o")), buffer)
    return buffer.getvalue()


def built_before_init(rank: int, world: int, rendezvous: str) -> dict[str, Any]:
    """A layer built before torch.distributed is initialised (TP=1: the whole weight) and run after."""
    # Each group is torn down only once every rank has finished connecting to it (the barriers): a rank that destroyed
    # a gloo group while another was still in its connectFullMesh made that one fail ("Connection closed by peer"; this
    # test was flaky in CI), as in not_a_member below.
    dist.barrier()
    dist.destroy_process_group()
    col = _fill_column(ColumnParallelLinear(64, 32, bias=False, gather_output=True, params_dtype=DT, prefix="c"))
    row = _fill_row(RowParallelLinear(64, 32, bias=False, params_dtype=DT, prefix="o"))
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    dist.barrier()
    return {"tp_size": (col.tp_size, row.tp_size), "column": col(X)[0], "row": row(X)[0]}


def fused_gather(rank: int, world: int) -> dict[str, Any]:
    """Merged (gate, up) with gather_output=True, and Column gather_output + skip_bias_add."""
    merged = MergedColumnParallelLinear(64, [8, 24], bias=True, gather_output=True, params_dtype=DT, prefix="gu")
    n0, n1 = 8 // world, 24 // world
    r = merged.tp_rank
    merged.weight.data.copy_(torch.cat([W[:8][r * n0:(r + 1) * n0], W[8:][r * n1:(r + 1) * n1]]))
    merged.bias.data.copy_(torch.cat([B[:8][r * n0:(r + 1) * n0], B[8:][r * n1:(r + 1) * n1]]))
    skipped = MergedColumnParallelLinear(64, [8, 24], bias=True, gather_output=True, skip_bias_add=True,
                                         params_dtype=DT, prefix="gu2")
    skipped.load_state_dict(merged.state_dict())
    col = _fill_column(ColumnParallelLinear(64, 32, bias=True, gather_output=True, skip_bias_add=True,
                                            params_dtype=DT, prefix="c"), bias=True)
    return {"merged": merged(X)[0], "merged_skip": skipped(X), "column_skip": col(X)}


def not_a_member(rank: int, world: int) -> str | None:
    """``set_tp_group`` with a group this rank is not in (4 ranks, group {0, 1})."""
    group = dist.new_group([0, 1])
    # Nothing communicates over the group afterwards: without this a member could return, tear down and exit while the
    # other was still connecting to it, and gloo's connectFullMesh failed ("Connection closed by peer"; once in CI).
    dist.barrier()
    try:
        set_tp_group(group)
    except Exception as exc:  # noqa: BLE001 - the message is the result
        return f"{type(exc).__name__}: {exc}"
    finally:
        set_tp_group(None)
    return None


def wrong_input_width(rank: int, world: int) -> dict[str, str]:
    """The full input given to a Row layer that expects this rank's slice, and a wrong width elsewhere."""
    out = {}
    cases = {
        "row_full": (lambda: _fill_row(RowParallelLinear(64, 32, bias=False, params_dtype=DT, prefix="o_proj")), X),
        "row_other": (lambda: _fill_row(RowParallelLinear(64, 32, bias=False, params_dtype=DT, prefix="o_proj")),
                      X[:, :5]),
        "column": (lambda: _fill_column(ColumnParallelLinear(64, 32, bias=False, params_dtype=DT, prefix="c")),
                   X[:, :48]),
    }
    for name, (build, x) in cases.items():
        try:
            build()(x)
            out[name] = "no error"
        except Exception as exc:  # noqa: BLE001 - the message is the result
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def forgetful_loader_at_tp(rank: int, world: int, ckpt_dir: str) -> str:
    """A v1 method whose scale has no weight_loader, in a column layer sharded over the ranks: one PluginError
    naming the method and its plugin (the whole tensor was copied into the rank's slice: a bare shape error)."""
    import toy_method
    from safetensors.torch import save_file

    from fastvideo_quant import plugins
    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.loader import load_checkpoint

    plugins.register_plugin(toy_method.ForgetfulPlugin(), name="toy-forgetful")
    model = torch.nn.Module()
    model.up = ColumnParallelLinear(16, 8, bias=False, params_dtype=torch.float32,
                                    quant_config=toy_method.ForgetfulConfig(), prefix="up")
    if rank == 0:
        save_file({f"up.{k}": v for k, v in toy_method.ToyConfig().quantize_weight(torch.randn(8, 16)).items()},
                  f"{ckpt_dir}/model.safetensors")
    dist.barrier()
    try:
        load_checkpoint(model, ckpt_dir)
    except CheckpointError as exc:
        return str(exc)
    return "loaded"


def _error(call: Any) -> str | None:
    try:
        call()
    except ShardingError as exc:
        return str(exc)
    return None


def destroyed_group(rank: int, world: int) -> dict[str, Any]:
    """2 ranks: a layer built in a sub-group (also set with set_tp_group), copied, pickled, then the sub-group destroyed
    while the layer lives on."""
    sub = dist.new_group([0, 1])
    with tp_group(sub):
        row = _fill_row(RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="o"))
    twin = copy.deepcopy(row)
    unpickled = pickle.loads(pickle.dumps(row))
    set_tp_group(sub)
    freed = weakref.ref(sub)
    del sub
    result = {"twin_group_is_the_layers": twin.tp_group is row.tp_group, "twin": twin(X)[0],
              "unpickled_group": unpickled.tp_group, "unpickled": unpickled(X)[0], "row": row(X)[0]}
    dist.destroy_process_group(freed())
    result["freed"] = freed() is None  # the layer, its copy and set_tp_group hold it weakly
    result["forward"] = _error(lambda: row(X))
    result["load"] = _error(lambda: load_checkpoint(torch.nn.Sequential(row), "/nonexistent/checkpoint"))
    result["get_tp_group"] = _error(get_tp_group)
    set_tp_group(None)
    result["unpickled_after"] = unpickled(X)[0]  # over the group current now: the world, the same two ranks
    return result


def state_dict_of_another_rank(rank: int, world: int) -> dict[str, str | None]:
    """A quantized ColumnParallelLinear at TP=2: the other rank's state_dict (every shape fits) and this rank's own."""
    from fastvideo_quant.quantization import resolve_quant_config

    layer = ColumnParallelLinear(64, 32, bias=False, params_dtype=torch.float32,
                                 quant_config=resolve_quant_config("fp8"), prefix="c")
    states: list[Any] = [None] * world
    dist.all_gather_object(states, layer.state_dict())
    from fastvideo_quant.errors import ModelStateError

    try:
        layer.load_state_dict(states[1 - rank])
        other = None
    except ModelStateError as exc:
        other = str(exc)
    layer.load_state_dict(states[rank])  # its own loads
    return {"other": other, "own": None}


class _Coordinator:
    """FastVideo's ``GroupCoordinator`` as our layers read it: the torch group is its ``device_group``."""

    def __init__(self, device_group: Any) -> None:
        self.device_group = device_group


def _fastvideo_state(tp: Any, name: str = "fastvideo.distributed.parallel_state") -> Any:
    """A ``fastvideo.distributed.parallel_state`` (or, by ``name``, vLLM's: the same API) with FastVideo's API
    (``get_tp_group`` asserting while ``_TP`` is None, ``model_parallel_is_initialized``) over real gloo groups;
    FastVideo and vLLM themselves are not dependencies."""
    import types

    state = types.ModuleType(name)
    state._TP = tp

    def get_tp_group() -> Any:
        assert state._TP is not None, "tensor model parallel group is not initialized"
        return state._TP

    state.get_tp_group = get_tp_group
    state.model_parallel_is_initialized = lambda: state._TP is not None
    return state


def fastvideo_host_group(rank: int, world: int) -> dict[str, Any]:
    """4 ranks under FastVideo's parallel state: not initialised (the world), sequence parallel over all 4 with TP=1
    (each rank its own tokens: layers stay whole), TP=2 groups, set_tp_group over it, a coordinator of unknown API."""
    import sys

    from fastvideo_quant.distributed import HOST_PARALLEL_STATE, host_tp_group

    singles = [dist.new_group([r]) for r in range(world)]
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    x_own = X * (rank + 1)  # sequence parallel: each rank holds other tokens
    out: dict[str, Any] = {}
    sys.modules[HOST_PARALLEL_STATE] = state = _fastvideo_state(None)
    try:
        out["uninitialised"] = ColumnParallelLinear(64, 32, bias=False, params_dtype=DT).tp_size
        state._TP = _Coordinator(singles[rank])
        col = _fill_column(ColumnParallelLinear(64, 32, bias=False, gather_output=True, params_dtype=DT, prefix="c"))
        row = _fill_row(RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="o"))
        out["sp"] = (col.tp_size, row.tp_size, torch.dist(col(x_own)[0], x_own @ W.t()).item(),
                     torch.dist(row(x_own)[0], x_own @ W.t()).item())
        state._TP = _Coordinator(pairs[rank // 2])
        row = _fill_row(RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="o"))
        out["tp2"] = (row.tp_size, row.tp_rank, torch.dist(row(X)[0], REF_X).item())
        with tp_group(dist.group.WORLD):
            out["chosen"] = RowParallelLinear(64, 32, bias=False, params_dtype=DT).tp_size
        state.model_parallel_is_initialized = lambda: False  # TP set, SP/DP not yet: the TP group still counts
        out["tp_only"] = RowParallelLinear(64, 32, bias=False, params_dtype=DT).tp_size
        state._TP = _Coordinator(None)
        out["unknown"] = _error(host_tp_group)

        def broken() -> Any:
            raise RuntimeError("world group not set up")

        state.get_tp_group = broken
        out["raising"] = _error(host_tp_group)
    finally:
        del sys.modules[HOST_PARALLEL_STATE]
    out["after"] = RowParallelLinear(64, 32, bias=False, params_dtype=DT).tp_size
    return out


def vllm_host_group(rank: int, world: int) -> dict[str, Any]:
    """4 ranks under vLLM's parallel state (TP=2 groups: the world was taken, sharding 4 ways); then FastVideo's too,
    initialised with another group (refused: which one cannot be told), and with the same group (taken)."""
    import sys

    from fastvideo_quant.distributed import HOST_PARALLEL_STATES, host_tp_group

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    singles = [dist.new_group([r]) for r in range(world)]
    fastvideo, vllm = HOST_PARALLEL_STATES
    out: dict[str, Any] = {}
    sys.modules[vllm] = _fastvideo_state(_Coordinator(pairs[rank // 2]), vllm)
    try:
        row = _fill_row(RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="o"))
        out["tp2"] = (row.tp_size, row.tp_rank, torch.dist(row(X)[0], REF_X).item())
        sys.modules[fastvideo] = _fastvideo_state(_Coordinator(singles[rank]))
        out["both"] = _error(host_tp_group)
        sys.modules[fastvideo] = _fastvideo_state(_Coordinator(pairs[rank // 2]))
        out["same"] = RowParallelLinear(64, 32, bias=False, params_dtype=DT).tp_size
    finally:
        sys.modules.pop(vllm, None)
        sys.modules.pop(fastvideo, None)
    return out


REF_X = X @ W.t()


def _row_model(device: str) -> torch.nn.Module:
    with torch.device(device):
        model = torch.nn.Module()
        model.row = RowParallelLinear(64, 32, bias=False, input_is_parallel=False, params_dtype=DT, prefix="row")
    return model


def _rebuilt_and_loaded(model: torch.nn.Module, group: Any, path: str) -> dict[str, Any]:
    """``model`` (built on meta) to_empty'd while ``group`` is current, loaded from ``path``, run on X."""
    with tp_group(group):
        model.to_empty(device="cpu")
    weight = model.row.weight
    load_checkpoint(model, path)
    with torch.no_grad():
        out = model.row(X)[0]
    return {"layer": (model.row.tp_rank, model.row.tp_size), "param": (weight.tp_rank, weight.tp_size), "out": out}


def rebuilt_off_meta_in_another_group(rank: int, world: int, ckpt_dir: str) -> dict[str, Any]:
    """Layers built on meta, then ``to_empty``'d while another TP group is current: 2 ranks — a TP=1 layer (built in a
    group of its own) rebuilt with the world current, a TP=2 one rebuilt in a group of one; 4 ranks — TP groups {0, 1}
    and {2, 3}, rebuilt with the data-parallel group of the same size ({0, 2} / {1, 3}) current. Each must rebuild as
    the rank it was built for and load its own shard."""
    from safetensors.torch import save_file

    path = f"{ckpt_dir}/row.safetensors"
    if rank == 0:
        save_file({"row.weight": W.clone()}, path)
    dist.barrier()
    if world == 2:
        own = [dist.new_group([r]) for r in range(world)][rank]
        with tp_group(own):
            solo = _row_model("meta")
        tp2 = _row_model("meta")
        return {"solo": _rebuilt_and_loaded(solo, None, path), "tp2": _rebuilt_and_loaded(tp2, own, path)}
    tp = [dist.new_group([0, 1]), dist.new_group([2, 3])][rank // 2]
    dp = [dist.new_group([0, 2]), dist.new_group([1, 3])][rank % 2]
    with tp_group(tp):
        model = _row_model("meta")
    return {"tp2": _rebuilt_and_loaded(model, dp, path)}
