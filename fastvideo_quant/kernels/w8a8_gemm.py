"""W8A8 GEMM (``tl.dot`` on 8-bit operands) with the dequantization fused into its epilogue.

``out[m, n] = acc[m, n] * x_scale[m] * w_scale[n] (+ bias[n])`` in float32, cast to the output dtype, where
``acc`` is the dot product of the 8-bit operands: int8 x int8 summed exactly in int32, or float8_e4m3fn x
float8_e4m3fn summed in float32 (on Hopper Triton's default for fp8 dots is the fast accumulation that
``torch._scaled_mm(use_fast_accum=True)`` also uses). The accumulator never leaves registers, unlike
bitsandbytes' ``int8_linear_matmul`` + ``int8_mm_dequant`` which write and re-read it.

Shared by the int8 plugin (every M above its small-M kernel) and the fp8 plugin (dynamic per-token activations
at mid M where its measured routes send it, with the launch configs they name: ``fvq_fp8.kernels.gemm.cuda_route``;
it costs less host time than row-wise ``torch._scaled_mm`` and leads it on GPU time at most of those M).

The weight is passed as ``b`` = ``weight.t()`` (``[K, N]`` logically) with its strides, so it can stay in the
``[N, K]`` row-major layout: that is K-major, the operand layout Hopper's 8-bit wgmma reads from shared memory.

Autotuned per (M bucket, N, K, weight layout, dtypes) over ``w8a8_configs.CONFIGS``, unless the caller passes a
``pick`` (a measured table's config: deterministic, and no first-call tuning); after the first call the pick is
launched directly (``triton_launch.LaunchCache``). Imported lazily (CUDA, or tests under
``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from fastvideo_quant.kernels import W8A8_OUT_DTYPES
from fastvideo_quant.kernels.cuda_rtc import supports_pdl
from fastvideo_quant.kernels.triton_launch import (
    INTERPRETED,
    LaunchCache,
    aligned,
    cdiv,
    check_current_device,
    int_spec,
    off_current_device,
)
from fastvideo_quant.kernels.w8a8_configs import CONFIGS, INTERPRET_CONFIG, m_bucket, prune

#: Operand dtypes (activations and weight alike) and the accumulator each is summed in.
OPERAND_DTYPES = (torch.int8, torch.float8_e4m3fn)
OUT_DTYPES = W8A8_OUT_DTYPES


@triton.jit(do_not_specialize=["M"])
def _w8a8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K, M_BUCKET,
                      stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                      HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, IS_INT: tl.constexpr, FP32_DOT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      GDC: tl.constexpr = False, PF: tl.constexpr = 0):
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

    # Launched with programmatic dependent launch (GDC, GPU only; see launch_spec): this program may be running
    # while the quantization kernel before it still writes a and its scales. The weight does not depend on that
    # kernel: its first PF K steps are asked into L2 first (a K-major weight, stride_bk == 1: BLOCK_K / 128 lines a
    # column and step), then the wait, then everything as without PDL.
    if PF > 0:
        lines = tl.arange(0, BLOCK_K // 128) * 128
        cols = b_ptr + offs_bn.to(tl.int64)[None, :] * stride_bn
        for j in tl.static_range(PF):
            _prefetch_l2(cols + tl.minimum(j * BLOCK_K + lines, K - 1)[:, None])
    if GDC:
        gdc_wait()
    if IS_INT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if IS_INT:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif FP32_DOT:
            # Triton's interpreter has no fp8 dot; products of e4m3 values are exact in float32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
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


@triton.jit
def _prefetch_l2(ptrs):
    """Bring the L2 lines holding ``ptrs`` into L2 (``prefetch.global.L2``: no register, nothing to wait on)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
# The autotuner also keys on every tensor argument's dtype (operands, output, bias): int8 and fp8 tune apart.
_tuned = triton.autotune(configs=CONFIGS, key=["M_BUCKET", "N", "K", "stride_bn"],
                         prune_configs_by={"early_config_prune": prune})(_even_k(_w8a8_gemm_kernel))
_LAUNCH = LaunchCache(_w8a8_gemm_kernel)


