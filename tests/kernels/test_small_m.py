"""The shared small-M 8-bit-weight kernel against float32 math, under the Triton interpreter on CPU (CI).

Natively on a GPU. The kernel quantizes nothing, so the only error is its bf16/fp16 output rounding;
any activation quantization (W8A8) would give ~1e-2, so these bounds can fail.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton not installed")
from fastvideo_quant.kernels.small_m import TABLE, Config, config_for, config_for_shape, small_m_linear  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
QMAX = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}


def _weights(n, k, wdt, g):
    w = torch.randn(n, k, generator=g)
    s = w.abs().amax(1) / QMAX[wdt]
    y = w / s[:, None]
    q = y.round().clamp(-127, 127).to(torch.int8) if wdt == torch.int8 else y.to(wdt)
    return q, s.float()


def _rel(a, b):
    return float((a.float() - b).norm() / b.norm())


@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.int8])
@pytest.mark.parametrize("m,k,n,bias", [(1, 128, 32, True), (5, 200, 48, False), (33, 384, 64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_float32_math(wdt, m, k, n, bias, dtype):
    g = torch.Generator().manual_seed(m * 7 + k)
    q, s = _weights(n, k, wdt, g)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    ref = x.float() @ (q.float() * s[:, None]).T + (0 if b is None else b.float())
    y = small_m_linear(x.to(DEV), q.to(DEV), s.to(DEV), None if b is None else b.to(DEV)).cpu()
    assert y.dtype == dtype and y.shape == (m, n)
    # One output rounding: <= 2^-8 relative for bf16 (2^-7 where the interpreter truncates), 2^-11 for fp16.
    assert _rel(y, ref) < (8e-3 if dtype == torch.bfloat16 else 1e-3)


@pytest.mark.parametrize("split", [2, 3, 4])
def test_split_k_is_repeatable_and_equals_no_split(split):
    """Serial split-K: the same bits every launch (the counters reset themselves), close to no split."""
    g = torch.Generator().manual_seed(split)
    q, s = _weights(64, 640, torch.float8_e4m3fn, g)
    x = torch.randn(20, 640, generator=g).to(torch.bfloat16).to(DEV)
    q, s = q.to(DEV), s.to(DEV)
    one = small_m_linear(x, q, s, None, config=Config(16, 32, 32, 1, 4, 1))
    cfg = Config(16, 32, 32, split, 4, 1)
    first = small_m_linear(x, q, s, None, config=cfg)
    for _ in range(3):
        assert torch.equal(small_m_linear(x, q, s, None, config=cfg), first)
    assert _rel(first.cpu(), one.cpu().float()) < 8e-3


def test_rows_are_independent():
    """Row i of a batch equals the same row run alone (masking of the padded rows is right)."""
    g = torch.Generator().manual_seed(3)
    q, s = _weights(32, 256, torch.int8, g)
    x = torch.randn(6, 256, generator=g).to(torch.float16).to(DEV)
    q, s = q.to(DEV), s.to(DEV)
    assert torch.equal(small_m_linear(x, q, s, None)[4:5], small_m_linear(x[4:5].contiguous(), q, s, None))


def test_sliced_input_rows_are_read_with_their_stride():
    """A column slice of a wider activation (e.g. q out of a fused qkv) is not dense: the result must not change."""
    g = torch.Generator().manual_seed(5)
    q, s = _weights(32, 64, torch.int8, g)
    wide = torch.randn(5, 192, generator=g).to(torch.bfloat16).to(DEV)
    x = wide[:, 64:128]
    assert x.stride() != (64, 1)
    q, s = q.to(DEV), s.to(DEV)
    assert torch.equal(small_m_linear(x, q, s, None), small_m_linear(x.contiguous(), q, s, None))


def test_bad_inputs_name_what_was_expected():
    q = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"same K.*found x torch.bfloat16 \(2, 16\)"):
        small_m_linear(torch.zeros(2, 16, dtype=torch.bfloat16), q, torch.ones(8), None)
    with pytest.raises(ValueError, match="bf16/fp16"):
        small_m_linear(torch.zeros(2, 32), q, torch.ones(8), None)
    with pytest.raises(ValueError, match=r"float32 scales.*scale torch.bfloat16"):
        small_m_linear(torch.zeros(2, 32, dtype=torch.bfloat16), q, torch.ones(8, dtype=torch.bfloat16), None)
    with pytest.raises(ValueError, match=r"2-D x \[M, K\].*found x \(1, 2, 32\)"):
        small_m_linear(torch.zeros(1, 2, 32, dtype=torch.bfloat16), q, torch.ones(8), None)
    with pytest.raises(ValueError, match="contiguous"):
        small_m_linear(torch.zeros(2, 32, dtype=torch.bfloat16), torch.zeros(32, 8, dtype=torch.int8).t(),
                       torch.ones(8), None)
    with pytest.raises(ValueError, match="x is on meta but the weight on cpu"):
        small_m_linear(torch.zeros(2, 32, dtype=torch.bfloat16, device="meta"), q, torch.ones(8), None)


def test_table_is_ordered_and_covers_up_to_its_last_m():
    limits = [limit for limit, _ in TABLE]
    assert limits == sorted(limits)
    assert config_for(1) == TABLE[0][1] and config_for(limits[-1]) == TABLE[-1][1]


def test_split_k_aims_at_programs_per_multiprocessor_at_small_m():
    """H200 sweep winners (132 SMs; n, k): split 4 at N=5120, 2 at N=13824 and 12288; above M=16 the table's split."""
    assert config_for_shape(1, 5120, 5120, 132).split_k == 4
    assert config_for_shape(16, 13824, 5120, 132).split_k == 2
    assert config_for_shape(16, 5120, 13824, 132).split_k == 4
    assert config_for_shape(1, 12288, 3072, 132).split_k == 2
    assert config_for_shape(1, 5120, 5120, 16).split_k == 1  # a small GPU: no split needed to fill it
    assert config_for_shape(1, 64, 384, 132).split_k == 1  # K=384 is not a whole number of 2 x 128 steps
    assert config_for_shape(32, 5120, 5120, 132) == config_for(32)
    assert config_for_shape(1, 5120, 5120, 132)._replace(split_k=TABLE[0][1].split_k) == TABLE[0][1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the DiT-width check of the compiled kernel)")
