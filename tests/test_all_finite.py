"""The finiteness check of loaded float weights (every method's validate_loaded_weights) takes a fast path from the
tensor's min and max; it must agree with ``isfinite(t).all()`` wherever NaN or inf sit."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvideo_quant.quantization.base import all_finite

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3), dtype=st.sampled_from(DTYPES),
       bad=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from([float("nan"), float("inf"),
                                                                                     -float("inf"), 7e4])),
                    max_size=3))
def test_agrees_with_isfinite(shape, dtype, bad) -> None:
    t = torch.randn(*shape, dtype=torch.float64).to(dtype)
    flat = t.view(-1)
    for where, value in bad:
        if flat.numel():
            flat[int(where * flat.numel())] = value  # 7e4 overflows float16 to inf
    assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(t.t() if t.dim() == 2 else t) == bool(torch.isfinite(t).all())  # a non-contiguous view
