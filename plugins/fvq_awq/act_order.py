"""Activation ordering (compressed-tensors ``actorder: group``): inputs regrouped into the contiguous groups the AWQ
kernels read.

A ``weight_g_idx`` int32 ``[in]`` gives each input ``k`` its group: ``W[:, k] = (u[:, k] - v[:, g[k]]) * s[:, g[k]]``
(``fvq_awq.ct_format``). GPTQ with ``actorder: group`` (llm-compressor ``gptq_quantize.py``) quantizes the inputs in
order of their Hessian diagonal, so the inputs of one group are spread over the whole input; each group holds exactly
``group_size`` of them. The kernels read groups of consecutive inputs, so after loading the inputs are put in group
order — the weight's codes permuted once, the activations permuted on every call (``x.index_select(-1, order)``):
the same products in another order, exact (``x @ W.T == x[:, order] @ W[:, order].T`` up to float summation order).

A row-parallel rank holds a contiguous slice of the inputs, whose groups are spread over all the checkpoint's groups
with uneven counts; and a ``weight_g_idx`` may give any group any number of inputs. So each group's inputs are cut
into kernel groups of ``group`` inputs (32, 64 or 128), the last one padded with rows whose weight is exactly zero
(code = the group's zero point) reading input 0, and the whole padded to a multiple of 128 inputs (the kernels' fast
routes); the kernel group size is :func:`choose_group`'s. A whole-layer GPTQ ``weight_g_idx`` of inputs in whole 128s
needs no padding: ``group`` is the checkpoint's group size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Group sizes the AWQ kernels run, the choices for a regrouped layer's kernel groups.
KERNEL_GROUPS = (128, 64, 32)
#: Bytes the kernel tensors store per output row: half a byte per input (int4) and, per group, an fp16 scale and a
#: uint8 zero point.
_GROUP_BYTES = 3


@dataclass(frozen=True)
class Regroup:
    """Where each of a rank's inputs goes in the kernel's input order.

    ``group``: the kernel's group size. ``order`` int64 ``[K']``: the rank's input each kernel input reads (padding
    reads input 0). ``position`` int64 ``[K]``: the kernel input each rank input became. ``source`` int64 ``[K' /
    group]``: the checkpoint group of each kernel group. ``padding`` int64: the kernel inputs that are padding.
    ``identity``: the order changes nothing (no gather needed on the calls).
    """

    group: int
    order: torch.Tensor
    position: torch.Tensor
    source: torch.Tensor
    padding: torch.Tensor
    identity: bool

    @property
    def in_features(self) -> int:
        """K': the kernel's input count (the rank's inputs plus padding)."""
        return self.order.numel()


#: K' is padded to whole steps of this many inputs (zero-weight kernel groups at the end): the GPU kernels' fast
#: routes run on inputs in whole 128s (``fvq_awq.kernels.dispatch.packed_steps``, the CUDA kernel's 128-input blocks).
STEP = 128


def kernel_inputs(counts: torch.Tensor, group: int) -> int:
    """K' for a layer whose groups hold ``counts`` inputs, cut into kernel groups of ``group``, in whole steps."""
    k = int(((counts + group - 1) // group).sum()) * group
    return -(-k // STEP) * STEP


def choose_group(counts: torch.Tensor) -> int:
    """The kernel group size storing the fewest bytes for groups of ``counts`` inputs (ties: the larger)."""
    return min(KERNEL_GROUPS, key=lambda g: (kernel_inputs(counts, g) * (0.5 + _GROUP_BYTES / g), -g))


def plan(g_idx: torch.Tensor, groups: int, group: int | None = None) -> Regroup:
    """The regrouping of a rank's inputs whose ``weight_g_idx`` is ``g_idx`` (values in ``[0, groups)``, checked by
    the caller), in kernel groups of ``group`` inputs (None: :func:`choose_group`'s)."""
    g = g_idx.to(torch.int64).cpu()
    k = g.numel()
    counts = torch.bincount(g, minlength=groups)
    group = choose_group(counts) if group is None else group
    chunks = (counts + group - 1) // group
    starts = torch.cumsum(chunks * group, 0) - chunks * group  # each checkpoint group's first kernel input
    inputs = torch.argsort(g, stable=True)  # the rank's inputs in group order (within a group: input order)
    g_sorted = g[inputs]
    first = (torch.cumsum(counts, 0) - counts)[g_sorted]  # where each input's group begins in that sorted list
    placed = starts[g_sorted] + torch.arange(k) - first
    k_kernel = kernel_inputs(counts, group)
    position = torch.empty(k, dtype=torch.int64)
    position[inputs] = placed
    order = torch.zeros(k_kernel, dtype=torch.int64)
    order[placed] = inputs
    real = torch.zeros(k_kernel, dtype=torch.bool)
    real[placed] = True
    # (the step padding's kernel groups take group 0's scale and zero point: their codes are its zero point, weight 0)
    source = torch.cat([torch.repeat_interleave(torch.arange(groups), chunks),
                        torch.zeros((k_kernel - int(chunks.sum()) * group) // group, dtype=torch.int64)])
    identity = k_kernel == k and torch.equal(position, torch.arange(k))
    return Regroup(group, order, position, source, (~real).nonzero().squeeze(1), identity)


def regrouped_codes(codes: torch.Tensor, zeros_k: torch.Tensor, regroup: Regroup) -> torch.Tensor:
    """A block of output rows' stored codes ``[rows, K]`` (uint8) in the kernel's input order ``[rows, K']``, each
    padding input given its kernel group's zero point ``zeros_k`` ``[rows, K' / group]`` (a weight of exactly 0)."""
    out = codes.index_select(1, regroup.order.to(codes.device))
    pad = regroup.padding.to(codes.device)
    if pad.numel():
        out[:, pad] = zeros_k.index_select(1, pad // regroup.group).to(out.dtype)
    return out


def gather_inputs(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x [..., K]`` in the kernel's input order, ``[..., K']`` (padding reads input 0): the Triton gather for a CUDA
    ``x`` (``fvq_awq.kernels.gather``: 1.1-2.7x faster than torch's on an H100), ``index_select`` otherwise. Called by
    the GPU dispatcher (``awq_linear_cuda`` with an order), which has checked that ``x`` is on the current device and
    runs eagerly or inside the layer's op (never traced, never recorded by autograd); the CPU method gathers with
    ``index_select`` itself."""
    if x.is_cuda:
        from fvq_awq.kernels.gather import gather_columns

        x2 = x.reshape(-1, x.shape[-1])
        out = gather_columns(x2 if x2.stride(-1) == 1 else x2.contiguous(), order)
        return out.reshape(*x.shape[:-1], order.shape[0])
    return x.index_select(-1, order)
