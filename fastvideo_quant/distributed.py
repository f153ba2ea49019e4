"""Tensor-parallel state on torch.distributed.

With nothing initialised the world is one rank and every collective is the
identity. Once ``torch.distributed`` is initialised, the TP group is, in order: the
one chosen with :func:`set_tp_group` / :func:`tp_group`; FastVideo's tensor-parallel
group, when ``fastvideo.distributed.parallel_state`` is imported and its TP group
initialised (a FastVideo run with sequence parallelism over the world and TP=1 keeps
its layers whole); else the whole world (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import weakref
from collections.abc import Iterator

import torch
import torch.distributed as dist

from fastvideo_quant.errors import ShardingError

__all__ = [
    "collective_device",
    "divide",
    "gather_failures",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "get_tp_group",
    "host_tp_group",
    "set_tp_group",
    "split_tensor_along_last_dim",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
    "tp_group",
    "tp_sizes_dividing",
    "tp_sizes_text",
]

if dist.is_available() and not dist.is_initialized():
    # torch.distributed.nn.functional evaluates ``group=group.WORLD`` default arguments when imported, and torch._dynamo
    # imports it -- which the fp8 and int8 plugins (bitsandbytes) do when first loaded, at a model's first layer, after
    # init_process_group. Imported then, its defaults hold the world group for good: destroy_process_group no longer
    # frees it, gloo's worker threads outlive it, and one that drops a finished collective's tensors during interpreter
    # exit aborts the process ("terminate called without an active exception", pytorch/pytorch#190489). Imported
    # here, before any group exists, its defaults are None.
    import torch.distributed.nn.functional  # noqa: F401

# Held weakly, like a layer's group: a group chosen here must not outlive torch.distributed.destroy_process_group, or
# its worker threads, still running at interpreter exit, abort the process.
_tp_group_ref: weakref.ref[dist.ProcessGroup] | None = None


def set_tp_group(group: dist.ProcessGroup | None) -> None:
    """Use ``group`` for tensor parallelism (None: the default, FastVideo's TP group where it is initialised, else the
    whole world).

    Layers take the TP group current when they are built and keep it: a layer built inside :func:`tp_group` runs
    over that group after the block too. ShardingError when this rank is not a member of ``group``.
    """
    global _tp_group_ref
    if group is not None and _active():
        _check_member(group, "set_tp_group")
    _tp_group_ref = None if group is None else weakref.ref(group)


def _check_member(group: dist.ProcessGroup, caller: str) -> None:
    if dist.get_rank(group) < 0:  # torch answers -1 (size and rank) for a group this rank is not in
        raise ShardingError(
            f"{caller}: rank {dist.get_rank()} (of the {dist.get_world_size()}-rank world) is not a member of the "
            f"group, whose ranks are {dist.get_process_group_ranks(group)}; every rank must use a TP group it belongs "
            "to (torch.distributed.new_group makes one on every rank: pass each rank its own, e.g. the one holding it)"
        )


@contextlib.contextmanager
def tp_group(group: dist.ProcessGroup | None) -> Iterator[None]:
    """Use ``group`` for tensor parallelism inside the block."""
    global _tp_group_ref
    previous = _tp_group_ref
    set_tp_group(group)
    try:
        yield
    finally:
        _tp_group_ref = previous


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


#: The modules whose tensor-parallel group layers use when none was chosen with set_tp_group: FastVideo's and vLLM's
#: (FastVideo's is derived from vLLM's), whose ``get_tp_group()`` returns a coordinator holding the torch group as
#: ``device_group`` and asserts when not initialised.
HOST_PARALLEL_STATES = ("fastvideo.distributed.parallel_state", "vllm.distributed.parallel_state")
HOST_PARALLEL_STATE = HOST_PARALLEL_STATES[0]  # (FastVideo's: the name earlier versions read alone)


def host_tp_group() -> dist.ProcessGroup | None:
    """The host framework's TP group (``get_tp_group().device_group``): FastVideo's or vLLM's, whichever of
    :data:`HOST_PARALLEL_STATES` is imported with its TP group initialised; else None. ShardingError for an initialised
    coordinator without a ``device_group`` (an API this does not know), for another error of its ``get_tp_group``, or
    when both are initialised with different groups (which one the layers shard over cannot be told)."""
    found = [(name, group) for name in HOST_PARALLEL_STATES if (group := _host_group(name)) is not None]
    if len({id(group) for _, group in found}) > 1:
        raise ShardingError(
            f"both {found[0][0]} and {found[1][0]} have a TP group initialised, and they differ, so which one the "
            "layers shard over cannot be told: choose it with fastvideo_quant.distributed.set_tp_group(group)")
    return found[0][1] if found else None


def _host_group(name: str) -> dist.ProcessGroup | None:
    """The TP group of parallel-state module ``name`` (:func:`host_tp_group`), None where it is not imported or its
    TP group not initialised."""
    state = sys.modules.get(name)
    if state is None or not callable(getattr(state, "get_tp_group", None)):
        return None
    try:
        coordinator = state.get_tp_group()  # (its TP group alone: model_parallel_is_initialized also wants SP and DP)
    except AssertionError:  # (their "tensor model parallel group is not initialized")
        return None
    except Exception as exc:  # noqa: BLE001 - named, not passed through every layer build as the host's own error
        raise ShardingError(
            f"{name}.get_tp_group() raised {type(exc).__name__}: {exc}; the layers take the host framework's TP "
            "group when its parallel state is imported: initialise it, or choose the group with "
            "fastvideo_quant.distributed.set_tp_group(group)") from exc
    if coordinator is None:  # (uninitialised under python -O, where its assert is gone)
        return None
    group = getattr(coordinator, "device_group", None)
    if not isinstance(group, dist.ProcessGroup):
        raise ShardingError(
            f"{name}.get_tp_group() returned {type(coordinator).__name__} whose device_group is "
            f"{type(group).__name__}, not a torch.distributed ProcessGroup; choose the TP group with "
            "fastvideo_quant.distributed.set_tp_group(group)")
    return group


def get_tp_group() -> dist.ProcessGroup | None:
    """The TP process group, or None when running on one rank without torch.distributed: the group chosen with
    :func:`set_tp_group`, else FastVideo's or vLLM's TP group where it is initialised (:func:`host_tp_group`), else the
    whole world."""
    if not _active():
        return None
    if _tp_group_ref is None:
        host = host_tp_group()
        return dist.group.WORLD if host is None else host
    group = _tp_group_ref()
    if group is None:
        raise ShardingError(
            "the TP group chosen with set_tp_group has been destroyed (torch.distributed.destroy_process_group); "
            "choose a live one with set_tp_group, or set_tp_group(None) for the default group"
        )
    return group


#: ``(rank, size)`` the two queries below answer inside :func:`building_as` (in that thread or task only), whatever
#: group is current.
_building_as: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("fvq_building_as", default=None)


@contextlib.contextmanager
def building_as(rank: int, size: int) -> Iterator[None]:
    """Inside the block, in this thread, :func:`get_tensor_model_parallel_rank` and
    :func:`get_tensor_model_parallel_world_size` answer ``rank`` and ``size``: a layer rebuilding its parameters
    (``to_empty`` off the meta device) builds them as the TP rank it was built for, not as whatever group is current
    then — another group of the same size would load another rank's shard without an error."""
    token = _building_as.set((rank, size))
    try:
        yield
    finally:
        _building_as.reset(token)


