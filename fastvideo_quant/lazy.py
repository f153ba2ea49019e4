"""Checkpoint tensors that are read only when (and only as much as) a loader needs.

The safetensors loader hands weight loaders a :class:`LazyTensor`; ``narrow``
composes without reading, so each tensor-parallel rank reads only its slice.
Loaders written for this package go through :func:`narrow` and :func:`materialize`,
which accept a plain ``torch.Tensor`` too.
"""

from __future__ import annotations

from typing import Any

import torch


class LazyTensor:
    """A (possibly narrowed) view of one tensor in a safetensors file."""

    def __init__(self, source: Any, shape: tuple[int, ...], name: str, dtype: torch.dtype | None = None,
                 slices: tuple[slice, ...] | None = None) -> None:
        self._source = source  # safetensors PySafeSlice: indexing reads just that part
        self.shape = torch.Size(shape)
        self.name = name
        self.dtype = dtype
        self._slices = slices if slices is not None else tuple(slice(0, n) for n in shape)

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def narrow(self, dim: int, start: int, length: int) -> LazyTensor:
        dim = dim % self.dim()
        if start < 0 or start + length > self.shape[dim]:
            raise IndexError(f"narrow({dim}, {start}, {length}) is out of range for shape {tuple(self.shape)}")
        base = self._slices[dim].start
        slices = list(self._slices)
        slices[dim] = slice(base + start, base + start + length)
        shape = list(self.shape)
        shape[dim] = length
        return LazyTensor(self._source, tuple(shape), self.name, self.dtype, tuple(slices))

    def materialize(self) -> torch.Tensor:
        if not self._slices:  # a scalar
            return self._source[...]
        return self._source[self._slices]

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={tuple(self.shape)})"


TensorLike = torch.Tensor | LazyTensor


def narrow(t: TensorLike, dim: int, start: int, length: int) -> TensorLike:
    """``t.narrow(dim, start, length)`` for tensors and lazy tensors."""
    return t.narrow(dim, start, length)


def materialize(t: TensorLike) -> torch.Tensor:
    """A real tensor: reads a lazy tensor's slice, passes a tensor through."""
    return t.materialize() if isinstance(t, LazyTensor) else t
