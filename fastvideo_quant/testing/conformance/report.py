"""Failure messages of the conformance suite and the numbers they quote.

Every failure names the broken contract, the method, the layer class with its
shapes, what was expected and found, and how to fix it, so a plugin author can
act on it without reading the suite.
"""

from __future__ import annotations

import math

import torch


class ConformanceFailure(AssertionError):
    """A quantization method broke one of the plugin contracts."""

    def __init__(self, contract: str, method: str, where: str, problem: str, fix: str) -> None:
        self.contract = contract
        self.method = method
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(
            f"[contract: {contract}] method {method!r}, {where}: {problem}\n  how to fix: {fix}"
        )


def scale_bias(out: torch.Tensor, ref: torch.Tensor, bound: float) -> tuple[float, float] | None:
    """``(g1, g2)`` when ``out`` is ``ref`` times a constant factor more than ``bound`` from 1, else None. The two
    least-squares gains ``g1 = <out, ref> / <ref, ref>`` (``out`` on ``ref``) and ``g2 = <out, out> / <out, ref>`` (the
    reverse regression) bracket 1 for any rounding whose error is uncorrelated with ``out`` or with ``ref``: uniform
    grids (``g1`` ~ 1) and codebooks fitted for least squared error (Lloyd-Max, NF4: ``g1`` ~ 1 - err², ``g2`` ~ 1)
    alike. A constant factor moves both the same way: a scale 16/15 too large reads 1.067 and 1.079."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    cross, own, theirs = float((out * ref).sum()), float((ref * ref).sum()), float((out * out).sum())
    if own == 0.0 or cross <= 0.0:
        return None  # (zeros or an unrelated output: the accuracy checks' to report)
    g1, g2 = cross / own, theirs / cross
    return (g1, g2) if min(g1, g2) > 1 + bound or max(g1, g2) < 1 - bound else None


def row_offset(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The median over rows of ``|mean(out - ref)| / RMS(out - ref)`` (rows whose error is zero left out; 0 when all
    are). Rounding to nearest errs alike up and down, so a row's mean error is its RMS error over ~sqrt(row length)
    (0.05 for 256 uniform errors); a constant added to every entry of a row — a 4-bit zero point off by one adds one
    step, whose RMS error is sqrt(1 + 1/12) steps — reads ~0.96, however many entries the row has. A bound on the
    error's size alone cannot see it: one step is only ~3.5x the rounding error."""
    err = out.detach().double().cpu() - ref.detach().double().cpu()
    err = err.reshape(err.shape[0], -1) if err.dim() else err.reshape(1, 1)
    rms = err.pow(2).mean(dim=1).sqrt()
    live = rms > 0
    if not bool(live.any()):
        return 0.0
    return float((err.mean(dim=1)[live].abs() / rms[live]).median())


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``20 log10(||ref|| / ||out - ref||)``; inf when equal."""
    err = rel_error(out, ref)
    if err == 0.0:
        return math.inf
    return -20.0 * math.log10(err) if math.isfinite(err) else -math.inf


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item() if a.numel() else 0.0


def fmt_shapes(tensors: dict[str, torch.Tensor]) -> str:
    """``name[shape] dtype`` for each tensor, for messages."""
    return ", ".join(f"{k}{list(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in sorted(tensors.items()))
