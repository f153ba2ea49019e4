"""``run_distributed``'s ranks, forked from a forkserver that imported torch once: each has the caller's environment
and ``sys.path`` as of the call (a spawned rank's were), takes and returns float8 tensors (plain pickle cannot
unpickle them), and a rank that needs no collective does not break a peer still connecting."""

from __future__ import annotations

import sys
import textwrap

import run_distributed_workers as W
import torch

from fastvideo_quant.testing.distributed import run_distributed


def test_the_ranks_get_the_callers_environment_and_float8_arguments(monkeypatch) -> None:
    run_distributed(W.env_and_sum, 2, "FVQ_TEST_PROBE", torch.zeros(1))  # (the forkserver runs now, without the var)
    monkeypatch.setenv("FVQ_TEST_PROBE", "set after the forkserver started")
    t = torch.tensor([1.0, 2.0, 4.0]).to(torch.float8_e4m3fn)
    assert run_distributed(W.env_and_sum, 2, "FVQ_TEST_PROBE", t) == [("set after the forkserver started", 7.0)] * 2
    back = run_distributed(W.float8_back, 2)  # (and float8 results)
    assert [b.dtype for b in back] == [torch.float8_e4m3fn] * 2 and [b.float().tolist() for b in back] == [[1, 1], [2, 2]]


def test_a_module_on_a_path_added_after_the_first_call_is_importable(tmp_path, monkeypatch) -> None:
    run_distributed(W.env_and_sum, 2, "PATH", torch.zeros(1))
    (tmp_path / "late_workers_mod.py").write_text(textwrap.dedent("""
        def rank_and_world(rank, world):
            return rank, world
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_workers_mod

    try:
        assert run_distributed(late_workers_mod.rank_and_world, 2) == [(0, 2), (1, 2)]
    finally:
        sys.modules.pop("late_workers_mod", None)


def test_ranks_that_need_no_collective_finish_together() -> None:
    """Without the barrier after init, a fast rank's exit failed a peer still in gloo's connectFullMesh ("Connection
    closed by peer"): a few runs in thirty, under load."""
    for _ in range(3):
        assert run_distributed(W.nothing, 4) == [0, 1, 2, 3]
