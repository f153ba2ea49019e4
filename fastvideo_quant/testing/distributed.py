"""Run a function on N real torch.distributed ranks (gloo on CPU, NCCL on GPU) and collect results.

Used by our tests and the conformance suite: tensor-parallel checks run on real
process groups, not on mocked ranks.
"""

from __future__ import annotations

import faulthandler
import io
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["DistributedError", "default_backend", "rank_device", "run_distributed"]


def _worker(rank: int, world_size: int, backend: str, payload: bytes, outdir: str, environ: dict[str, str],
            path: list[str]) -> None:
    # A forkserver's child has the environment and sys.path the server started with: the caller's, now, as a spawned
    # rank's were; then fn and its arguments are unpickled (their modules imported by that path).
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    fn, args = torch.load(io.BytesIO(payload), weights_only=False)
    faulthandler.enable()  # a rank killed by a signal prints its Python stack
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    # A file rendezvous in the run's own directory: no port to pick, so parallel runs never collide.
    store = f"file://{Path(outdir) / 'rendezvous'}"
    dist.init_process_group(backend, init_method=store, rank=rank, world_size=world_size)
    # torch no longer waits for every rank inside init_process_group (TORCH_DIST_INIT_BARRIER defaults to 0), and gloo's
    # full mesh is not finished on every rank when it is on one: a rank whose fn needs no collective (a load that is
    # refused at once) could finish and exit while a slower peer was still connecting, which then failed with "Gloo
    # connectFullMesh failed ... Connection closed by peer" -- a crash of a rank that did nothing wrong. One barrier
    # here holds every rank until the whole mesh is up.
    if backend == "nccl":
        dist.barrier(device_ids=[rank])
    else:
        dist.barrier()
    try:
        result: Any = ("ok", fn(rank, world_size, *args))
    except BaseException as exc:  # noqa: BLE001 - sent back to the parent with its traceback
        result = ("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        dist.destroy_process_group()
    with open(Path(outdir) / f"rank{rank}.pkl", "wb") as f:
        torch.save(result, f)  # (as the arguments came: float8 tensors too)
    # Leave without interpreter teardown: the rank's work is complete and recorded, and a process group that something
    # in the rank's code still holds (a module-level layer before fastvideo_quant held groups weakly; torch.distributed.nn
    # .functional's defaults when torch._dynamo was first imported after init) keeps gloo's worker threads running into
    # interpreter exit, where torch 2.13 can abort the process ("terminate called without an active exception",
    # pytorch/pytorch#190489) -- which mp.spawn would report as a crashed rank. tests/test_docs_tp_example.py checks a
    # whole script's exit, teardown included.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank_device() -> torch.device:
    """Where this rank's tensors must live: its own GPU under NCCL, else the CPU (gloo)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class DistributedError(AssertionError):
    """A rank raised; the message holds its traceback."""


def default_backend(world_size: int) -> str:
    """NCCL with one GPU per rank when ``world_size`` GPUs are visible, else gloo on the CPU."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None,
                    timeout: float | None = None) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks, each a fresh process; return each rank's result.

    ``fn`` must be importable (a module-level function). Arguments and results go through torch's serialization
    (pickle, float8 tensors included), so return CPU tensors. A rank's exception is re-raised here as DistributedError
    carrying the rank's traceback, so a failing assertion reads as it would at TP=1.
    With ``timeout`` (seconds), ranks still running then (a hang in a collective) are
    killed and a DistributedError names them.
    """
    backend = backend or default_backend(world_size)
    with tempfile.TemporaryDirectory() as outdir:
        # (torch's serialization: plain pickle cannot unpickle float8 tensors, torch 2.13)
        buffer = io.BytesIO()
        torch.save((fn, args), buffer)
        payload = buffer.getvalue()
        context = mp.start_processes(_worker, args=(world_size, backend, payload, outdir, dict(os.environ),
                                                    list(sys.path)),
                                     nprocs=world_size, join=False, start_method=_start_method())
        _join(context, timeout)
        results = []
        for rank in range(world_size):
            with open(Path(outdir) / f"rank{rank}.pkl", "rb") as f:
                status, value = torch.load(f, weights_only=False)
            if status == "error":
                raise DistributedError(value)
            results.append(value)
    return results


def _start_method() -> str:
    """How the ranks start: from a forkserver that imported torch once (where the platform has one), each rank a fork
    of it — a spawned rank imported torch again, about 2 s of CPU a rank, which most of a small TP test was — else
    spawned. Either way a rank is a fresh process with the caller's environment and ``sys.path``, which imports
    ``fn``'s module."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch"])  # (no effect once it runs)
    return "forkserver"


def _join(context: mp.ProcessContext, timeout: float | None) -> None:
    """Wait for every rank; past ``timeout`` seconds, kill those still running and raise DistributedError."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not context.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
        if deadline is not None and time.monotonic() >= deadline:
            hung = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
            for rank in hung:
                context.processes[rank].kill()
            for p in context.processes:
                p.join()
            raise DistributedError(f"rank(s) {hung} still running after {timeout:g} s (a hang in a collective?): killed")
