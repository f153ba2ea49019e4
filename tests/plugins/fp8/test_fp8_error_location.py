"""fp8: a bad scale or NaN weight entry of a fused or tensor-parallel layer is reported where it is in the checkpoint
(tensor name and index), not only where it landed in the layer on its rank. Real gloo ranks."""

from __future__ import annotations

import locate_workers as W
import pytest
import torch

from fastvideo_quant.testing.distributed import run_distributed

pytestmark = pytest.mark.slow


def test_bad_block_scale_of_up_at_tp2_names_up_proj_and_its_block(tmp_path):
    """gate 32 / up 64 rows in [8, 8] blocks: rank 1 holds gate grid rows 2..3, then up's 4..7; up's block row 5 is
    its row 3 of the layer's grid."""
    W.write_quantized(tmp_path, "fp8-block", {"blk.gate_proj": (32, 32), "blk.up_proj": (64, 32)},
                      W.spoil("blk.up_proj.weight_scale_inv", (5, 1), -1.0))
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "merged", "fp8-block",
                                   {"input_size": 32, "output_sizes": [32, 64]}, backend="gloo")
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0  # told of rank 1's failure
    assert ("fp8 layer 'blk.gate_up_proj': tensor 'blk.gate_up_proj.weight_scale_inv' (torch.float32, shape (6, 4)): "
            "expected every entry finite and > 0 (a scale is the de-quantization multiplier amax / 448), found 1 of 24 "
            "entries that are not, the first at [3, 1] (checkpoint tensor 'blk.up_proj.weight_scale_inv' [5, 1]) = "
            "-1.0") in rank1


def test_zero_per_tensor_scale_of_v_is_named_on_every_rank(tmp_path):
    W.write_quantized(tmp_path, "fp8-tensor", {"blk.q_proj": (32, 32), "blk.k_proj": (16, 32), "blk.v_proj": (16, 32)},
                      W.spoil("blk.v_proj.weight_scale", (), 0.0))
    errors = run_distributed(W.load_error, 2, str(tmp_path), "qkv", "fp8-tensor",
                             {"hidden_size": 32, "head_size": 8, "total_num_heads": 4, "total_num_kv_heads": 2},
                             backend="gloo")
    for err in errors:
        assert "the first at [2] (checkpoint tensor 'blk.v_proj.weight_scale') = 0.0" in err


def test_nan_fp8_weight_of_a_row_parallel_layer_names_its_checkpoint_column(tmp_path):
    def edit(tensors):
        tensors["blk.down.weight"] = tensors["blk.down.weight"].clone()
        tensors["blk.down.weight"].view(torch.uint8)[2, 50] = 0xFF  # e4m3fn NaN (negative)
    W.write_quantized(tmp_path, "fp8-tensor", {"blk.down": (16, 64)}, edit)
    rank0, rank1 = run_distributed(W.load_error, 2, str(tmp_path), "row", "fp8-tensor",
                                   {"input_size": 64, "output_size": 16}, backend="gloo")
    assert rank0.startswith("peer: ") and "rank 1: WeightLoadError" in rank0, rank0  # told of rank 1's failure
    assert ("tensor 'blk.down.weight' (torch.float8_e4m3fn, shape (16, 32)): expected every entry finite, found 1 of "
            "512 that are NaN or inf, the first at [2, 18] (checkpoint tensor 'blk.down.weight' [2, 50]) = nan") in rank1


def test_a_scale_never_loaded_names_the_checkpoint_tensor_it_lacks(tmp_path):
    """A strict=False load without v's scale leaves the layer unprocessed; processing it later names the tensor."""
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.loader import load_checkpoint, process_weights_after_loading

    def edit(tensors):
        del tensors["blk.v_proj.weight_scale"]
    W.write_quantized(tmp_path, "fp8-tensor", {"blk.q_proj": (32, 32), "blk.k_proj": (16, 32), "blk.v_proj": (16, 32)},
                      edit)
    model, _ = W.build("qkv", "fp8-tensor", {"hidden_size": 32, "head_size": 8, "total_num_heads": 4,
                                             "total_num_kv_heads": 2})
    with pytest.warns(Warning):
        load_checkpoint(model, tmp_path, strict=False)
    with pytest.raises(WeightLoadError) as err:
        process_weights_after_loading(model)
    assert ("tensor 'blk.qkv_proj.weight_scale' (torch.float32, shape (3,)): expected every entry loaded from the "
            "checkpoint, found 1 of 3 that were never loaded, the first at [2] (checkpoint tensor "
            "'blk.v_proj.weight_scale'). The checkpoint lacks it") in str(err.value)
