"""The CUDA C++ small-M kernel (``awq_small_m.cu``): AWQ int4 weights x 16-bit activations at M <= 16.

Why CUDA C++ here when everything else is Triton: at M <= 16 the Triton ``gemm_t`` stages the weight words through
shared memory and runs 128 registers a thread, so few warps hide a long per-warp latency chain (Nsight Compute,
``benchmarks/awq_notes.md``, sixth session). This kernel loads each lane's tensor-core fragments straight from global
memory (16-byte loads of the words as stored: the k order inside an MMA is chosen to match them, so nothing is
re-laid out), de-quantizes with one shift, one ``lop3`` and one packed FMA per two weights (groups of 64 / 32: one
``prmt`` and one multiply in place of the shift), and keeps ``u`` blocks of words in flight per warp. It reads the
same kernel layout as the Triton kernels (``fvq_awq.layout``).

Compiled at run time by NVRTC (``fastvideo_quant.kernels.cuda_rtc``) on first use per (dtype, tile) and device.
:func:`supports` says which calls it takes: 16-bit activations, M <= 16, in_features a multiple of 128 with groups of
32, 64 or a multiple of 128 (or one group), out_features a multiple of 16, ``x`` rows 8-byte aligned. With groups of
32 / 64 a 128-input block holds 4 / 2 groups: each MMA then takes its k-slots from one group (``FVQ_GPB`` in the
source) and the block's scales and zero points are read as one vector a row.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from fastvideo_quant.kernels.cuda_rtc import SMALL_M_COMMON, Launcher, compile_kernel, source_with, supports_pdl

SOURCE = Path(__file__).with_name("awq_small_m.cu")
_SIGNATURE = "pppppppp" + "i" * 7  # x, qweight_k, scales_k, zeros_k, bias, out, ws, locks; M K N sx G bpg has_bias


@functools.cache
def _source() -> str:
    return source_with(SMALL_M_COMMON, SOURCE)  # (the helpers it shares with the core's W8A16 kernel first)


def supports(x: torch.Tensor, layout, qweight_k: torch.Tensor, zeros_k: torch.Tensor,
             scales_k: torch.Tensor) -> bool:
    """Whether :func:`awq_small_m_cuda` takes this call (see the module docstring; the weight tensors must be the
    contiguous kernel layout, the words 16-byte aligned)."""
    M = x.shape[0]
    return (qweight_k.is_contiguous() and zeros_k.is_contiguous() and scales_k.is_contiguous()
            and qweight_k.data_ptr() % 16 == 0 and x.dtype in (torch.float16, torch.bfloat16) and 0 < M <= 16 and x.dim() == 2
            and layout.in_features % 128 == 0 and groups_per_block(layout.group) > 0 and layout.out_features % 16 == 0
            and (layout.group >= 128 or (scales_k.data_ptr() % 8 == 0 and zeros_k.data_ptr() % 4 == 0))
            and x.stride(1) == 1 and x.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0)


def groups_per_block(group: int) -> int:
    """The quantization groups one 128-input block of the kernel holds: 1 for groups of 128 or a multiple (one
    scale per block), 2 / 4 for groups of 64 / 32; 0 where the kernel does not take the group size."""
    return 1 if group % 128 == 0 else {64: 2, 32: 4}.get(group, 0)


@functools.lru_cache(maxsize=64)
def _launcher(index: int, bf16: bool, mt: int, rowt: int, u: int, bpg1: bool, kw: int = 1, ft: int = 1, cs: int = 1,
              occ: int = 1, pdl: bool = False, gpb: int = 1) -> Launcher:
    defines = {"FVQ_BF16": int(bf16), "FVQ_MT": mt, "FVQ_ROWT": rowt, "FVQ_U": u, "FVQ_BPG1": int(bpg1), "FVQ_KW": kw,
               "FVQ_FT": ft, "FVQ_CS": cs, "FVQ_OCC": occ, "FVQ_PDL": int(pdl), "FVQ_GPB": gpb}
    return compile_kernel(_source(), "awq_small_m", index, defines).launcher(_SIGNATURE, (32 * rowt * kw, 1, 1), pdl)


def awq_small_m_cuda(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor,
                     layout, bias: torch.Tensor | None = None, rowt: int = 4, u: int = 2,
                     split_k: int = 1, kw: int = 1, ft: int = 1, cluster: bool = False,
                     occ: int = 1, pdl: bool | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` for M <= 16 (:func:`supports` must hold): ``rowt`` warp columns a block, each
    ``ft`` tiles of 16 output features wide (one warp loads x once for all its tiles) and ``kw`` warps deep (each a
    part of the block's K range, summed in shared memory), ``u`` 128-input blocks loaded ahead per warp, K split over
    ``split_k`` blocks (reduced in the same launch, deterministically): through global memory, or with ``cluster``
    (compute capability 9.0+, ``split_k`` 2..8) as one thread-block cluster whose parts add their sums in the first
    block's shared memory. ``occ``: blocks per multiprocessor the registers are capped for. ``pdl``: launch with
    programmatic dependent launch — the blocks may start as the previous kernel's blocks exit and wait (before their
    first memory access) for it to complete (None or True: where :func:`~fastvideo_quant.kernels.cuda_rtc.supports_pdl`
    says the device runs it). Checked; the dispatcher, which has checked :func:`supports` itself, calls :func:`run`."""
    if not supports(x, layout, qweight_k, zeros_k, scales_k):
        raise ValueError(f"awq_small_m_cuda: this call is not supported (x {tuple(x.shape)} {x.dtype} stride "
                         f"{x.stride()}, layer {layout}); see fvq_awq.kernels.small_m_cuda.supports")
    nblk = layout.in_features // 128
    if not 1 <= split_k <= nblk:
        raise ValueError(f"awq_small_m_cuda: split_k must be in 1..{nblk} (128-input blocks of "
                         f"K={layout.in_features}), found {split_k}")
    if kw not in (1, 2, 4, 8) or ft not in (1, 2, 4) or rowt < 1 or rowt * kw > 16:
        raise ValueError(f"awq_small_m_cuda: kw must be 1, 2, 4 or 8 and ft 1, 2 or 4, with rowt * kw <= 16 warps a "
                         f"block, found rowt={rowt} kw={kw} ft={ft}")
    # (16 warps bound the in-block reduction's static shared memory: kw/2 * rowt <= 8 slots of ft*mt*512 bytes, at
    # most 32 KiB; a cluster adds split_k - 1 slots a column, and static shared memory stops at 48 KiB)
    if cluster:
        cap = torch.cuda.get_device_capability(x.device)
        if cap < (9, 0) or not 2 <= split_k <= 8:
            raise ValueError(f"awq_small_m_cuda: cluster needs compute capability 9.0+ (found {cap[0]}.{cap[1]}) and "
                             f"split_k 2..8 (found {split_k})")
        slots = (kw // 2 + split_k - 1) * rowt * ft * 512 * (2 if x.shape[0] > 8 else 1)
        if slots > 48 * 1024:
            raise ValueError(f"awq_small_m_cuda: a cluster of {split_k} with rowt={rowt} kw={kw} ft={ft} needs "
                             f"{slots} bytes of shared memory for its sums, over 48 KiB; use fewer parts or narrower "
                             f"blocks")
    if occ not in (1, 2, 3, 4):
        raise ValueError(f"awq_small_m_cuda: occ must be 1..4 blocks a multiprocessor, found {occ}")
    return run(x, qweight_k, zeros_k, scales_k, layout, bias, rowt, u, split_k, kw, ft, cluster, occ,
               pdl is not False and supports_pdl(x.device.index))


def run(x: torch.Tensor, qweight_k: torch.Tensor, zeros_k: torch.Tensor, scales_k: torch.Tensor, layout,
        bias: torch.Tensor | None, rowt: int, u: int, split_k: int, kw: int = 1, ft: int = 1, cluster: bool = False,
        occ: int = 1, pdl: bool = False) -> torch.Tensor:
    """:func:`awq_small_m_cuda` without its checks (the caller has checked :func:`supports` and ``split_k``, and
    ``pdl`` against :func:`~fastvideo_quant.kernels.cuda_rtc.supports_pdl`)."""
    from fastvideo_quant.kernels.split_k import SCRATCH

    M, K, N = x.shape[0], layout.in_features, layout.out_features
    index = x.device.index
    gpb = groups_per_block(layout.group)
    launch = _launcher(index, x.dtype == torch.bfloat16, 1 if M <= 8 else 2, rowt, u, layout.group == 128, kw, ft,
                       split_k if cluster else 1, occ, pdl, gpb)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if bias is not None:  # the kernel reads bias[n] in x's dtype
        bias = bias.to(x.dtype).contiguous()
    grid = (-(-N // (16 * ft * rowt)), split_k, 1)
    if cluster:  # no global partials
        ws = locks = out
    else:
        ws, locks = SCRATCH.for_grid(out, (grid[0], 1, split_k), rowt * ft * 16 * 16)
    launch(grid, torch._C._cuda_getCurrentRawStream(index), x.data_ptr(), qweight_k.data_ptr(), scales_k.data_ptr(),
           zeros_k.data_ptr(), (bias if bias is not None else out).data_ptr(), out.data_ptr(), ws.data_ptr(),
           locks.data_ptr(), M, K, N, x.stride(0), K // layout.group, max(1, layout.group // 128),
           int(bias is not None))
    return out