def get_tensor_model_parallel_world_size() -> int:
    """The number of ranks in the current TP group (:func:`get_tp_group`); 1 without torch.distributed. A layer reads
    it when built. ShardingError when this rank is not a member of the group."""
    building = _building_as.get()
    if building is not None:
        return building[1]
    group = get_tp_group()
    if group is None:
        return 1
    _check_member(group, "the TP group")
    return dist.get_world_size(group)


def get_tensor_model_parallel_rank() -> int:
    """This rank's index in the current TP group (:func:`get_tp_group`); 0 without torch.distributed. A layer reads it
    when built. ShardingError when this rank is not a member of the group."""
    building = _building_as.get()
    if building is not None:
        return building[0]
    group = get_tp_group()
    if group is None:
        return 0
    _check_member(group, "the TP group")
    return dist.get_rank(group)


def tensor_model_parallel_all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``x`` over the ranks of ``group`` (default: the current TP group), in place; returns it."""
    group = get_tp_group() if group is None else group
    if group is None or dist.get_world_size(group) == 1:
        return x
    dist.all_reduce(x, group=group)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1,
                                     group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate each rank's ``x`` along ``dim`` in rank order, over ``group`` (default: the current TP group).

    Where autograd records (grad mode, ``x`` requiring grad) it goes through an autograd function whose backward gives
    ``x`` this rank's slice of the gradient, as the layers' ``gather_output`` does; torch's collective has no
    derivative, and the gathered tensor left the graph, so nothing before it got a gradient (TP > 1)."""
    if not -x.dim() <= dim < x.dim():  # (dim % x.dim() wrapped an out-of-range dim onto another one, silently)
        raise IndexError(f"tensor_model_parallel_all_gather: dim {dim} is out of range for a {x.dim()}-d tensor of "
                         f"shape {tuple(x.shape)} (expected one in [{-x.dim()}, {x.dim() - 1}])")
    group = get_tp_group() if group is None else group
    world = 1 if group is None else dist.get_world_size(group)
    if world == 1:
        return x
    if x.requires_grad and torch.is_grad_enabled():  # (an autograd Function's forward runs with grad mode off)
        from fastvideo_quant._tp_autograd import gather_from_tp_region

        return gather_from_tp_region(x, dist.get_rank(group), world, group, dim)
    dim = dim % x.dim()
    out = torch.empty((world * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous(), group=group) if _gather_into_ok(x) else _gather_list(out, x, group)
    if dim == 0:
        return out
    return out.view((world,) + tuple(x.shape)).movedim(0, dim).reshape(
        tuple(x.shape[:dim]) + (world * x.shape[dim],) + tuple(x.shape[dim + 1 :])
    )


def collective_device(group: dist.ProcessGroup, near: torch.device | None = None) -> torch.device:
    """Where a small tensor for a collective over ``group`` must live: under NCCL, ``near`` where it is a CUDA device
    (the model's: a script that puts each rank's model on ``cuda:LOCAL_RANK`` without ``torch.cuda.set_device``
    would otherwise have every rank use ``cuda:0``), else the current CUDA device; the CPU for gloo (a
    ``cpu:gloo,cuda:nccl`` group takes CPU tensors too)."""
    if dist.get_backend(group) == "nccl":
        if near is not None and near.type == "cuda" and near.index is not None:
            return near
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_failures(error: str | None, group: dist.ProcessGroup | None,
                    near: torch.device | None = None) -> dict[int, str]:
    """Which ranks of ``group`` failed, and how: ``{group rank: its error}`` of every rank that passed an ``error``
    (``{}`` when none did). Collective: every rank of ``group`` must call it.

    One all-reduce (max) of a 0/1 flag when every rank passed; only when one failed, an ``all_gather_object`` of the
    errors. Without torch.distributed, or over one rank, no collective at all.
    """
    if group is None or not _active() or dist.get_world_size(group) == 1:
        return {} if error is None else {0: error}
    flag = torch.tensor([int(error is not None)], dtype=torch.int32, device=collective_device(group, near))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if not flag.item():
        return {}
    errors: list[str | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, error, group=group)
    return {rank: text for rank, text in enumerate(errors) if text is not None}


def _gather_into_ok(x: torch.Tensor) -> bool:
    # gloo has no all_gather_into_tensor; NCCL does.
    return x.is_cuda


def _gather_list(out: torch.Tensor, x: torch.Tensor, group: dist.ProcessGroup) -> None:
    dist.all_gather(list(out.chunk(dist.get_world_size(group), dim=0)), x.contiguous(), group=group)


def tp_sizes_dividing(*sizes: int, limit: int = 64) -> list[int]:
    """The TP sizes up to ``limit`` that divide every one of ``sizes``."""
    return [d for d in range(1, min(min(sizes), limit) + 1) if all(s % d == 0 for s in sizes)]


def tp_sizes_text(*sizes: int, limit: int = 64) -> str:
    """``TP sizes that divide it: [...]`` (``all of [...]`` for several sizes), for a ShardingError. The list stops at
    ``limit`` (a practical TP size); when a larger size divides too (100 divides 100), the wording says so."""
    what = "it" if len(sizes) == 1 else f"all of {list(sizes)}"
    capped = f"up to {limit} " if math.gcd(*sizes) > limit else ""
    return f"TP sizes {capped}that divide {what}: {tp_sizes_dividing(*sizes, limit=limit)}"


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """``numerator // denominator``, or ShardingError naming ``what`` when it does not divide."""
    if numerator % denominator:
        raise ShardingError(
            f"{what} {numerator} is not divisible by the tensor-parallel size {denominator}; "
            f"{tp_sizes_text(numerator)}"
        )
    return numerator // denominator


def split_tensor_along_last_dim(x: torch.Tensor, num_partitions: int) -> tuple[torch.Tensor, ...]:
    """Split ``x`` into ``num_partitions`` equal views along its last dimension."""
    size = divide(x.shape[-1], num_partitions, "last dimension")
    return torch.split(x, size, dim=-1)
