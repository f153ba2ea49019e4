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
