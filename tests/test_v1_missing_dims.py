"""A v1 parameter sized per rank or for all fused parts, with no output_dim / input_dim: the loader's shape error says
that the attribute is missing and which method's create_weights must set it (it said only "expected shape (48, 64),
found (32, 64)", which reads as a checkpoint problem; a plugin author's review). Real gloo ranks at TP=2."""

from __future__ import annotations

import missing_dim_workers as W

from fastvideo_quant.testing.distributed import run_distributed


def test_tp1_fused_layer_names_the_missing_output_dim() -> None:
    got = W.load_errors(0, 1)
    assert got["column"] is None and got["row"] is None  # (at TP=1 an unfused weight is the checkpoint's whole)
    assert got["merged"] == (
        "CheckpointShapeError: blk.gu.weight shard 0: expected shape (48, 64), found (32, 64). The parameter has no "
        "output_dim, so the loader copies the checkpoint tensor whole into it; its dim 0, 48, is the size of this "
        "layer's output rows on this rank (TP rank 0 of 1; output_partition_sizes [32, 16]) and the tensor's, 32, "
        "their whole. If NoDimsMethod.create_weights sized it per rank or per fused part, it must set output_dim=0 on "
        "it (set_weight_attrs(param, {'output_dim': 0, ...}), or a v2 parameter class taking it) for the loader to "
        "write each rank's and each part's slice; if the parameter is the same on every rank, the checkpoint "
        "tensor's shape is what is wrong"), got


def test_tp2_column_and_row_name_the_missing_dim() -> None:
    for rank, got in enumerate(run_distributed(W.load_errors, 2)):
        assert got["column"].startswith("CheckpointShapeError: blk.up.weight: expected shape (16, 64), found (32, 64). "
                                        "The parameter has no output_dim"), got
        assert (f"its dim 0, 16, is the size of this layer's output rows on this rank (TP rank {rank} of 2; "
                "output_partition_sizes [16]) and the tensor's, 32, their whole") in got["column"], got
        assert got["row"].startswith("CheckpointShapeError: blk.down.weight: expected shape (32, 32), found (32, 64). "
                                     "The parameter has no input_dim"), got
        assert ("its dim 1, 32, is the size of this layer's input features on this rank (TP rank "
                f"{rank} of 2; input_size_per_partition 32)") in got["row"], got
        assert "If NoDimsMethod.create_weights sized it per rank or per fused part, it must set input_dim=1" in got["row"]
        assert "output rows on this rank (TP rank" in got["merged"] and "output_dim=0" in got["merged"], got
