"""The shared rounding helpers agree with torch's own rounding, including just below every tie.

Run under the Triton interpreter on CPU (CI) and compiled on a GPU.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton not installed")
import triton.language as tl  # noqa: E402

from fastvideo_quant.kernels.rounding import round_e4m3, round_half  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEV == "cpu"


@triton.jit
def _apply(x_ptr, o_ptr, n, WHICH: tl.constexpr, USE_RINT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    y = round_half(x, USE_RINT) if WHICH == 0 else round_e4m3(x)
    tl.store(o_ptr + offs, y, mask=mask)


def _run(x: torch.Tensor, which: int) -> torch.Tensor:
    x = x.to(DEV)
    out = torch.empty_like(x)
    _apply[(triton.cdiv(x.numel(), 256),)](x, out, x.numel(), WHICH=which, USE_RINT=not INTERPRETED, BLOCK=256)
    return out.cpu()


def _just_below(v: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(v, torch.zeros_like(v))


def test_round_half_matches_torch_including_ties():
    k = torch.arange(-130, 131, dtype=torch.float32)
    ties = k + 0.5  # to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2
    big = torch.tensor([2.0**22 + 0.5, 2.0**22 + 1.5, -(2.0**22) - 0.5, 2.0**23 + 1, -(2.0**24), 1e30, -0.0, 0.0])
    noise = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 100
    x = torch.cat([ties, _just_below(ties), torch.nextafter(ties, ties + 1), big, noise])
    got, want = _run(x, 0), torch.round(x)
    assert torch.equal(got, want), f"x={x[got != want][:4]}: {got[got != want][:4]} vs {want[got != want][:4]}"


def test_round_e4m3_matches_the_cast_including_just_below_midpoints():
    # every finite e4m3 value, the midpoints between neighbours, and one fp32 ulp either side of them
    vals = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    vals = vals[torch.isfinite(vals)].unique()
    mids = (vals[1:] + vals[:-1]) / 2
    x = torch.cat([vals, mids, _just_below(mids), torch.nextafter(mids, mids + mids.abs() + 1),
                   (torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 50).clamp(-448, 448)])
    got = _run(x, 1)
    want = x.to(torch.float8_e4m3fn).float()
    assert torch.equal(got, want), f"{int((got != want).sum())} of {x.numel()} differ, e.g. x={x[got != want][:4]}"
