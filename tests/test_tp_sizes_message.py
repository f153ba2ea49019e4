"""The ShardingError's list of TP sizes that divide a size says where it stops (it is capped at 64)."""

from __future__ import annotations

import pytest

from fastvideo_quant.distributed import divide
from fastvideo_quant.errors import ShardingError


def test_a_list_cut_at_64_says_so() -> None:
    # 100 itself divides 100 (each rank one row), but the list stops at 64: the wording must not claim it is complete.
    with pytest.raises(ShardingError, match=r"TP sizes up to 64 that divide it: \[1, 2, 4, 5, 10, 20, 25, 50\]$"):
        divide(100, 3, "size")


def test_a_complete_list_includes_the_size_itself() -> None:
    with pytest.raises(ShardingError, match=r"; TP sizes that divide it: \[1, 2, 3, 4, 6, 12\]$"):
        divide(12, 5, "size")
