"""Activation quantization and the Triton GEMMs as torch custom ops, so ``torch.compile(fullgraph=True)`` and CUDA
graphs see one opaque op.

On CUDA the ops run the fused Triton kernels (``act_quant_triton``, imported on first use);
on CPU they run the torch reference below, which is also what the Triton kernels are tested
against. Both compute ``scale = max(amax, 1e-12) / 448`` and ``fp8(clamp(x / scale))``; the static quantization
maps a non-finite ``x`` to NaN first (the clamp would make +inf a finite 448).
"""

from __future__ import annotations

import torch

from fastvideo_quant.kernels import fp8_cast_by_reciprocal, fp8_per_token_ref, fp8_scale_of
from fvq_fp8.format import FP8_DTYPE


def per_token_quant_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic quantization of ``x`` ``[M, K]``: (fp8 ``[M, K]``, float32 scales ``[M, 1]``) — the core's
    ``fp8_per_token_ref``."""
    return fp8_per_token_ref(x)


def static_quant_ref(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantization of ``x`` ``[M, K]`` with a given one-element float32 scale.

    Finite values beyond ``448 * scale`` saturate to ±448 (as vLLM's static path does); a non-finite value (±inf,
    NaN) becomes NaN — e4m3fn has no inf, and the clamp would turn inf into a finite 448 — so its output row is
    non-finite, as the dynamic path's is and ``F.linear``'s would be.
    """
    xf = x.float()
    return fp8_cast_by_reciprocal(xf + xf * 0.0, scale.float().reshape(()))  # (x * 0: 0 if x is finite, else NaN)


