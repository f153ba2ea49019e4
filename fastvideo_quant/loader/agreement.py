"""Every rank of a sharded model agrees on a failed load.

Each rank checks its own files and shards, so a check may fail on one rank only (a tensor missing from that rank's
file, a shape error in its shard, a file it cannot find). Were that rank alone to raise, the others would write, go on
and hang in their first collective until the backend's timeout. So the ranks of the model's tensor-parallel group
exchange a pass/fail flag once the checks are done (one all-reduce; the error lines only when one failed), and a load
is written on every rank or on none: a failing rank raises its own error, the others a :class:`PeerLoadError`. A
failure past the checks (writing, validating or processing the weights) is agreed on at the end, in a second
all-reduce, so that no rank goes on with a model another rank failed to load.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.distributed as dist

from fastvideo_quant.distributed import gather_failures, get_tp_group
from fastvideo_quant.errors import ModelStateError, PeerLoadError
from fastvideo_quant.loader.targets import linear_layers

#: The longest error line sent to the other ranks (the failing rank raises the whole error itself).
HEADLINE_CHARS = 400


def agreement_group(model: torch.nn.Module, collective: bool | dist.ProcessGroup) -> dist.ProcessGroup | None:
    """The process group whose ranks must agree on loading ``model``; None for no collective (torch.distributed not
    initialised, no layer sharded over more than one rank, or ``collective=False``).

    It is the group the model's layers were built with (the whole world for layers built with the default group). A
    model whose layers carry several groups agrees over the one holding every other's ranks (a world-sharded part
    beside sub-group ones); a ModelStateError when none does, before anything is read: pass ``collective=`` the
    group whose ranks load this model together.
    """
    if isinstance(collective, dist.ProcessGroup):
        return collective if dist.get_world_size(collective) > 1 else None
    if not collective or not (dist.is_available() and dist.is_initialized()):
        return None
    found: dict[int, dist.ProcessGroup] = {}
    for _, layer in linear_layers(model):
        if getattr(layer, "tp_size", 1) > 1:
            # an unpickled layer has no group: its collectives run over the TP group current at call time
            group = layer.tp_group if getattr(layer, "tp_group", None) is not None else get_tp_group()
            found.setdefault(id(group), group)
    groups: dict[tuple[int, ...], dist.ProcessGroup] = {}
    for group in found.values():  # in the layers' order, so every rank keeps the same one of two alike groups
        groups.setdefault(tuple(dist.get_process_group_ranks(group)), group)
    if not groups:
        return None
    widest = max(groups, key=len)
    if all(set(ranks) <= set(widest) for ranks in groups):
        return groups[widest]
    raise ModelStateError(
        f"load_checkpoint: the model's layers are sharded over {len(groups)} process groups, none of which holds the "
        f"ranks of all the others (global ranks {sorted(groups)}), so which ranks must agree on a failed load cannot be "
        "told (nothing was loaded). Pass load_checkpoint(..., collective=group) with the group of every rank that loads "
        "this model together, or collective=False to load without agreeing (a rank whose load fails then raises alone)"
    )


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How one load agrees across the model's ranks: ``group`` (None: no collective) and ``near``, the model's device
    (where an NCCL collective's flag goes)."""

    group: dist.ProcessGroup | None
    near: torch.device | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module, collective: bool | dist.ProcessGroup) -> Agreement:
        group = agreement_group(model, collective)
        return cls(group, next((p.device for p in model.parameters()), None) if group is not None else None)

    @contextlib.contextmanager
    def telling(self, written: bool = False) -> Iterator[None]:
        """A stage of the load: an exception inside is told to the other ranks (:func:`tell_the_others`), then
        re-raised — any exception, ``KeyboardInterrupt`` and ``SystemExit`` included: a rank stopped by Ctrl-C during
        its checks would otherwise leave the others waiting in the agreement until the backend's timeout."""
        try:
            yield
        except BaseException as exc:  # ours or not, or an interrupt: the other ranks must hear of it, or they would hang
            tell_the_others(self.group, exc, written, self.near)
            raise

    def agree(self, path, written: bool = False) -> None:
        """:func:`agree` over this load's group."""
        agree(self.group, path, written, self.near)


