"""Workspace for one-launch split-K reductions, shared by the small-M kernels (8-bit and AWQ int4 weights).

The kernels that use it split K over programs; each (tile, split) program stores its float32 partial in the
workspace, then bumps the tile's counter (``atomic_add``, acquire-release); the program that arrives last sums the
partials *in split order* — so results do not depend on which split finished first — applies the epilogue and
resets the counter to 0, leaving the counters ready for the next launch without a memset. One launch,
deterministic. The protocol is :func:`split_k_sum` (a ``@triton.jit`` helper every such kernel calls); the host
side is :data:`SCRATCH`.

Imported lazily (CUDA, or tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def split_k_sum(acc, ws_ptr, lock_ptr, tile, pid_k, local, TILE: tl.constexpr, SPLIT_K: tl.constexpr, mask):
    """Store this split's float32 partial ``acc`` of output tile ``tile``; return ``(last, total)``.

    ``mask`` (``acc``'s shape) limits the partials stored and summed to the tile's valid elements (e.g. the real
    rows of a tile padded to the dot's 16 rows: at M=1 a sixteenth of the traffic); ``total`` is 0 elsewhere.

    ``local`` holds each element's offset inside the tile (``acc``'s shape, values in ``[0, TILE)``); the workspace
    keeps ``SPLIT_K`` partials of ``TILE`` elements per tile. ``last`` is true in exactly one program per tile — the
    one that arrived last — and only there is ``total`` the sum of all partials, added in split order so the result
    does not depend on arrival order; that program has already reset the tile's counter for the next launch and
    must write the tile out (epilogue), the others must not.
    """
    part_ptrs = ws_ptr + (tile.to(tl.int64) * SPLIT_K) * TILE + local
    tl.store(part_ptrs + pid_k * TILE, acc, mask=mask)
    tl.debug_barrier()  # every thread's partial is stored before the counter says so
    arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
    last = arrived == SPLIT_K - 1
    total = tl.zeros_like(acc)
    if last:
        for s in range(0, SPLIT_K):  # split order
            total += tl.load(part_ptrs + s * TILE, mask=mask, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next launch (launches on one stream are ordered)
    return last, total


#: Programs per multiprocessor that split-K choices aim at for weight-streaming kernels at small M. Nsight Compute on
#: an H200 (5120x5120, M=1, ``benchmarks/ncu_probe.py``): the 8-bit small-M kernel with split 2 launched 320 programs
#: of 4 warps: 14% achieved occupancy and 32% of DRAM bandwidth, too few loads in flight. The H200 sweeps' best
#: splits give 640-864 programs, about 5 per multiprocessor, for the 8-bit kernel (``results/small-m-sweep_*``) and
#: for AWQ's packed ``gemm_t`` at M <= 16 alike (``results/awq-sweep-packed_*``).
PROGRAMS_PER_SM = 5


@functools.cache
def sm_count(index: int) -> int:
    """Multiprocessors of CUDA device ``index`` (queried once per device)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_for_occupancy(tiles: int, sm_count: int, splits: list[int]) -> int:
    """The split (from ``splits``: those the kernel takes for this K) whose grid of ``tiles * split`` programs comes
    closest to :data:`PROGRAMS_PER_SM` per multiprocessor; the smaller split on a tie; 1 if none is given."""
    target = PROGRAMS_PER_SM * sm_count
    return min(splits or [1], key=lambda s: (abs(tiles * s - target), s))


class SplitKScratch:
    """Split-K workspace (float32 partials) and self-resetting tile counters, per (device, stream).

    Eager launches on one stream are ordered, so they can share one pair. A launch being captured into a CUDA
    graph gets its own zeroed pair instead (allocated in the graph's pool, its memset captured): a graph's
    pointers are replayed on any stream and at any time, so two graphs must never share counters.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device, partial_elems: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A float32 workspace of at least ``partial_elems`` and ``tiles`` zeroed int32 counters on ``device``."""
        if device.type == "cuda":
            index = torch.cuda.current_device()  # the device whose stream the launcher uses
            if torch.cuda.is_current_stream_capturing():
                return (torch.empty(partial_elems, dtype=torch.float32, device=device),
                        torch.zeros(tiles, dtype=torch.int32, device=device))
            key = ("cuda", index, torch._C._cuda_getCurrentRawStream(index))
        else:
            key = (device.type, -1, 0)
        ws, locks = self._bufs.get(key, (None, None))
        if ws is None or ws.numel() < partial_elems or locks.numel() < tiles:
            ws = torch.empty(max(partial_elems, 0 if ws is None else ws.numel()), dtype=torch.float32, device=device)
            locks = torch.zeros(max(tiles, 0 if locks is None else locks.numel()), dtype=torch.int32, device=device)
            self._bufs[key] = (ws, locks)
        return ws, locks

    def for_grid(self, out: torch.Tensor, grid: tuple[int, int, int],
                 tile_elems: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Workspace and counters for a launch whose ``grid`` holds output tiles on axes 0 and 1 and the splits on
        axis 2, ``tile_elems`` float32 partials per tile; without a split ``out`` twice (a valid pointer, never
        read)."""
        if grid[2] == 1:
            return out, out
        tiles = grid[0] * grid[1]
        return self.get(out.device, tiles * grid[2] * tile_elems, tiles)


#: The process-wide scratch the kernels share (one stream's launches are ordered, so sharing is safe).
SCRATCH = SplitKScratch()