class Pick(NamedTuple):
    """One launch configuration (hashable: it is part of the launch key)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, cfg: triton.Config) -> Pick:
        kw = cfg.kwargs
        return cls(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["GROUP_M"], cfg.num_warps, cfg.num_stages)


_INTERPRET_PICK = Pick.of(INTERPRET_CONFIG)


def as_pick(values) -> Pick:
    """A :class:`Pick` from six positive ints (a table's JSON list or a tuple), or ValueError naming what was found."""
    if isinstance(values, Pick):
        return values
    values = tuple(values)
    if len(values) != 6 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError("w8a8_gemm: pick must be six positive ints (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, "
                         f"num_stages); found {values!r}")
    return Pick(*values)


#: (M bucket, N, K, weight strides, operand / out / bias dtypes, bias, device) -> the autotuner's pick.
_picked: dict[tuple, Pick] = {}


def w8a8_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype, pick: Pick | None = None,
              pdl: bool = False) -> torch.Tensor:
    """``(xq @ weight.T) * x_scale[:, None] * w_scale[None, :] + bias`` in ``out_dtype``.

    :param xq: int8 or float8_e4m3fn ``[M, K]`` activations (any strides).
    :param x_scale: float32, ``M`` elements (``[M]`` or ``[M, 1]``), contiguous: one scale per row of ``xq``.
    :param weight: ``[N, K]``, the same dtype as ``xq`` (any strides; see the module doc).
    :param w_scale: float32, ``N`` elements (``[N]`` or ``[1, N]``), contiguous: one scale per output channel.
    :param bias: ``[N]`` (any float dtype, contiguous) or None.
    :param out_dtype: bfloat16, float16 or float32.
    :param pick: the launch configuration (a caller's measured table: ``fvq_fp8``'s routes), a :class:`Pick` or six
        positive ints; None: the autotuner's pick for the shape's M bucket (tuned on the first call), or under the
        CPU interpreter its small tiles.
    :param pdl: launch with programmatic dependent launch, for a GEMM right after the quantization kernel that made
        ``xq`` (launched with ``launch_deps``): it may start early, prefetch its weight and wait for ``xq`` (see
        :func:`launch_spec`). Only with a ``pick`` (a first autotuned call launches without); ignored where the
        device cannot (compute capability < 9.0).
    """
    _check(xq, x_scale, weight, w_scale, bias, out_dtype)
    if pick is not None:
        pick = as_pick(pick)
    return w8a8_gemm_unchecked(xq, x_scale, weight, w_scale, bias, out_dtype, pick, pdl=pdl)


def w8a8_gemm_unchecked(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_dtype: torch.dtype, pick: Pick | None = None,
                        out: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """:func:`w8a8_gemm` without its argument checks, for the plugins' hot path.

    The caller guarantees :func:`w8a8_gemm`'s contract: ``xq``/``x_scale`` come from the per-token kernel and the
    weight, its scales and bias were checked when the layer was loaded; ``out``, if given, is ``[M, N]`` of
    ``out_dtype`` with unit column stride (a row slice of a larger output) and is written and returned. With the
    checks on the hot path, eager
    int8 at M=128 (5120x13824) read 90.8 µs per call against 44.8 µs of GPU time on the H100 machine's host
    (host-bound); without them 45.5 µs. Kept: the device checks, input on the current device and on the
    weight's (a launch on another GPU's pointers would fault, not raise); every dtype is in the launch key.
    """
    if xq.is_cuda and (xq.device.index != torch.cuda.current_device() or weight.device != xq.device):
        if weight.device != xq.device:
            raise ValueError(f"w8a8_gemm: xq is on {xq.device} but the weight on {weight.device}; move the "
                             "input to the layer's device")
        check_current_device(xq, "w8a8_gemm", "xq")
    m, n = xq.shape[0], weight.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return out
    bias_arg = bias if bias is not None else w_scale  # never read when HAS_BIAS is False
    spec = launch_spec(xq, x_scale, weight, w_scale, bias, out, pick, pdl)
    args = (xq, weight, out, x_scale, w_scale, bias_arg)
    if spec is None:
        # First call for this key: let the autotuner pick (launch_spec launches its pick directly from now on,
        # skipping the autotuner's and heuristics' per-call Python work: tens of µs at small M).
        grid = lambda meta: (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]),)
        _tuned[grid](*args, *_ints(xq, weight, out), HAS_BIAS=bias is not None, IS_INT=xq.dtype == torch.int8,
                     FP32_DOT=False)
        best = getattr(_tuned, "best_config", None)
        if best is not None:
            _picked[_tune_key(xq, x_scale, weight, w_scale, bias_arg, bias is not None, out.dtype)] = Pick.of(best)
        return out
    key, grid, ints, meta, opts = spec
    _LAUNCH.launch(key, grid, args + ints, meta, opts)
    return out


