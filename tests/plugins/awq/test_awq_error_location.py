"""AWQ: a bad scale of a fused or tensor-parallel layer is reported where it is in the checkpoint (tensor name and
index), not only where it landed in the layer on its rank. Real gloo ranks."""

from __future__ import annotations

import locate_workers as W
import pytest

from fastvideo_quant.testing.distributed import run_distributed

pytestmark = pytest.mark.slow


def test_bad_group_scale_of_a_row_parallel_layer_at_tp2_names_its_group(tmp_path):
    """in 128 in groups of 32, split over 2 ranks: checkpoint group 3 is rank 1's group 1."""
    W.write_quantized(tmp_path, "awq-32", {"blk.down": (64, 128)}, W.spoil("blk.down.scales", (3, 5), float("nan")))
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "row", "awq-32",
                                   {"input_size": 128, "output_size": 64}, backend="gloo")
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0  # told of rank 1's failure
    assert ("AWQ layer 'blk.down': tensor 'blk.down.scales' (torch.float16, shape (2, 64)): expected every entry "
            "finite and > 0 (AutoAWQ's (max - min) / 15), found 1 of 128 entries that are not, the first at [1, 5] "
            "(checkpoint tensor 'blk.down.scales' [3, 5]) = nan") in rank1


def test_bad_scale_of_up_at_tp2_names_up_proj_and_its_column(tmp_path):
    """gate 64 / up 128 columns: rank 1 holds gate's 32..63, then up's 64..127; up's column 70 is its column 38."""
    W.write_quantized(tmp_path, "awq-32", {"blk.gate_proj": (64, 64), "blk.up_proj": (128, 64)},
                      W.spoil("blk.up_proj.scales", (1, 70), -0.5))
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "merged", "awq-32",
                                   {"input_size": 64, "output_sizes": [64, 128]}, backend="gloo")
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0  # told of rank 1's failure
    assert "the first at [1, 38] (checkpoint tensor 'blk.up_proj.scales' [1, 70]) = -0.5" in rank1
