"""The TP sizes a ShardingError lists work with the layer's method too. The layers check that sizes divide before
the method's own alignment, and listed every divisor: following the advice (AWQ Row 320 inputs at group 64: "TP sizes
that divide it: [1, 2, 4, 5, ...]") gave a second ShardingError at the size suggested (TP 2: 160 inputs per rank, not
whole groups). Now the divisors are filtered through ``QuantizationConfig.shard_problems``, with the first reason.
fp8_compute's per-rank rule (multiples of 16) at a TP size where only it fails is a ShardingError with the TP sizes
that work (was a ConfigError saying to load without it)."""

from __future__ import annotations

import tp_advice_workers as W

from fastvideo_quant.testing.distributed import run_distributed


def test_listed_tp_sizes_follow_the_methods_alignment() -> None:
    res = run_distributed(W.refusals, 3)
    for rank, got in enumerate(res):
        assert got["awq_row"].endswith(
            "TP sizes up to 64 that divide it: [1, 2, 4, 5, 8, 10, 16, 20, 32, 40, 64]; of those, method 'awq' allows "
            "[1, 5] (at TP size 2: input size per rank 160 is not a multiple of group_size 64)"), got["awq_row"]
        assert got["fp8_merged"].endswith(
            "TP sizes that divide all of [200, 56]: [1, 2, 4, 8]; of those, method 'fp8' allows [1] (at TP size 2: "
            "output shard 0 has 100 rows per rank (of 200), not a multiple of bn=128)"), got["fp8_merged"]
        assert got["fp8_qkv"].endswith(
            "TP sizes that work: [1, 2, 4]; of those, method 'fp8' allows [1, 2] (at TP size 4: output shard 0 has 64 "
            "rows per rank (of 256), not a multiple of bn=128)"), got["fp8_qkv"]
        assert got["plain_row"].endswith("TP sizes up to 64 that divide it: [1, 2, 4, 5, 8, 10, 16, 20, 32, 40, 64]")
        assert got["named_config"].startswith("ShardingError: MergedColumnParallelLinear 'blk.m': output_sizes[0]=200")
        assert got["named_config"].endswith("TP sizes that divide all of [200, 56]: [1, 2, 4, 8]"), got["named_config"]
        assert got["fp8_online_row"].endswith("TP sizes up to 64 that divide it: [1, 2, 4, 5, 8, 10, 16, 20, 32, 40, "
                                              "64]"), got["fp8_online_row"]  # (online blocks: no alignment rule)
        if rank < 2:
            assert got["fp8_compute"] == (
                "ShardingError: AWQ layer 'blk.gate_up' (MergedColumnParallelLinear, TP size 2): fp8_compute: output "
                "features 168 per rank not a multiple of 16. TP sizes that keep this layer aligned: [1]; or, to keep "
                "TP size 2, load without fp8_compute (the exact int4 product has no such rule). Those are this layer's: "
                "tp_fit(model) (fastvideo_quant.layers.linear) checks every layer at once, on the model built at TP "
                "size 1 on the meta device"), got["fp8_compute"]
        else:
            assert got["fp8_compute"] is None  # TP=1: 336 outputs, a multiple of 16