def per_group_quant_ref(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-``group``-columns quantization (block-scaled weights): (fp8 ``[M, K]``, float32 scales
    ``[M, ceil(K/group)]``), with the per-token reference's arithmetic (IEEE scale, one reciprocal per group)."""
    m, k = x.shape
    groups = -(-k // group)
    # (padded out of place: an in-place write of x into zeros fails under torch.func.vmap, x batched, the zeros not)
    tiles = torch.nn.functional.pad(x.float(), (0, groups * group - k)).view(m, groups, group)
    scale = fp8_scale_of(tiles.abs().amax(dim=2))
    q = fp8_cast_by_reciprocal(tiles, scale[:, :, None]).view(m, groups * group)[:, :k]
    return q, scale


@torch.library.custom_op("fvq_fp8::per_group_quant", mutates_args=())
def per_group_quant(x: torch.Tensor, group: int, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_group_quant_ref` with the scales group-major, ``[ceil(K/group), R]`` (``.t()`` is the M-major
    layout of ``torch._scaled_mm``'s 1x128 block scaling); the Triton kernel on CUDA. ``out_rows`` (R >= M): the
    outputs get that many rows, the first M written (the rest unwritten on CUDA, zeros on CPU)."""
    if x.is_cuda:
        from fvq_fp8.kernels import act_quant_triton

        return act_quant_triton.per_group_quant(x, group, out_rows)
    q, s = per_group_quant_ref(x, group)
    pad = 0 if out_rows is None else out_rows - x.shape[0]
    if pad < 0:
        raise ValueError(f"fvq_fp8::per_group_quant: out_rows must be >= the {x.shape[0]} rows of x, found {out_rows}")
    return (torch.cat([q, q.new_zeros((pad, q.shape[1]))]), torch.cat([s, s.new_zeros((pad, s.shape[1]))]).t().contiguous())


@per_group_quant.register_fake
def _(x: torch.Tensor, group: int, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.shape[0] if out_rows is None else out_rows
    return (x.new_empty((rows, x.shape[1]), dtype=FP8_DTYPE),
            x.new_empty((-(-x.shape[1] // group), rows), dtype=torch.float32))


@torch.library.custom_op("fvq_fp8::per_token_quant", mutates_args=())
def per_token_quant(x: torch.Tensor, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic fp8 quantization (Triton on CUDA, torch on CPU). ``out_rows`` (>= M): the outputs get that
    many rows, the first M written (the rest unwritten on CUDA, zeros on CPU) — for a GEMM padded to more rows."""
    if x.is_cuda:
        from fvq_fp8.kernels import act_quant_triton

        return act_quant_triton.per_token_quant(x, out_rows)
    return _with_rows(*per_token_quant_ref(x), out_rows)


def _with_rows(q: torch.Tensor, s: torch.Tensor, out_rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` ``[..., M, K]`` and ``s`` ``[..., M, 1]`` with zero rows added up to ``out_rows`` (None: as they are)."""
    m = q.shape[-2]
    if out_rows is None or out_rows == m:
        return q, s
    if out_rows < m:
        raise ValueError(f"fvq_fp8::per_token_quant: out_rows must be >= the {m} rows of x, found {out_rows}")
    pad = out_rows - m
    return (torch.cat([q, q.new_zeros((*q.shape[:-2], pad, q.shape[-1]))], dim=-2),
            torch.cat([s, s.new_zeros((*s.shape[:-2], pad, 1))], dim=-2))


@per_token_quant.register_fake
def _(x: torch.Tensor, out_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.shape[0] if out_rows is None else out_rows
    return x.new_empty((rows, x.shape[1]), dtype=FP8_DTYPE), x.new_empty((rows, 1), dtype=torch.float32)


@per_token_quant.register_vmap
def _(info, in_dims: tuple, x: torch.Tensor, out_rows: int | None = None) -> tuple:  # noqa: ANN001
    # torch.func.vmap: the rows are independent, so a batch of [M, K] inputs is one [B*M, K] call (torch's per-item
    # fallback loop, with its "performance drop" warning, otherwise; the padded rows per item as the op's own)
    if in_dims[0] is None:
        return per_token_quant(x, out_rows), (None, None)
    xb = x.movedim(in_dims[0], 0)
    b, m, k = xb.shape
    q, s = per_token_quant(xb.reshape(b * m, k))
    return _with_rows(q.view(b, m, k), s.view(b, m, 1), out_rows), (0, 0)


@torch.library.custom_op("fvq_fp8::static_quant", mutates_args=())
def static_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-tensor static fp8 quantization with ``scale`` (Triton on CUDA, torch on CPU)."""
    if x.is_cuda:
        from fvq_fp8.kernels import act_quant_triton

        return act_quant_triton.static_quant(x, scale)
    return static_quant_ref(x, scale)


@static_quant.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=FP8_DTYPE)


@static_quant.register_vmap
def _(info, in_dims: tuple, x: torch.Tensor, scale: torch.Tensor) -> tuple:  # noqa: ANN001
    # torch.func.vmap: elementwise with one scale, so a batch is one call on its rows; a scale per batch item (a
    # vmapped input_scale) one call per item
    x_dim, scale_dim = in_dims
    if scale_dim is None:
        if x_dim is None:
            return static_quant(x, scale), None
        xb = x.movedim(x_dim, 0)
        return static_quant(xb.reshape(-1, xb.shape[-1]), scale).view(xb.shape), 0
    xb = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
    scales = scale.movedim(scale_dim, 0)
    return torch.stack([static_quant(xb[i], scales[i]) for i in range(info.batch_size)]), 0


@torch.library.custom_op("fvq_fp8::w8a16_linear", mutates_args=())
def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                 bias: torch.Tensor | None, block_k: int = 0) -> torch.Tensor:
    """The W8A16 small-M kernel as one opaque op for torch.compile (CUDA only): ``w8_small_m_cuda.linear`` (the
    CUDA C++ kernel where its rule picks a tile, else the Triton kernel). ``block_k``: 0, or the K block of
    ``scale_row`` given as block scales ``[ceil(K/block_k), N]``."""
    from fastvideo_quant.kernels.w8_small_m_cuda import linear

    return linear(x, weight, scale_row, bias, block_k)


@w8a16_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor, bias: torch.Tensor | None,
      block_k: int = 0) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("fvq_fp8::w8a8_gemm", mutates_args=())
def w8a8_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype, pick: list[int] | None = None) -> torch.Tensor:
    """The core W8A8 Triton GEMM (fp8 operands) as one opaque op for torch.compile (CUDA only); ``pick``: its launch
    config (six ints, a route's), None: its autotuner's."""
    from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm as gemm

    return gemm(xq, x_scale, weight, w_scale, bias, out_dtype, pick)


@w8a8_gemm.register_fake
def _(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
      bias: torch.Tensor | None, out_dtype: torch.dtype, pick: list[int] | None = None) -> torch.Tensor:
    return xq.new_empty((xq.shape[0], weight.shape[0]), dtype=out_dtype)


@torch.library.custom_op("fvq_fp8::block_scaled_mm", mutates_args=())
def block_scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale_cols: torch.Tensor, grid: torch.Tensor | None,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``gemm.block_scaled_mm`` (CUDA sm_90 only) as one opaque op for torch.compile: the activation quantization and
    ``torch._scaled_mm`` with the M-major 1x128 scale layout cuBLASLt takes, which inductor does not re-lay out (or,
    at small M, the W8A16 kernel: chosen inside the op, as in eager)."""
    from fvq_fp8.kernels import gemm

    return gemm.block_scaled_mm(x, weight, scale_cols, grid, bias)


@block_scaled_mm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scale_cols: torch.Tensor, grid: torch.Tensor | None,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))
