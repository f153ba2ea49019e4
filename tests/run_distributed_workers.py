"""Rank functions for tests/testing/test_run_distributed.py (importable by the ranks: tests/ is on sys.path)."""

from __future__ import annotations

import os

import torch


def env_and_sum(rank: int, world: int, name: str, t: torch.Tensor) -> tuple[str | None, float]:
    return os.environ.get(name), t.float().sum().item()


def nothing(rank: int, world: int) -> int:
    return rank


def float8_back(rank: int, world: int) -> torch.Tensor:
    return torch.full((2,), float(rank + 1)).to(torch.float8_e4m3fn)
