"""Workspace for one-launch split-K reductions, shared by the small-M kernels (8-bit and AWQ int4 weights).

The kernels that use it split K over programs; each (tile, split) program stores its float32 partial in the
workspace, then bumps the tile's counter (``atomic_add``, acquire-release); the program that arrives last sums the
partials *in split order* — so results do not depend on which split finished first — applies the epilogue and
resets the counter to 0, leaving the counters ready for the next launch without a memset. One launch,
deterministic.
"""

from __future__ import annotations

import torch


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


#: The process-wide scratch the kernels share (one stream's launches are ordered, so sharing is safe).
SCRATCH = SplitKScratch()
