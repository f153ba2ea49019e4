"""load_checkpoint under tensor parallelism: a load that fails on one rank is refused on every rank of the model's group
(nothing written anywhere, no rank left hanging in a collective), on real gloo process groups."""

from __future__ import annotations

from pathlib import Path

import loader_agreement_workers as W
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fastvideo_quant.testing.distributed import run_distributed

#: Seconds before a hung rank is killed: the old behaviour (one rank raising, the others loading and then waiting
#: in the forward's all-reduce) must fail the test, not stall it.
TIMEOUT = 120


def _checkpoint(path: Path, drop: str | None = None) -> str:
    path.mkdir()
    save_file({n: t for n, t in W.full_tensors().items() if n != drop}, str(path / "model.safetensors"))
    return str(path)


def _reference() -> torch.Tensor:
    t = W.full_tensors()
    return F.linear(F.linear(W.X, t["up.weight"], t["up.bias"]), t["down.weight"], t["down.bias"])


def test_every_rank_loads_with_one_all_reduce(tmp_path: Path):
    good = _checkpoint(tmp_path / "good")
    for rank, res in enumerate(run_distributed(W.load_on_each_rank, 2, [good, good], ["plain", "plain"],
                                               backend="gloo", timeout=TIMEOUT)):
        assert res["raised"] is None and res["tp_size"] == 2, res
        torch.testing.assert_close(res["output"], _reference())
        # the two agreements (after the checks, and at the end), nothing more
        assert res["collectives"] == {"all_reduce": 2}, (rank, res["collectives"])


def test_no_agreement_with_collective_false(tmp_path: Path):
    good = _checkpoint(tmp_path / "good")
    for res in run_distributed(W.load_on_each_rank, 2, [good, good], ["plain", "plain"], None, False,
                               backend="gloo", timeout=TIMEOUT):
        assert res["raised"] is None and res["collectives"] == {}, res
        torch.testing.assert_close(res["output"], _reference())


def test_a_tensor_missing_on_one_rank_refuses_the_load_on_every_rank(tmp_path: Path):
    good, bad = _checkpoint(tmp_path / "good"), _checkpoint(tmp_path / "bad", drop="up.weight")
    rank0, rank1 = run_distributed(W.load_on_each_rank, 2, [good, bad], ["plain", "plain"], backend="gloo",
                                   timeout=TIMEOUT)
    # the failing rank raises its own error, saying the others were told
    assert rank1["raised"] == "CheckpointError", rank1
    assert "missing tensor for parameter 'up.weight'" in rank1["message"], rank1
    assert "the other ranks were told and refused the load too" in rank1["message"], rank1
    # the rank whose checks passed refuses too, naming the failing rank and its error, and writes nothing
    assert rank0["raised"] == "PeerLoadError", rank0
    assert "refused on 1 rank(s) of this model's 2-rank tensor-parallel group" in rank0["message"], rank0
    assert ("rank 1: CheckpointError: checkpoint " in rank0["message"]
            and "missing tensor for parameter 'up.weight'" in rank0["message"]), rank0["message"]
    assert "nothing was written on any rank" in rank0["message"], rank0["message"]
    assert list(rank0["failed"]) == [1], rank0["failed"]
    assert rank0["unchanged"] and rank1["unchanged"]
    assert rank0["collectives"] == rank1["collectives"] == {"all_reduce": 1, "all_gather_object": 1}


@pytest.mark.parametrize("how, raised, line", [
    ("missing", "CheckpointError", "CheckpointError: checkpoint '"),  # its path does not exist: before any file opens
    ("meta", "ModelStateError", "ModelStateError: load_checkpoint: the model's tensors"),  # the first check of all
    ("foreign", "FileNotFoundError", "FileNotFoundError: [Errno 2] No such file or directory"),  # not our error
    ("interrupted", "KeyboardInterrupt", "KeyboardInterrupt: interrupted"),  # Ctrl-C there: no rank left waiting
])
def test_any_exception_on_one_rank_reaches_the_others(tmp_path: Path, how: str, raised: str, line: str):
    good = _checkpoint(tmp_path / "good")
    other = str(tmp_path / "nowhere") if how == "missing" else good
    rank0, rank1 = run_distributed(W.load_on_each_rank, 2, [good, other],
                                   ["plain", "plain" if how == "missing" else how], backend="gloo", timeout=TIMEOUT)
    assert rank1["raised"] == raised, rank1
    told = rank1["message"] if how in ("missing", "meta") else " ".join(rank1["notes"])  # a foreign one gets a note
    assert "the other ranks were told" in told, rank1
    assert rank0["raised"] == "PeerLoadError" and f"rank 1: {line}" in rank0["message"], rank0
    assert rank0["unchanged"], rank0