def tell_the_others(group: dist.ProcessGroup | None, exc: BaseException, written: bool = False,
                    near: torch.device | None = None) -> None:
    """On a rank where the load raised ``exc``: tell the group's other ranks, and say so in ``exc``'s message (its
    type unchanged); the caller re-raises it. Before ``written`` (in the checks), the others then write nothing
    either; after it (writing, validating or processing), they have loaded, and raise so as not to go on alone.
    ``near``: the model's device (where an NCCL collective's flag goes)."""
    if group is None:
        return
    failed = gather_failures(_headline(exc), group, near)
    me = dist.get_rank(group)
    others = {r: line for r, line in failed.items() if r != me}
    outcome = ("the other ranks were told and raised too: they loaded the checkpoint, but with this rank's layers "
               "not loaded the model is not usable as a whole; build it again on every rank and load after fixing "
               "this" if written else
               "the other ranks were told and refused the load too, so nothing was written on any rank")
    note = (f"(load_checkpoint is collective over this model's {dist.get_world_size(group)}-rank tensor-parallel "
            f"group: this is {_rank(group, me)}'s error; {outcome}"
            + ("; " + "; ".join(f"{_rank(group, r)} failed too: {line}" for r, line in sorted(others.items()))
               if others else "") + ")")
    _append(exc, note)


def agree(group: dist.ProcessGroup | None, path, written: bool = False, near: torch.device | None = None) -> None:
    """On a rank where the load got this far: a PeerLoadError when it failed on another rank — before anything is
    written (``written`` False, after the checks), or at the end (``written``: this rank loaded, that one did not)."""
    if group is None:
        return
    failed = gather_failures(None, group, near)
    if not failed:
        return
    me = dist.get_rank(group)
    lines = "\n  ".join(f"{_rank(group, r)}: {line}" for r, line in sorted(failed.items()))
    where = f"{len(failed)} rank(s) of this model's {dist.get_world_size(group)}-rank tensor-parallel group"
    if written:
        what = (f"load_checkpoint of {str(path)!r} failed on {where} after every rank's checks had passed (while "
                f"writing, validating or processing their weights). This rank ({_rank(group, me)}) loaded it, but the "
                "model is not usable as a whole (its layers' forward is refused): build it again on every rank, fix "
                "what the failing rank's error says "
                "(its own output, with the traceback) and load again on every rank:\n  ")
    else:
        what = (f"load_checkpoint of {str(path)!r} was refused on {where}, so this rank ({_rank(group, me)}) refused "
                "it too: nothing was written on any rank, and the model is as it was. Each failing rank raised its "
                "own error with every detail: read that rank's output (its traceback) and fix what it says, then load "
                "again on every rank:\n  ")
    raise PeerLoadError(what + lines, failed=failed, written=written)


def _headline(exc: BaseException) -> str:
    """The first line of ``exc`` (and the next one where it ends with a colon: a list's first entry)."""
    text = str(exc) or ("interrupted" if isinstance(exc, KeyboardInterrupt) else "")
    full = type(exc).__name__ + (f": {text}" if text else "")
    lines = [line.strip() for line in full.splitlines() if line.strip()]
    head = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return head if len(head) <= HEADLINE_CHARS else head[:HEADLINE_CHARS - 3] + "..."


def _rank(group: dist.ProcessGroup, rank: int) -> str:
    """``rank 1`` (its rank in ``group``), with the global rank where that differs."""
    world = dist.get_global_rank(group, rank)
    return f"rank {rank}" + (f" (global rank {world})" if world != rank else "")


def _append(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc``'s message where that is its one string argument (our errors), else as a note (shown
    under its traceback): its type and attributes stay as they are."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and type(exc).__str__ is BaseException.__str__:
        exc.args = (f"{exc.args[0]}\n{note}",)
    else:
        exc.add_note(note)
