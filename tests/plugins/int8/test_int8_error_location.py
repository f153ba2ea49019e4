"""int8: a bad SCB row or float weight entry of a fused or tensor-parallel layer is reported where it is in the
checkpoint (tensor name and index), not only where it landed in the layer on its rank. Real gloo ranks."""

from __future__ import annotations

import locate_workers as W
import pytest
import torch

from fastvideo_quant.testing.distributed import run_distributed

pytestmark = pytest.mark.slow

QKV = {"hidden_size": 32, "head_size": 8, "total_num_heads": 4}


def test_bad_k_scb_row_at_tp2_names_k_proj_and_its_row(tmp_path):
    """k rows 0..15 split 8 per rank: checkpoint row 11 is rank 1's k row 3, after its 16 q rows: [19]."""
    W.write_quantized(tmp_path, "int8", {"blk.q_proj": (32, 32), "blk.k_proj": (16, 32), "blk.v_proj": (16, 32)},
                      W.spoil("blk.k_proj.SCB", 11, float("inf")))
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "qkv", "int8", {**QKV, "total_num_kv_heads": 2},
                                   backend="gloo")
    # its k rows are 0..7: it loaded, and was told rank 1's load failed (the load is collective)
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0
    assert ("int8 layer 'blk.qkv_proj': tensor 'blk.qkv_proj.SCB' (torch.float32, shape (32,)): expected every entry "
            "finite and >= 0 (a row's absmax), found 1 of 32 rows that are not, the first at [19] "
            "(checkpoint tensor 'blk.k_proj.SCB' [11]) = inf") in rank1


def test_zero_scb_of_a_replicated_kv_head_is_named_alike_on_both_ranks(tmp_path):
    """One KV head over TP 2: both ranks hold k rows 0..7, so both report checkpoint row 5."""
    W.write_quantized(tmp_path, "int8", {"blk.q_proj": (32, 32), "blk.k_proj": (8, 32), "blk.v_proj": (8, 32)},
                      W.spoil("blk.k_proj.SCB", 5, 0.0))
    errors = run_distributed(W.load_error, 2, str(tmp_path), "qkv", "int8", {**QKV, "total_num_kv_heads": 1},
                             backend="gloo")
    for err in errors:
        assert "> 0 where the row of 'weight' is not all zero" in err
        assert "the first at [21] (checkpoint tensor 'blk.k_proj.SCB' [5]) = 0.0" in err


def test_nan_in_a_row_parallel_float_weight_names_its_checkpoint_column(tmp_path):
    """A float checkpoint quantized on load, TP 2 over the input: column 40 is rank 1's column 8."""
    from safetensors.torch import save_file

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w[3, 40] = float("nan")
    save_file({"blk.down.weight": w}, str(tmp_path / "model.safetensors"))
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "row", "int8-online",
                                   {"input_size": 64, "output_size": 16}, backend="gloo")
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0  # told of rank 1's failure
    assert ("int8 layer 'blk.down': tensor 'blk.down.weight' (torch.float32, shape (16, 32)): expected every entry "
            "finite, found 1 of 512 that are NaN or inf, the first at [3, 8] (checkpoint tensor 'blk.down.weight' "
            "[3, 40]) = nan") in rank1
