"""The CUDA C++ W8A16 wgmma kernel (float8 e4m3 weights, 16-bit activations, M above 16) against float32 math, on a
GPU of compute capability 9.0 (wgmma); its argument checks anywhere."""

import pytest
import torch

from fastvideo_quant.kernels import w8_wgmma_cuda as wg
from fastvideo_quant.kernels.w8_wgmma_cuda import w8_wgmma

needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                                reason="needs a CUDA GPU of compute capability 9.0 (wgmma)")

FINITE_E4M3 = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)  # (0x7F, 0xFF: NaN)

TILES = [{"mn": 128, "wg": 2, "cs": 1, "s": 4}, {"mn": 128, "wg": 2, "cs": 3, "s": 2}, {"mn": 64, "wg": 1, "cs": 2,
         "s": 6}, {"mn": 32, "wg": 2, "cs": 4, "s": 3}, {"mn": 64, "wg": 2, "cs": 8, "s": 7}]


def _layer(n, k, seed=0, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    return w.to(device), scale.to(device)


def _rel(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


@needs_sm90
@pytest.mark.parametrize("m", [17, 32, 40, 64, 100, 128, 129, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", TILES)
def test_matches_float32_math(m, dtype, tile):
    # K = 1152: 9 blocks of 128, split unevenly over 2-8 parts; N = 400: not a multiple of 64 or 128 features, so the
    # last block's warps read rows past N (never stored); M past a tile's rows takes more row tiles
    w, scale = _layer(400, 1152, seed=m)
    x = torch.randn(m, 1152, device="cuda", dtype=dtype)
    bias = torch.randn(400, device="cuda")
    ref = x.float() @ (w.float() * scale[:, None]).t()
    out = w8_wgmma(x, w, scale, **tile)
    assert out.dtype == dtype and out.shape == (m, 400)
    assert _rel(out, ref) < 5e-3
    out_b = w8_wgmma(x, w, scale, bias, **tile)
    assert _rel(out_b, ref + bias.to(dtype).float()) < 5e-3
    assert torch.equal(out_b, w8_wgmma(x, w, scale, bias, **tile))  # fixed reduction order: repeatable


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", [TILES[0], TILES[2], {"mn": 128, "wg": 1, "cs": 2, "s": 3}])
def test_every_finite_e4m3_value_exactly(dtype, tile):
    """One-hot activations pick single weights: out[m, n] = w[n, k_m] * scale[n] with one product, so every finite
    e4m3 value must come out exactly as float32 math rounds it — at every input position of a 128-input block (the
    permuted k order of the activation tile)."""
    n, k, m = 256, 256, 128
    codes = FINITE_E4M3[torch.arange(n * k) % FINITE_E4M3.numel()].reshape(n, k)
    w = codes.view(torch.float8_e4m3fn).cuda()
    scale = torch.full((n,), 2.0**-4, device="cuda")
    cols = torch.arange(m) * 2 + torch.arange(m) % 2  # every input of both blocks, row by row
    x = torch.zeros(m, k, device="cuda", dtype=dtype)
    x[torch.arange(m), cols] = 1.0
    out = w8_wgmma(x, w, scale, **tile)
    ref = (w.float()[:, cols.cuda()].t() * scale).to(dtype)
    assert torch.equal(out, ref)


@needs_sm90
@pytest.mark.parametrize("tile", TILES)
def test_overlapped_wait_is_bit_identical_to_waiting_at_once(tile):
    """wait=1 lets block i's wgmma run while block i + 1's fragments are loaded and converted into registers; the
    result must be bit for bit the one of waiting for each block at once (the same products in the same order), over
    many blocks and fresh inputs — a fragment overwritten before the tensor cores read it would show here."""
    w, scale = _layer(384, 128 * 40, seed=7)
    for trial in range(4):
        x = torch.randn(100, 128 * 40, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(w8_wgmma(x, w, scale, **tile, wait=1), w8_wgmma(x, w, scale, **tile, wait=0)), trial


@needs_sm90
def test_strided_rows_and_a_cuda_graph():
    w, scale = _layer(1024, 2048)
    base = torch.randn(96, 2048 + 64, device="cuda", dtype=torch.bfloat16)
    x = base[:, :2048]  # row stride 2112: 16-byte aligned rows, not contiguous
    ref = x.float() @ (w.float() * scale[:, None]).t()
    assert _rel(w8_wgmma(x, w, scale, mn=64, wg=2, cs=2), ref) < 5e-3
    g = torch.cuda.CUDAGraph()
    w8_wgmma(x, w, scale, mn=64, wg=2, cs=2)
    with torch.cuda.graph(g):
        out = w8_wgmma(x, w, scale, mn=64, wg=2, cs=2)
    x.copy_(torch.randn(96, 2048, device="cuda", dtype=torch.bfloat16))
    g.replay()
    torch.cuda.synchronize()
    assert _rel(out, x.float() @ (w.float() * scale[:, None]).t()) < 5e-3


def test_refuses_what_it_does_not_take():
    x = torch.randn(32, 256)
    w = torch.zeros(64, 256).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="w8_wgmma: this call is not supported"):
        w8_wgmma(x, w, torch.ones(64))  # CPU tensors
    assert not wg.supports(x, w, torch.ones(64))


@needs_sm90
def test_refuses_bad_tiles():
    w, scale = _layer(128, 256)
    x = torch.randn(32, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"cs 1..min\(8, K / 128\) = 2, found mn=128 wg=2 cs=3 s=4 wait=1"):
        w8_wgmma(x, w, scale, cs=3)
    with pytest.raises(ValueError, match="mn must be one of"):
        w8_wgmma(x, w, scale, mn=48)
    with pytest.raises(ValueError, match="s=1"):
        w8_wgmma(x, w, scale, s=1)
