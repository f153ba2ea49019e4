"""The CUDA C++ W8A16 wgmma kernel (``w8_wgmma.cu``): float8 e4m3 weights x 16-bit activations on Hopper's warpgroup
tensor cores, for M above the small-M kernels' 16 rows.

``out^T = W x^T`` with the weight as wgmma's register operand: each lane loads its fragments straight from the
``[N, K]`` weight (``w8_small_m.cu``'s loads and k order), converts them in registers, and the warpgroup multiplies
them with the activation tile, which the block writes to shared memory in the same k order (128-byte swizzle).
No activation quantization launch (the W8A8 paths' per-token pass), and W8A16's accuracy. K parts of one output tile
form a thread-block cluster and are summed in the first part's shared memory.

Compiled at run time by NVRTC (:mod:`fastvideo_quant.kernels.cuda_rtc`) for ``sm_90a`` on first use per (dtype, tile)
and device; compute capability 9.0 only (wgmma). :func:`supports` says which calls it takes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from fastvideo_quant.kernels.cuda_rtc import SMALL_M_COMMON, Launcher, compile_kernel, source_with

SOURCE = Path(__file__).with_name("w8_wgmma.cu")
_SIGNATURE = "ppppp" + "i" * 5  # x, weight, scale, bias, out; M K N sx has_bias
MNS = (32, 64, 128)


@functools.cache
def _source() -> str:
    return source_with(SMALL_M_COMMON, SOURCE)


def shared_bytes(mn: int, wg: int, cs: int, s: int) -> int:
    """Dynamic shared memory a block: ``s`` stages of one 128-input block each (``64 wg`` weight rows x 128 bytes and
    ``mn`` activation rows x 256 bytes) or, when larger, the ``cs - 1`` other K parts' float32 sums; plus 1 KB to
    align the stages to 1024 bytes."""
    return max(s * (wg * 64 * 128 + mn * 256), (cs - 1) * mn * wg * 256) + 1024


def supports(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether :func:`w8_wgmma` takes this call: CUDA compute capability 9.0, 16-bit ``x [M, K]`` with rows 16-byte
    aligned; ``weight`` float8 e4m3 ``[N, K]`` contiguous and 16-byte aligned, K a multiple of 128; ``scale`` float32
    with N contiguous entries."""
    if x.dim() != 2 or weight.dim() != 2 or not x.is_cuda:
        return False
    M, K = x.shape
    N = weight.shape[0]
    return (torch.cuda.get_device_capability(x.device) == (9, 0) and x.dtype in (torch.bfloat16, torch.float16)
            and M > 0 and weight.dtype == torch.float8_e4m3fn and weight.is_contiguous() and weight.shape[1] == K
            and K % 128 == 0 and N > 0 and weight.data_ptr() % 16 == 0 and x.stride(1) == 1
            and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0 and scale.dtype == torch.float32
            and scale.numel() == N and scale.is_contiguous())


@functools.lru_cache(maxsize=64)
def _launcher(index: int, bf16: bool, mn: int, wg: int, cs: int, s: int, wait: int) -> Launcher:
    defines = {"FVQ_BF16": int(bf16), "FVQ_MN": mn, "FVQ_WG": wg, "FVQ_CS": cs, "FVQ_S": s, "FVQ_WAIT": wait}
    kernel = compile_kernel(_source(), "w8_wgmma", index, defines, arch_suffix="a")
    return kernel.launcher(_SIGNATURE, (128 * wg + 32, 1, 1), shared_bytes(mn, wg, cs, s))


def w8_wgmma(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
             mn: int = 128, wg: int = 2, cs: int = 1, s: int = 4, wait: int = 1) -> torch.Tensor:
    """``x [M, K] @ (weight * scale[:, None]).T (+ bias)`` in ``x``'s dtype (:func:`supports` must hold): ``wg``
    warpgroups a block (64 features each), ``mn`` activation rows a block (32, 64 or 128; more rows take more
    blocks), ``cs`` K parts a cluster (1-8, at most K / 128), ``s`` weight pipeline stages (2-7: ``s - 1`` 128-input
    weight blocks in flight), ``wait`` 1: a block's multiply overlaps the next block's conversion, 0: not.
    Checked; callers that have checked :func:`supports` themselves call :func:`run`."""
    if not supports(x, weight, scale):
        raise ValueError(f"w8_wgmma: this call is not supported (x {tuple(x.shape)} {x.dtype} stride {x.stride()} on "
                         f"{x.device}, weight {tuple(weight.shape)} {weight.dtype}, scale {tuple(scale.shape)} "
                         f"{scale.dtype}); see fastvideo_quant.kernels.w8_wgmma_cuda.supports")
    if mn not in MNS or wg not in (1, 2) or not 2 <= s <= 7 or wait not in (0, 1) or not 1 <= cs <= min(8, x.shape[1] // 128):
        raise ValueError(f"w8_wgmma: mn must be one of {MNS}, wg 1 or 2, s 2..7, wait 0 or 1 and cs 1..min(8, K / 128) = "
                         f"{min(8, x.shape[1] // 128)}, found mn={mn} wg={wg} cs={cs} s={s} wait={wait}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.device != x.device):
        raise ValueError(f"w8_wgmma: bias must be [{weight.shape[0]}] on {x.device}, found {tuple(bias.shape)} on "
                         f"{bias.device}")
    return run(x, weight, scale, bias, mn, wg, cs, s, wait)


def run(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, mn: int = 128,
        wg: int = 2, cs: int = 1, s: int = 4, wait: int = 1) -> torch.Tensor:
    """:func:`w8_wgmma` without its checks."""
    M, K = x.shape
    N = weight.shape[0]
    index = x.device.index
    launch = _launcher(index, x.dtype == torch.bfloat16, mn, wg, cs, s, wait)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()):
        bias = bias.to(x.dtype).contiguous()
    launch((-(-N // (64 * wg)), cs, -(-M // mn)), torch._C._cuda_getCurrentRawStream(index), x.data_ptr(),
           weight.data_ptr(), scale.data_ptr(), (bias if bias is not None else out).data_ptr(), out.data_ptr(), M, K,
           N, x.stride(0), int(bias is not None))
    return out
