"""A method whose checkpoint holds float weights and which quantizes them on load computes its scales from what each
rank holds: a row-parallel rank's row scale spans half the inputs, so the gathered TP=2 weight is not the TP=1 one,
yet both are valid quantizations of the float weight. The TP check holds such a method to its weight bar against the
float weight (not to 1e-5 against TP=1), while still catching a rank that loads the wrong slice."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastvideo_quant.testing import conformance as C

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
from broken_plugins import failure  # noqa: E402


@pytest.fixture(scope="module")
def toys():
    with broken_plugins.registered(broken_plugins.PLUGINS):
        yield


@pytest.mark.parametrize("kind", ["row", "qkv"])
def test_quantizing_on_load_passes_at_tp2(toys, kind) -> None:
    C.check_tp_layer(C.Subject("toy_rowwise_on_load"), kind)


def test_a_rank_loading_the_wrong_slice_still_fails(toys) -> None:
    msg = failure(C.check_tp_layer, C.Subject("toy_no_narrow"), "row")
    assert "[contract: loading at TP=2]" in msg, msg


def test_one_scale_per_rank_passes_with_kv_heads_replicated(toys) -> None:
    """One int8 scale over all a rank holds (vLLM's fp8 online quantization): ranks sharing a KV head hold other q
    rows, so their k and v rows differ slightly. Each replica is within the weight bar of its head's float rows
    (bit-equal replicas were demanded before: 'their dequantized k rows differ (max abs diff 0.00201)')."""
    C.check_tp_replicated_kv(C.Subject("toy_pertensor_on_load"))


def test_a_replica_that_does_not_load_its_kv_head_still_fails(toys) -> None:
    msg = failure(C.check_tp_replicated_kv, C.Subject("toy_first_replica_only"))
    assert ("[contract: loading at TP=2] method 'toy_first_replica_only', QKVParallelLinear(in=256, heads=4, "
            "kv_heads=1, head_size=16, tp=2, dtype=float32): rank 1 holds KV head 0") in msg, msg
    assert "its dequantized k rows differ from that head's float k rows by relative error 1, over the weight bar" \
        in msg, msg
    assert "every one of them loads it" in msg, msg