def _ints(xq: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> tuple[int, ...]:
    """The kernel's int arguments; ``b = weight.t()`` ([K, N]) is the weight with its strides swapped (no view)."""
    (m, k), n = xq.shape, weight.shape[0]
    return (m, n, k, m_bucket(m), xq.stride(0), xq.stride(1), weight.stride(1), weight.stride(0), out.stride(0),
            out.stride(1))


def _tune_key(xq, x_scale, weight, w_scale, bias_arg, has_bias, out_dtype) -> tuple:
    # every tensor's dtype: ``module.to(...)`` can change the weight's or a scale's after load, and the plugins call
    # this unchecked, so a kernel compiled for other dtypes must not be found
    return (m_bucket(xq.shape[0]), weight.shape[0], xq.shape[1], weight.stride(0), weight.stride(1), xq.dtype,
            weight.dtype, x_scale.dtype, w_scale.dtype, out_dtype, bias_arg.dtype, has_bias, xq.device.index)


#: Weight K steps a GEMM launched with PDL prefetches into L2 before it waits, by its tile's BLOCK_N (H200,
#: ``benchmarks/pdl_prefetch_probe.py``, ``results/pdl-prefetch-probe_*``: with 64-column tiles 4 steps led waiting
#: alone at 5120x5120 and 13824x5120, M=17-64, one call at a time and in the layer chain; with 128-column tiles
#: (3072x12288) waiting alone led in the chain).
PDL_PREFETCH_STEPS = {64: 4}


def launch_spec(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor, pick: Pick | None = None,
                pdl: bool = False) -> tuple[tuple, tuple, tuple, dict, dict] | None:
    """``(launch key, grid, int args, constexprs, launch options)`` of the direct launch for these tensors (the
    kernel's arguments are ``(xq, weight, out, x_scale, w_scale, bias or w_scale, *ints)``) with ``pick``, or without
    one the autotuner's — None before the autotuner has picked a config for their shape (the first call does).

    ``pdl`` (taken on CUDA devices of compute capability 9.0+ with a K-major weight, ``weight.stride(1) == 1``; else
    ignored): launched with programmatic dependent launch — the kernel may start while the quantization kernel
    before it runs (that one launched with ``launch_deps``), asks for the first :data:`PDL_PREFETCH_STEPS` K steps of
    its weight slice, then ``gdc_wait``s for the activations. The same arithmetic as without it: equal bit for bit."""
    has_bias = bias is not None
    bias_arg = bias if has_bias else w_scale
    interpreted = INTERPRETED
    key = _tune_key(xq, x_scale, weight, w_scale, bias_arg, has_bias, out.dtype)
    if pick is None:
        pick = _INTERPRET_PICK if interpreted else _picked.get(key)
    if pick is None:
        return None
    is_int = xq.dtype == torch.int8
    ints = _ints(xq, weight, out)
    even_k = ints[2] % pick.block_k == 0
    fp32_dot = interpreted and not is_int
    grid = (cdiv(ints[0], pick.block_m) * cdiv(ints[1], pick.block_n),)
    # Everything the JIT specializes on: the key's dtypes, the constexprs, pointer alignment, ints == 1 or % 16
    # (M is not specialized); the compiled kernel is reused for calls it would compile identically.
    launch_key = key + (pick, even_k, fp32_dot, aligned(xq, weight, out, x_scale, w_scale, bias_arg),
                        int_spec(*ints[1:]))
    pdl = pdl and not interpreted and xq.is_cuda and weight.stride(1) == 1 and supports_pdl(xq.device.index)
    pf = PDL_PREFETCH_STEPS.get(pick.block_n, 0) if pdl and pick.block_k % 128 == 0 else 0
    launch_key += (pdl,)  # (pf follows from pdl and the pick)
    meta = {"HAS_BIAS": has_bias, "EVEN_K": even_k, "IS_INT": is_int, "FP32_DOT": fp32_dot, "BLOCK_M": pick.block_m,
            "BLOCK_N": pick.block_n, "BLOCK_K": pick.block_k, "GROUP_M": pick.group_m, "GDC": pdl, "PF": pf}
    opts = {"num_warps": pick.num_warps, "num_stages": pick.num_stages}
    if pdl:
        opts["launch_pdl"] = True
    return launch_key, grid, ints, meta, opts


def _check(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
           bias: torch.Tensor | None, out_dtype: torch.dtype) -> None:
    """ValueError naming what was expected and found, for anything the kernel would misread.

    One combined test on the hot path (host time counts at small M); the messages are built only on failure.
    """
    dev = xq.device
    if (xq.dim() == 2 and weight.dim() == 2 and xq.dtype == weight.dtype and xq.dtype in OPERAND_DTYPES
            and xq.shape[1] == weight.shape[1] and out_dtype in OUT_DTYPES
            and x_scale.dtype == torch.float32 and w_scale.dtype == torch.float32
            and x_scale.is_contiguous() and w_scale.is_contiguous()
            and x_scale.shape in ((xq.shape[0],), (xq.shape[0], 1))
            and w_scale.shape in ((weight.shape[0],), (1, weight.shape[0]))
            and (bias is None or (bias.shape == (weight.shape[0],) and bias.is_contiguous() and bias.device == dev))
            and weight.device == dev and x_scale.device == dev and w_scale.device == dev
            and (not xq.is_cuda or dev.index == torch.cuda.current_device())):
        return
    raise ValueError(_why(xq, x_scale, weight, w_scale, bias, out_dtype))


def _why(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
         bias: torch.Tensor | None, out_dtype: torch.dtype) -> str:
    if xq.dim() != 2 or weight.dim() != 2:
        return (f"w8a8_gemm: expected 2-D xq [M, K] and weight [N, K]; found xq {tuple(xq.shape)}, "
                f"weight {tuple(weight.shape)}")
    (m, k), (n, kw) = xq.shape, weight.shape
    if xq.dtype != weight.dtype or xq.dtype not in OPERAND_DTYPES:
        return f"w8a8_gemm: expected xq and weight both int8 or both float8_e4m3fn; found xq {xq.dtype}, weight {weight.dtype}"
    if kw != k:
        return (f"w8a8_gemm: xq [M, K] and weight [N, K] must have the same K; found xq {tuple(xq.shape)}, "
                f"weight {tuple(weight.shape)}")
    if out_dtype not in OUT_DTYPES:
        return f"w8a8_gemm: out_dtype must be bfloat16, float16 or float32; found {out_dtype}"
    for name, s, shapes in (("x_scale", x_scale, ((m,), (m, 1))), ("w_scale", w_scale, ((n,), (1, n)))):
        if s.dtype != torch.float32 or tuple(s.shape) not in shapes or not s.is_contiguous():
            return (f"w8a8_gemm: expected {name} float32 of shape {' or '.join(map(str, shapes))}, contiguous; "
                    f"found {s.dtype} {tuple(s.shape)} with strides {s.stride()}")
    if bias is not None and (tuple(bias.shape) != (n,) or not bias.is_contiguous()):
        return f"w8a8_gemm: expected bias [{n}] contiguous; found {tuple(bias.shape)} with strides {bias.stride()}"
    tensors = {"xq": xq, "x_scale": x_scale, "weight": weight, "w_scale": w_scale, "bias": bias}
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        return f"w8a8_gemm: all tensors must be on one device; found {devices}"
    return off_current_device(xq, "w8a8_gemm", "xq") or ""  # (the one check left: the caller found one failing)
