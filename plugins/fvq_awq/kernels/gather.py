"""Gather activation columns into an act-order layer's kernel input order (``fvq_awq.act_order``): ``out[m, j] =
x[m, order[j]]``.

torch's ``index_select`` / indexing / ``gather`` along the last dim run at a quarter of a copy's speed on the H100 at
large M (K=13824, M=1024: 100 µs against a 25 µs copy). Here the writes are contiguous and the scattered reads of a
row come back from L2 (see the kernel). H100, graph replay (``benchmarks/awq_act_order.py``,
``results/awq-act-order_*_2026-12-06_gather-variants.json``): M=1-16 6.1-7.1 µs against torch's 8.4-11.4 (a copy:
5.0-6.0); M=1024 13.8 / 22.9 / 78.7 µs at K=3072 / 5120 / 13824 against 17.3 / 26.8 / 100.2; M=4096 35.0 / 67.2 /
299.8 against 45.0 / 83.7 / 383.5. A program looping over a whole row (reads from L1) tied at K <= 5120 and lost at
K=13824 (467 µs at M=4096): four programs' rows do not fit an SM's L1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned, cdiv, int_spec

#: Columns a program gathers at a time (4 warps: 8 bf16 a thread).
BLOCK_K = 1024


@triton.jit(do_not_specialize=["M", "KP", "stride_x", "stride_o"])
def _gather_kernel(x_ptr, order_ptr, out_ptr, M, KP, stride_x, stride_o, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    # Program c + p * (column blocks): column block c of rows p*ROWS ..; the column blocks of the same rows launch
    # next to each other, so their scattered reads of those rows come back from L2. (A 1-D grid: CUDA caps the other
    # axes at 65535, which 4-row blocks pass from M = 262,141.)
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


_LAUNCH = LaunchCache(_gather_kernel)

#: Rows a program gathers from M=64 (``order`` read once for them); one below (more programs for few rows).
ROWS = 4


def gather_columns(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` (unit stride along K) and int64 ``order [K']`` on its device → ``x[:, order]`` ``[M, K']``."""
    m, kp = x.shape[0], order.shape[0]
    out = torch.empty((m, kp), dtype=x.dtype, device=x.device)
    if m == 0 or kp == 0:
        return out
    rows = ROWS if m >= 64 else 1
    sx = x.stride(0)
    key = (x.dtype, rows, x.device.index, aligned(x, order, out), int_spec(m, kp, sx, kp))
    _LAUNCH.launch(key, (cdiv(kp, BLOCK_K) * cdiv(m, rows),), (x, order, out, m, kp, sx, kp),
                   {"BLOCK": BLOCK_K, "ROWS": rows}, {"num_warps": 4})
    return out
