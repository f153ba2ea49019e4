"""int8 x int8 -> int32 GEMM (``tl.dot``) with the dequantization fused into its epilogue.

``out[m, n] = acc[m, n] * x_scale[m] * w_scale[n] (+ bias[n])`` cast to the output
dtype, where ``acc`` is the exact int32 dot product and both scales are
``absmax / 127``. The int32 result never leaves registers, unlike bitsandbytes'
``int8_linear_matmul`` + ``int8_mm_dequant`` which write and re-read it.

The weight is passed as ``b`` = ``weight.t()`` (``[K, N]`` logically) with its
strides, so it can stay in the bitsandbytes ``[N, K]`` row-major layout: that is
K-major, the operand layout Hopper's int8 wgmma reads from shared memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.triton_launch import LaunchCache, aligned, int_spec
from fvq_int8.kernels.configs import CONFIGS, INTERPRET_CONFIG, m_bucket, prune
from fvq_int8.kernels.quant import interpreting


@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K, M_BUCKET,
                      stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                      HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row-tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrap out-of-range rows/cols onto valid ones so the main loop needs no M/N masks.
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn.to(tl.int64)[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue: row scale x column scale (+ bias), in float32, then the output dtype.
    m_mask = offs_m < M
    n_mask = offs_n < N
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
_tuned = triton.autotune(configs=CONFIGS, key=["M_BUCKET", "N", "K", "stride_bn"],
                         prune_configs_by={"early_config_prune": prune})(_even_k(_int8_gemm_kernel))
_LAUNCH = LaunchCache(_int8_gemm_kernel, ["a_ptr", "b_ptr", "c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "M", "N", "K",
                                          "M_BUCKET", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm",
                                          "stride_cn", "HAS_BIAS", "EVEN_K", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"])
#: (M bucket, N, K, weight layout, out dtype, bias, device) -> the autotuner's pick.
_picked: dict[tuple, tuple[dict, int, int]] = {}


def int8_gemm_dequant(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``(xq @ weight.T) * x_scale[:, None] * w_scale[None, :] + bias`` in ``out_dtype``.

    :param xq: int8 ``[M, K]`` activations. :param x_scale: float32 ``[M]``.
    :param weight: int8 ``[N, K]`` (any strides; see the module doc).
    :param w_scale: float32 ``[N]``. :param bias: ``[N]`` or None.
    """
    m, k = xq.shape
    n, kw = weight.shape
    if kw != k or xq.dtype != torch.int8 or weight.dtype != torch.int8:
        raise ValueError(
            f"int8_gemm_dequant: expected int8 xq [M, K] and int8 weight [N, K] with equal K; found "
            f"xq {xq.dtype} {tuple(xq.shape)}, weight {weight.dtype} {tuple(weight.shape)}"
        )
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return out
    # b = weight.t() ([K, N]) is passed as the weight with its strides swapped: no view to build per call.
    bias_arg = bias if bias is not None else w_scale  # never read when HAS_BIAS is False
    args = (xq, weight, out, x_scale, w_scale, bias_arg, m, n, k, m_bucket(m),
            xq.stride(0), xq.stride(1), weight.stride(1), weight.stride(0), out.stride(0), out.stride(1))
    if interpreting():
        cfg = dict(INTERPRET_CONFIG)
        warps = cfg.pop("num_warps")
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _int8_gemm_kernel[grid](*args, HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0,
                                num_warps=warps, **cfg)
        return out
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    key = (args[9], n, k, weight.stride(0), out_dtype, bias is not None, xq.device.index)
    cfg = _picked.get(key)
    if cfg is None:
        # First call for this shape: let the autotuner pick, then launch its pick directly from now on
        # (skipping the autotuner's and heuristics' per-call Python work: tens of µs at small M).
        _tuned[grid](*args, HAS_BIAS=bias is not None)
        best = getattr(_tuned, "best_config", None)
        if best is not None:
            _picked[key] = (best.kwargs, best.num_warps, best.num_stages)
        return out
    meta, warps, stages = cfg
    even_k = k % meta["BLOCK_K"] == 0
    # The compiled kernel is reused for calls the JIT would specialize identically (ints ==1 / %16, alignment).
    launch_key = key + (even_k, aligned(xq, x_scale, bias_arg), int_spec(*args[6:]))
    _LAUNCH.launch(launch_key, grid(meta), args,
                   {"HAS_BIAS": bias is not None, "EVEN_K": even_k, "BLOCK_M": meta["BLOCK_M"],
                    "BLOCK_N": meta["BLOCK_N"], "BLOCK_K": meta["BLOCK_K"], "GROUP_M": meta["GROUP_M"]},
                   {"num_warps": warps, "num_stages": stages})
    return out
