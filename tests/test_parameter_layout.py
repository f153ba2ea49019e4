"""``permute_param_layout_``: physical layout and dim attributes move together; impossible requests are named."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastvideo_quant.parameter import (
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    PackedvLLMParameter,
    permute_param_layout_,
)


def _noop(*args, **kwargs) -> None:
    return None


def _labelled(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.arange(torch.Size(shape).numel()).reshape(shape)


def test_2d_weight_transposes_and_its_dims_follow():
    w = _labelled((3, 5))  # [out, in]
    p = ModelWeightParameter(data=w.clone(), input_dim=1, output_dim=0, weight_loader=_noop)
    assert permute_param_layout_(p, input_dim=0, output_dim=1) is p
    assert torch.equal(p.data, w.t()) and (p.input_dim, p.output_dim) == (0, 1)
    permute_param_layout_(p, input_dim=1, output_dim=0)  # and back
    assert torch.equal(p.data, w) and (p.input_dim, p.output_dim) == (1, 0)


@pytest.mark.parametrize("cur_in, cur_out, new_in, new_out",
                         [c for c in itertools.product(range(3), repeat=4) if c[0] != c[1] and c[2] != c[3]])
def test_3d_every_placement_moves_exactly_those_dims(cur_in, cur_out, new_in, new_out):
    shape = [2, 3, 4]
    data = _labelled(tuple(shape))
    p = ModelWeightParameter(data=data.clone(), input_dim=cur_in, output_dim=cur_out, weight_loader=_noop)
    permute_param_layout_(p, input_dim=new_in, output_dim=new_out)
    assert (p.input_dim, p.output_dim) == (new_in, new_out)
    assert p.data.shape[new_in] == shape[cur_in] and p.data.shape[new_out] == shape[cur_out]
    other_old = ({0, 1, 2} - {cur_in, cur_out}).pop()
    other_new = ({0, 1, 2} - {new_in, new_out}).pop()
    # element [i, j, k] of the old layout is found where its indices land in the new one
    for idx in itertools.product(*(range(s) for s in shape)):
        new_idx = [0, 0, 0]
        new_idx[new_in], new_idx[new_out], new_idx[other_new] = idx[cur_in], idx[cur_out], idx[other_old]
        assert p.data[tuple(new_idx)] == data[idx]


def test_packed_dim_is_checked_and_follows():
    q = _labelled((8, 4))  # [in, out / 8] packed along out (AutoAWQ qweight)
    p = PackedvLLMParameter(data=q.clone(), input_dim=0, output_dim=1, packed_dim=1, packed_factor=8,
                            weight_loader=_noop)
    permute_param_layout_(p, input_dim=1, output_dim=0, packed_dim=0)
    assert (p.input_dim, p.output_dim, p.packed_dim) == (1, 0, 0) and torch.equal(p.data, q.t())
    with pytest.raises(ValueError, match="packed dim .* lands at 1 in this layout, not at packed_dim=0"):
        permute_param_layout_(p, input_dim=0, output_dim=1, packed_dim=0)
    assert (p.input_dim, p.output_dim, p.packed_dim) == (1, 0, 0)  # nothing half-done


def test_one_known_dim_needs_2d_and_bad_requests_are_named():
    s = ChannelQuantScaleParameter(data=_labelled((6, 1)), output_dim=0, weight_loader=_noop)
    permute_param_layout_(s, input_dim=0, output_dim=1)
    assert s.output_dim == 1 and s.data.shape == (1, 6)
    s3 = ChannelQuantScaleParameter(data=torch.zeros(2, 3, 4), output_dim=0, weight_loader=_noop)
    with pytest.raises(ValueError, match=r"must be 2-D; found shape \(2, 3, 4\)"):
        permute_param_layout_(s3, input_dim=0, output_dim=1)
    p = ModelWeightParameter(data=torch.zeros(3, 5), input_dim=1, output_dim=0, weight_loader=_noop)
    with pytest.raises(ValueError, match="input_dim=2 is out of range"):
        permute_param_layout_(p, input_dim=2, output_dim=0)
    with pytest.raises(ValueError, match="must differ, both are 0"):
        permute_param_layout_(p, input_dim=0, output_dim=0)
    with pytest.raises(ValueError, match="which is not packed"):
        permute_param_layout_(p, input_dim=0, output_dim=1, packed_dim=0)
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['tile'\]"):
        permute_param_layout_(p, input_dim=0, output_dim=1, tile=16)
    bare = torch.nn.Parameter(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="neither input_dim nor output_dim"):
        permute_param_layout_(bare, input_dim=0, output_dim=1)


def test_a_packed_parameters_size_error_names_its_packing() -> None:
    """A packed weight whose packed_factor does not fit the checkpoint: the size error says the sizes are counted in
    stored elements of packed_factor rows (it read like a plain shape mismatch)."""
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.parameter import PackedvLLMParameter

    param = PackedvLLMParameter(data=torch.empty(8, 16, dtype=torch.int32), packed_factor=4, packed_dim=0,
                                output_dim=0, input_dim=1, weight_loader=lambda *a: None)
    with pytest.raises(WeightLoadError) as info:  # shard 'q' of 32 rows is 8 stored rows; the checkpoint's has 2
        param.load_qkv_weight(torch.zeros(2, 16, dtype=torch.int32), shard_id="q", shard_offset=0, shard_size=32,
                              num_heads=1)
    assert "PackedvLLMParameter shard 'q' (packed_factor 4 along packed_dim 0, the output dim)" in str(info.value)
