"""The W8A8 GEMM's autotune buckets: which M share one autotuned pick, and which configs each bucket tunes over."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton not installed")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastvideo_quant.kernels.w8a8_configs import CONFIGS, M_BUCKET_MAX, m_bucket, prune  # noqa: E402


def test_bucket_values():
    assert [m_bucket(m) for m in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    assert [m_bucket(m) for m in (65, 128, 129, 192, 193, 256, 257, 960, 961, 1024)] == [
        128, 128, 192, 192, 256, 256, 320, 960, 1024, 1024]
    assert [m_bucket(m) for m in (1025, 2048, 2049, 4096, 4097, 32768)] == [2048, 2048, 4096, 4096, 4096, 4096]
    assert m_bucket(10**6) == M_BUCKET_MAX


@given(st.integers(65, 1024))
def test_every_m_of_a_fine_bucket_has_the_same_64_and_128_row_grid(m):
    """A pick timed at one M of a bucket serves all of them: between 65 and 1024 rows they run the same number of
    64- and 128-row tiles (power-of-two buckets mixed 120 and 160 programs at 5120x5120 M=192 / 256)."""
    bucket = m_bucket(m)
    same = [mm for mm in range(65, 1025) if m_bucket(mm) == bucket]
    assert bucket in same and bucket % 64 == 0 and min(same) > bucket - 64
    for rows in (64, 128):
        assert len({-(-mm // rows) for mm in same}) == 1


@pytest.mark.parametrize("m", [1, 16, 40, 64, 65, 128, 300, 512, 513, 960, 1024, 2000, 4096])
def test_each_m_tunes_over_the_tiles_it_did_with_power_of_two_buckets(m):
    """The 64-row buckets change which M share a pick, not the tile sizes each M may pick from."""
    old_bucket = min(max(1 << (m - 1).bit_length(), 16), M_BUCKET_MAX)
    old = list(prune(CONFIGS, {"M_BUCKET": old_bucket}))
    new = list(prune(CONFIGS, {"M_BUCKET": m_bucket(m)}))
    assert new == old


@pytest.mark.parametrize("m", [1, 16, 17, 32])
def test_small_m_buckets_tune_over_64_row_tiles_too(m):
    """Up to M=32 the 64-row (warpgroup MMA) tiles are candidates beside the 16- and 32-row ones: 64x64x256 was the
    fastest fp8 config at 5120x5120 M=17-32 on the H200 (``fp8-path-sweep_*_small-m-chain*``); no 128-row tile."""
    rows = {c.kwargs["BLOCK_M"] for c in prune(CONFIGS, {"M_BUCKET": m_bucket(m)})}
    assert rows == {16, 32, 64}
