"""Gather activation columns into an act-order layer's kernel input order (``fvq_awq.act_order``): ``out[m, j] =
x[m, order[j]]``.

Two Triton kernels, both writing contiguously:

* the **row kernel** (from :data:`ROW_MIN_M` rows, rows of up to :data:`ROW_MAX_BYTES`): one program loads a whole
  row (coalesced) and gathers it on chip with ``tl.gather``, so the scattered reads never reach L2;
* the **column kernel** (fewer rows, or longer ones): programs of 1024 columns of 1 or 4 rows, the column blocks of
  the same rows launched next to each other, so their scattered reads of those rows come back from L2.

torch's ``index_select`` / indexing / ``gather`` along the last dim run at a quarter of a copy's speed on the H100 at
large M. H100, graph replay (``benchmarks/awq_act_order.py``, ``results/awq-act-order_*_2026-12-06_row-gather.json``),
µs at K = 3072 / 5120 / 13824: M=1-16 the column kernel 6.2-7.0 (a copy 5.1-5.7, ``index_select`` 10.0-11.5);
M=1024 the row kernel 11.6 / 18.4 / 41.5 (column kernel 13.8 / 23.2 / 78.6, ``index_select`` 17.4 / 27.1 / 100.4, a
copy 9.8 / 12.9 / 24.7); M=4096 28.9 / 54.9 / 140.9 (35.4 / 67.3 / 297.4; 45.1 / 84.0 / 382.8; 22.8 / 33.7 / 80.8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned, cdiv, int_spec, next_pow2

#: Columns a program gathers at a time (4 warps: 8 bf16 a thread).
BLOCK_K = 1024


@triton.jit(do_not_specialize=["M", "KP", "stride_x", "stride_o"])
def _gather_kernel(x_ptr, order_ptr, out_ptr, M, KP, stride_x, stride_o, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    # Program c + p * (column blocks): column block c of rows p*ROWS ..; the column blocks of the same rows launch
    # next to each other, so their scattered reads of those rows come back from L2 (launched rows-first: 633 µs at
    # K=13824, M=4096, against 297). A 1-D grid: CUDA caps the other axes at 65535, which 4-row blocks pass from
    # M = 262,141.
    blocks = tl.cdiv(KP, BLOCK)
    pid = tl.program_id(0)
    cols = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < KP
    src = tl.load(order_ptr + cols, mask=cmask, other=0)
    rows = (pid // blocks).to(tl.int64) * ROWS + tl.zeros([BLOCK], tl.int64)  # (a vector: the interpreter's masks)
    for r in tl.static_range(ROWS):
        row = rows + r
        mask = cmask & (row < M)
        v = tl.load(x_ptr + row * stride_x + src, mask=mask)
        tl.store(out_ptr + row * stride_o + cols, v, mask=mask)


@triton.jit(do_not_specialize=["M", "K", "KP", "stride_x", "stride_o"])
def _gather_row_kernel(x_ptr, order_ptr, out_ptr, M, K, KP, stride_x, stride_o, KPOW: tl.constexpr,
                       BLOCK: tl.constexpr):
    # One row a program: the whole row loaded once (coalesced) and gathered on chip (``tl.gather``: through shared
    # memory), so the scattered reads never reach L2; the output written BLOCK columns at a time.
    row = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, KPOW)
    src = tl.load(x_ptr + row * stride_x + ks, mask=ks < K, other=0)
    for c in range(0, KP, BLOCK):
        cols = c + tl.arange(0, BLOCK)
        cmask = cols < KP
        idx = tl.load(order_ptr + cols, mask=cmask, other=0).to(tl.int32)
        tl.store(out_ptr + row * stride_o + cols, tl.gather(src, idx, 0), mask=cmask)


_LAUNCH = LaunchCache(_gather_kernel)

#: Rows a program gathers from M=64 (``order`` read once for them); one below (more programs for few rows).
ROWS = 4


_ROW_LAUNCH = LaunchCache(_gather_row_kernel)

#: The row kernel's reach: a row whose power of two of elements fits this many bytes on chip (the gather's shared
#: memory: bf16 rows to 32768 inputs, float32 to 16384; every CUDA GPU Triton runs on has that much a block), from
#: this many rows (below, the column kernel spreads a few rows over more programs: at M <= 16 it took 6.2-7.0 µs against
#: the row kernel's 6.0-10.0, behind only at K=3072; at M=64 the row kernel led at K=3072 / 5120 and tied at 13824).
ROW_MAX_BYTES = 64 * 1024
ROW_MIN_M = 64


def _row_kpow(x: torch.Tensor) -> int | None:
    """The row kernel's on-chip row length for ``x`` (its rows' power of two), or None where that passes
    :data:`ROW_MAX_BYTES`."""
    kpow = max(next_pow2(x.shape[1]), 16)  # (not triton.next_power_of_2: ~2 µs of host time a call)
    return kpow if kpow * x.element_size() <= ROW_MAX_BYTES else None


def row_kernel_takes(x: torch.Tensor) -> bool:
    """Whether :func:`gather_rows` holds ``x``'s rows on chip (:data:`ROW_MAX_BYTES`)."""
    return _row_kpow(x) is not None


