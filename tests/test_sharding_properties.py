"""Hypothesis: over shapes, layer kinds and TP sizes, loading at each rank and gathering gives the checkpoint back."""

import tp_workers as W

from fastvideo_quant.testing.distributed import run_distributed


def test_load_then_gather_roundtrips() -> None:
    checked = run_distributed(W.gather_roundtrip, 4, 60)
    assert checked[0] > 40, f"too few examples ran on rank 0: {checked}"
    assert all(c > 0 for c in checked)
