"""W8A16 small-M fp8 linear: one Triton kernel reads fp8 weights and bf16/fp16 activations.

``out[m, n] = (sum_k x[m, k] * float(w[n, k])) * scale[n] (+ bias[n])``: the fp8 weight tile is
widened to the activation dtype in registers (exact: every e4m3 value is a bf16 and an fp16
value), multiplied on the tensor cores with float32 accumulation, and the per-channel scale
and bias are applied in the epilogue. At small M the linear is bound by reading the weight,
so one launch that reads half the bytes of bf16 is what wins; the W8A8 path needs two
launches (activation quantization, ``_scaled_mm``) whose host time exceeds the GPU time.
Activations are *not* quantized, so this path is more accurate than W8A8 (vLLM runs fp8
checkpoints the same way on GPUs without fp8 tensor cores, via Marlin).

Imported lazily (CUDA, or tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned


@triton.jit(do_not_specialize=["M"])
def _w8a16_kernel(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, M, N, K,
                  HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VIA_F32: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    # Wrap columns past N onto valid rows of w, so weight loads need no N mask (stores are masked).
    w_rows = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    w_ptrs = w_ptr + w_rows.to(tl.int64)[None, :] * K + offs_k[:, None]  # [BLOCK_K, BLOCK_N] view of [N, K]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if VIA_F32:
            # Triton's interpreter mishandles bf16 operands here; fp32 products of the same values are exact
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b.to(a.dtype), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    n_mask = offs_n < N
    out = acc * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    o_ptrs = o_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_LAUNCH = LaunchCache(_w8a16_kernel, ["x_ptr", "w_ptr", "s_ptr", "b_ptr", "o_ptr", "M", "N", "K",
                                      "HAS_BIAS", "EVEN_K", "BLOCK_M", "BLOCK_N", "BLOCK_K", "VIA_F32"])


def _config(m: int, interpreted: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for ``m`` rows.

    Weight-read bound: narrow N tiles give >= 160 programs on the DiT shapes (132 SMs) and
    long K steps keep 8-16 KB of weight in flight per stage.
    """
    if interpreted:
        return 16, 32, 32, 4, 1
    if m <= 16:
        return 16, 32, 256, 4, 4
    if m <= 32:
        return 32, 32, 256, 4, 4
    return 64, 64, 128, 4, 4


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """``x [M, K] @ (weight * scale_row).T + bias`` in ``x.dtype``.

    Which M take it: ``gemm.W8A16_MAX_M``. fp32 ``x`` stays on W8A8 (a tf32 dot would be less exact).

    :param x: bf16/fp16 ``[M, K]``, contiguous. :param weight: float8_e4m3fn ``[N, K]`` contiguous.
    :param scale_row: float32 ``[1, N]`` (or ``[N]``) per output channel. :param bias: ``[N]`` or None.
    """
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    bm, bn, bk, warps, stages = _config(m, interpreted)
    grid = (triton.cdiv(n, bn), triton.cdiv(m, bm))
    has_bias = bias is not None
    even_k = k % bk == 0
    bias_arg = bias if has_bias else scale_row  # never read when HAS_BIAS is False
    key = (x.dtype, bias_arg.dtype, has_bias, even_k, bm, bn, bk, warps, stages, x.device.index,
           aligned(x, weight, scale_row, bias_arg), n % 16 == 0, k % 16 == 0)
    _LAUNCH.launch(key, grid, (x, weight, scale_row, bias_arg, out, m, n, k),
                   {"HAS_BIAS": has_bias, "EVEN_K": even_k, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                    "VIA_F32": interpreted},
                   {"num_warps": warps, "num_stages": stages})
    return out