def test_a_failure_past_the_checks_reaches_the_others(tmp_path: Path):
    """Rank 1's layer fails in process_weights_after_loading, after both ranks wrote: rank 0 must not go on alone."""
    good = _checkpoint(tmp_path / "good")
    rank0, rank1 = run_distributed(W.load_on_each_rank, 2, [good, good], ["plain", "process_fails"], backend="gloo",
                                   timeout=TIMEOUT)
    assert rank1["raised"] == "WeightProcessingError" and "no kernel for this shard" in rank1["message"], rank1
    assert "the other ranks were told and raised too" in rank1["message"], rank1
    assert rank0["raised"] == "PeerLoadError" and rank0["written"] is True, rank0
    assert "after every rank's checks had passed" in rank0["message"], rank0
    assert "rank 1: WeightProcessingError: process_weights_after_loading failed on layer 'up'" in rank0["message"]
    assert not rank0["unchanged"], rank0  # it did load: the message says so
    # and neither rank's forward runs: rank 0's would wait in the row layer's all-reduce that rank 1 never joins
    assert rank0["forward_raised"].startswith("ModelStateError: layer 'up' (ColumnParallelLinear): forward refused: "
                                              "load_checkpoint of"), rank0["forward_raised"]
    assert "failed on another rank of its tensor-parallel group" in rank0["forward_raised"], rank0["forward_raised"]
    assert "build it again on every rank" in rank0["forward_raised"], rank0["forward_raised"]
    assert rank1["forward_raised"].startswith("NotProcessedError: layer 'up' (ColumnParallelLinear): forward refused: "
                                              "process_weights_after_loading failed on layer 'up'"), rank1


def test_the_agreement_is_over_the_models_group_not_the_world(tmp_path: Path):
    """4 ranks, TP groups {0, 1} and {2, 3}: rank 3 fails; rank 2 refuses, ranks 0 and 1 load."""
    good, bad = _checkpoint(tmp_path / "good"), _checkpoint(tmp_path / "bad", drop="down.bias")
    results = run_distributed(W.load_on_each_rank, 4, [good, good, good, bad], ["plain"] * 4, [[0, 1], [2, 3]],
                              backend="gloo", timeout=TIMEOUT)
    for res in results[:2]:
        assert res["raised"] is None, res
        torch.testing.assert_close(res["output"], _reference())
    assert results[3]["raised"] == "CheckpointError", results[3]
    assert results[2]["raised"] == "PeerLoadError", results[2]
    assert "rank 1 (global rank 3): CheckpointError" in results[2]["message"], results[2]["message"]
    assert results[2]["unchanged"] and results[3]["unchanged"]


def test_layers_of_nested_groups_agree_over_the_widest(tmp_path: Path):
    """4 ranks, up sharded over {0, 1} / {2, 3}, down over the world: rank 3 fails, and every rank refuses."""
    good, bad = _checkpoint(tmp_path / "good"), _checkpoint(tmp_path / "bad", drop="down.bias")
    results = run_distributed(W.load_on_each_rank, 4, [good, good, good, bad], ["mixed"] * 4, [[0, 1], [2, 3]],
                              backend="gloo", timeout=TIMEOUT)
    assert results[3]["raised"] == "CheckpointError", results[3]
    for res in results[:3]:
        assert res["raised"] == "PeerLoadError" and "rank 3: CheckpointError" in res["message"], res
        assert "4-rank tensor-parallel group" in res["message"] and res["unchanged"], res


def test_the_harness_kills_ranks_hanging_in_a_collective():
    """run_distributed(timeout=...) is what keeps a regression of the above from stalling the suite."""
    import time

    from fastvideo_quant.testing.distributed import DistributedError

    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank\(s\) \[0, 1\] still running after 5 s"):
        run_distributed(W.hang_in_a_collective, 2, backend="gloo", timeout=5)
    assert time.monotonic() - start < 60