def gather_rows(x: torch.Tensor, order: torch.Tensor, block: int = 4096, num_warps: int = 16) -> torch.Tensor:
    """:func:`gather_columns` by the row kernel (:func:`row_kernel_takes` must hold): one program a row, ``block``
    output columns a step, ``num_warps`` warps (4096 and 16: of five tiles, the fastest or within 2% of it at 23
    of the 27 points measured at M >= 64 in two runs, and 2-11% behind 8 warps at the other four — K=3072 M=128 the
    most; H100)."""
    kpow = _row_kpow(x)
    if kpow is None:
        raise ValueError(f"gather_rows: a row's power of two must fit {ROW_MAX_BYTES} bytes on chip; found rows of "
                         f"{x.shape[1]} {x.dtype} ({next_pow2(x.shape[1]) * x.element_size()} bytes); use "
                         "gather_columns")
    return _gather_rows(x, order, kpow, block, num_warps)


def _gather_rows(x: torch.Tensor, order: torch.Tensor, kpow: int, block: int = 4096,
                 num_warps: int = 16) -> torch.Tensor:
    m, kp = x.shape[0], order.shape[0]
    out = torch.empty((m, kp), dtype=x.dtype, device=x.device)
    if m == 0 or kp == 0:
        return out
    block = min(block, max(next_pow2(kp), 16))
    sx = x.stride(0)
    key = (x.dtype, order.dtype, kpow, block, num_warps, x.device.index, aligned(x, order, out),
           int_spec(m, x.shape[1], kp, sx, kp))
    _ROW_LAUNCH.launch(key, (m,), (x, order, out, m, x.shape[1], kp, sx, kp), {"KPOW": kpow, "BLOCK": block},
                       {"num_warps": num_warps})
    return out


def gather_columns(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` (unit stride along K) and int64 (or int32) ``order [K']`` on its device → ``x[:, order]``
    ``[M, K']``: the row kernel from :data:`ROW_MIN_M` rows where it holds a row, else the column kernel."""
    if x.shape[0] >= ROW_MIN_M and (kpow := _row_kpow(x)) is not None:
        return _gather_rows(x, order, kpow)
    return gather_by_columns(x, order)


def gather_by_columns(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """:func:`gather_columns` by the column-block kernel (any K)."""
    m, kp = x.shape[0], order.shape[0]
    out = torch.empty((m, kp), dtype=x.dtype, device=x.device)
    if m == 0 or kp == 0:
        return out
    rows = ROWS if m >= 64 else 1
    sx = x.stride(0)
    key = (x.dtype, order.dtype, rows, x.device.index, aligned(x, order, out), int_spec(m, kp, sx, kp))
    _LAUNCH.launch(key, (cdiv(kp, BLOCK_K) * cdiv(m, rows),), (x, order, out, m, kp, sx, kp),
                   {"BLOCK": BLOCK_K, "ROWS": rows}, {"num_warps": 4})
    return out