@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.int8])
@pytest.mark.parametrize("m", [1, 16, 32, 48])
def test_dit_width_on_gpu_with_the_table_configs(wdt, m):
    """The table's split-K configs at a DiT width, fresh inputs each call (the second is the direct launch)."""
    g = torch.Generator().manual_seed(m)
    q, s = _weights(13824, 5120, wdt, g)
    q, s = q.cuda(), s.cuda()
    b = torch.randn(13824, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x = torch.randn(m, 5120, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ (q.float() * s[:, None]).T + b.float()
        assert _rel(small_m_linear(x, q, s, b), ref) < 5e-3


def test_planned_launch_equals_the_checked_launch():
    """After the first (checked) call per key the launch is planned: same bits as the checked launch with the same
    config, new values under the same key, one plan per key (M, alignment, bias), none for a copied (strided) x, and
    bad input still refused."""
    from fastvideo_quant.kernels import small_m
    from fastvideo_quant.kernels.split_k import sm_count

    small_m._PLANS.clear()
    g = torch.Generator().manual_seed(11)
    q, s = (t.to(DEV) for t in _weights(64, 256, torch.float8_e4m3fn, g))
    b = torch.randn(64, generator=g).to(torch.bfloat16).to(DEV)
    flat = torch.empty(3 * 256 + 1, dtype=torch.bfloat16, device=DEV)
    wide = torch.randn(3, 512, generator=g).to(torch.bfloat16).to(DEV)
    cases = [(torch.randn(3, 256, generator=g).to(torch.bfloat16).to(DEV), b),
             (torch.randn(1, 256, generator=g).to(torch.bfloat16).to(DEV), None),
             (flat[1:].view(3, 256), b), (wide[:, :256], None)]
    cases[2][0].copy_(torch.randn(3, 256, generator=g))

    def checked(x, bias):
        m = x.shape[0]
        cfg = small_m.INTERPRET_CONFIG if DEV == "cpu" else config_for_shape(m, 64, 256, sm_count(x.device.index))
        return small_m_linear(x, q, s, bias, config=cfg)

    for x, bias in cases:
        for _ in range(3):
            assert torch.equal(small_m_linear(x, q, s, bias), checked(x, bias))
        x.mul_(-2)  # new values, same key
        assert torch.equal(small_m_linear(x, q, s, bias), checked(x, bias))
    assert len(small_m._PLANS) == 3
    for _ in range(2):
        with pytest.raises(ValueError, match="expected x bf16/fp16"):
            small_m_linear(cases[0][0].float(), q, s, b)
    assert len(small_m._PLANS) == 3


def _block_weights(n, k, bk, g):
    """Block-scaled e4m3 weights: codes ``[N, K]`` and float32 scales ``[ceil(K/bk), N]`` spread over 2^-10..2^0, so a
    scale applied to the wrong block (or once per channel) is far off (and fp16 outputs stay finite)."""
    q = (torch.randn(n, k, generator=g) * 32).clamp(-448, 448).to(torch.float8_e4m3fn)
    kb = -(-k // bk)
    s = torch.exp2(torch.randint(-10, 0, (kb, n), generator=g).float()) * (1 + torch.rand(kb, n, generator=g))
    return q, s


def _block_ref(x, q, s, bk, b=None):
    w = q.double() * s.double().t().repeat_interleave(bk, dim=1)[:, : q.shape[1]]
    return (x.double() @ w.t() + (0 if b is None else b.double())).float()


@pytest.mark.parametrize("m,k,n,bk,split", [(1, 256, 32, 128, 1), (5, 200, 48, 64, 1), (16, 384, 64, 128, 3),
                                            (3, 640, 32, 32, 2), (9, 130, 16, 128, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_block_scales_match_float64_math(m, k, n, bk, split, dtype):
    """Per-block weight scales (``block_k``): each K block's product times its own scale, against float64 math of the
    same codes and scales — with partial last blocks (K=200, 130), split-K (a split may run past K) and a bias. The
    only error is the output rounding, as for per-channel scales."""
    g = torch.Generator().manual_seed(m * 13 + k)
    q, s = _block_weights(n, k, bk, g)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    ref = _block_ref(x, q, s, bk, b)
    cfg = Config(16, 32, 32 if bk >= 32 else 16, split, 4, 1)
    y = small_m_linear(x.to(DEV), q.to(DEV), s.to(DEV), b.to(DEV), config=cfg, block_k=bk).cpu()
    assert y.dtype == dtype and y.shape == (m, n)
    assert _rel(y, ref) < (8e-3 if dtype == torch.bfloat16 else 1e-3)
    # the planned launch (no config) agrees with float64 math too
    assert _rel(small_m_linear(x.to(DEV), q.to(DEV), s.to(DEV), b.to(DEV), block_k=bk).cpu(), ref) < 8e-3


def test_block_scales_bad_inputs_name_what_was_expected():
    g = torch.Generator().manual_seed(1)
    q, s = _block_weights(32, 256, 128, g)
    x = torch.randn(2, 256, generator=g).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"\[2, 32\] \(block_k=128\) float32 scales.*scale torch.float32 \(32,\)"):
        small_m_linear(x, q, s[0], None, block_k=128)
    with pytest.raises(ValueError, match="block_k must be 0 .* or a positive multiple of 16, found 100"):
        small_m_linear(x, q, torch.ones(3, 32), None, block_k=100)
    with pytest.raises(ValueError, match="config's block_k=128 must divide the scales' block_k=64"):
        small_m_linear(x, q, torch.ones(4, 32), None, config=Config(16, 32, 128, 1, 4, 1), block_k=64)
