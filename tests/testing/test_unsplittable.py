"""The suite's per-rank shape check says when a checkpoint tensor cannot be split over the ranks (it said "this rank
needs [128, 0]": one whole-input group of a row layer at TP=2, or a block row per part at TP=2)."""

from __future__ import annotations

import torch

from fastvideo_quant.testing.conformance.create_weights import _unsplittable


def _param(shape, output_dim=None, input_dim=None) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.empty(shape), requires_grad=False)
    p.output_dim, p.input_dim = output_dim, input_dim
    return p


def test_a_tensor_that_does_not_divide_over_the_ranks_is_named() -> None:
    scale = _param((128, 1), output_dim=0, input_dim=1)
    assert _unsplittable(scale, [torch.empty(128, 1)], "row", 2, None) == (
        "whose size 1 along input_dim=1 cannot be split over the row layer's 2 ranks")
    assert _unsplittable(scale, [torch.empty(128, 1)], "row", 1, None) is None
    assert _unsplittable(scale, [torch.empty(128, 2)], "row", 2, None) is None
    blocks = _param((1, 2), output_dim=0, input_dim=1)
    assert _unsplittable(blocks, [torch.empty(1, 2)], "column", 2, None) == (
        "whose part 0 has size 1 along output_dim=0, which cannot be split over 2 ranks")
    # QKV with one KV head at TP=2: k and v are replicated, not split
    assert _unsplittable(_param((3,), output_dim=0), [torch.empty(2), torch.empty(1), torch.empty(1)], "qkv", 2, 1) \
        is None
