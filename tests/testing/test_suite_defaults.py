"""The suite's defaults fit real methods: the built-in methods pass it with their default config."""

from __future__ import annotations

from fastvideo_quant.testing import conformance as C
from fastvideo_quant.testing.conformance.tensor_parallel import pair_subjects


def test_pair_needs_no_size_the_per_layer_checks_do_not() -> None:
    col, row = pair_subjects(C.Subject("awq", input_size=512, output_size=384))
    assert (col.input_size, col.output_size) == (512, 512)
    assert (row.input_size, row.output_size) == (512, 384)


def test_awq_default_group_size_passes_the_tp_pair() -> None:
    """AWQ's default group_size is 128: at TP=2 the pair's row layer must get >= 128 inputs per rank."""
    s = C.Subject("awq")
    C.check_tp_pair(s)
    C.check_tp_layer(s, "row")
