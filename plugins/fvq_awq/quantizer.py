"""Quantize float weights into AutoAWQ GEMM checkpoint tensors: round-to-nearest or activation-aware.

Round-to-nearest (no calibration data) follows AutoAWQ's ``pseudo_quantize_tensor`` with
``zero_point=True``: per group of ``group_size`` input rows and per output column,
``scale = (max - min) / 15``, ``zero = clamp(-round(min / scale), 0, 15)``,
``q = clamp(round(w / scale) + zero, 0, 15)``. Scales are rounded to fp16 *before* the codes are
computed, so the stored scale is the one the codes were chosen for.

**Zero is always in a group's range** (``max = max(max, 0)``, ``min = min(min, 0)``, as GPTQ does),
unlike AutoAWQ: the zero point is an integer in ``[0, 15]``, so a range that does not contain 0
cannot be represented — with ``min > 0`` AutoAWQ's zero clamps to 0 and the codes saturate at 15
(a constant 0.5 group de-quantized to 0, ``U[1, 2]`` to one value). With 0 in the range a constant
group is exact (up to the fp16 rounding of its scale) and a one-sided group gets the usual 4-bit error;
groups that straddle zero are unchanged, bit for bit.

**fp16 scale range.** A scale above fp16's largest value (65504, i.e. ``max(w, 0) - min(w, 0)``
above ~982 560) would be stored as inf: refused with :class:`QuantizeError` naming the tensor, the
group, its ``max |w|`` and the limit. At the other end the scale is floored only at fp16's smallest
subnormal (``2**-24`` ≈ 6e-8), which matters only for all-zero groups (their codes are 0 whatever the
scale); AutoAWQ's ``clamp(min=1e-5)`` floor instead cost groups of weights below ~1e-5 most of their
precision. What remains is fp16's own precision for tiny scales (subnormal steps of ``2**-24``):
Gaussian groups of 128 with ``max |w|`` ≈ 1.7e-6 get weight error 0.11 (0.10 at normal sizes),
5e-7 0.14, 1.7e-7 0.27, and groups below ~3e-8 de-quantize to 0.

Activation-aware (AWQ paper, Lin et al. 2023, Sec. 3.2; AutoAWQ ``_search_best_scale``):
per-input-channel scales ``s = mean|x|^alpha`` (normalised by ``sqrt(max s * min s)``), with
``alpha`` grid-searched over ``n_grid`` points in ``[0, 1]`` on the layer's output error
``||x W^T - (x / s) Q(W diag(s))^T||``. Salient input channels (large ``|x|``) are scaled up before
group-wise rounding, so their relative rounding error shrinks by ``s``.

**Where ``1/s`` goes.** AWQ never stores ``s``: the scaled weight ``Q(W diag(s))`` is written in the
plain GEMM format and ``1/s`` is folded into the op that produces ``x`` (the preceding norm's
weight, or the previous linear's output rows). That is why AutoAWQ checkpoints are plain GEMM
tensors. The format has no per-input-channel factor, so a standalone linear cannot carry ``1/s``:
de-quantizing ``Q(W s)`` and dividing rows by ``s`` is not representable (one scale per group and
column), and re-quantizing that product rounds the benefit away. Hence two entry points:

* :func:`awq_scale_search` returns the tensors of ``Q(W diag(s))`` *and* ``s``: the caller must fold
  ``1/s`` into the preceding op (a model-level quantizer does this, as AutoAWQ does).
* :func:`quantize_weight` (what ``fvq quantize`` calls per layer, with nothing to fold into) is
  activation-aware *within the format*: it keeps ``s = 1`` and uses the calibration activations to
  choose each group's range by AutoAWQ's clip search (``_search_best_clip``): shrink ``max``/``min``
  by a ratio from a grid, keeping per group the ratio with the least output error
  ``||x_g (w_g - Q(w_g))^T||`` over that group's inputs. Ratio 1.0 is RTN, so this is never worse
  than RTN on the calibration data; the output stays exactly the plain GEMM format.
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import ConfigError, QuantizeError
from fastvideo_quant.quantize.finite import describe_non_finite
from fvq_awq.config import SUPPORTED_GROUP_SIZES
from fvq_awq.ct_format import SYMMETRIC_ZERO
from fvq_awq.format import PACK_FACTOR, pack_awq

MAX_INT = 15
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
#: The smallest positive fp16 (subnormal) scale: the floor an all-zero group needs (its codes are 0 whatever it is).
SCALE_FLOOR = 2.0**-24


def shape_problems(out: int, k: int, group_size: int) -> list[str]:
    """The rules of the GEMM format a weight ``[out, in]`` breaks (``[]`` when it fits): ``qweight``/``qzeros`` pack 8
    output columns per int32 word, ``scales`` hold whole groups of ``group_size`` inputs (``-1``: one group), and
    the loader's kernel layout reads the inputs in words of 8 (``layout.choose_bk8``). Each problem says which
    group sizes would fit, if any. ``fvq quantize`` asks for every weight before quantizing any."""
    problems = []
    if out % PACK_FACTOR:
        problems.append(f"out_features {out} is not a multiple of {PACK_FACTOR} (int4 packing: {PACK_FACTOR} output "
                        "columns per int32 word; no group_size changes that)")
    if k % PACK_FACTOR:
        problems.append(f"in_features {k} is not a multiple of {PACK_FACTOR} (the kernels read inputs in words of "
                        f"{PACK_FACTOR}; no group_size changes that)")
    elif group_size != -1 and k % group_size:
        fits = [g for g in SUPPORTED_GROUP_SIZES if g == -1 or k % g == 0]
        problems.append(f"in_features {k} is not a multiple of group_size {group_size} (group_size "
                        f"{' or '.join(map(str, fits))} would fit)")
    return problems


def _check(weight: torch.Tensor, group_size: int, activations: torch.Tensor | None) -> None:
    out, k = weight.shape
    problems = shape_problems(out, k, group_size)
    if problems:
        raise ConfigError(f"AWQ quantize: weight [out={out}, in={k}]: {'; '.join(problems)}")
    if activations is not None and activations.shape[-1] != k:
        raise ConfigError(f"AWQ quantize: activations have {activations.shape[-1]} channels, weight has in={k}")


def _grid(w: torch.Tensor, group: int, max_val: torch.Tensor | None = None, min_val: torch.Tensor | None = None):
    """Per-group fp16 scales and integer zeros for ``w [out, in]`` → ``([out, G], [out, G])``."""
    wg = w.reshape(w.shape[0], -1, group)
    max_val = (wg.amax(-1) if max_val is None else max_val).clamp(min=0)  # 0 is always in the range: the
    min_val = (wg.amin(-1) if min_val is None else min_val).clamp(max=0)  # integer zero point must reach it
    scales = ((max_val - min_val) / MAX_INT).to(torch.float16).to(torch.float32).clamp(min=SCALE_FLOOR)
    zeros = (-torch.round(min_val / scales)).clamp(0, MAX_INT)
    return scales, zeros


def _where(prefix: str, w: torch.Tensor) -> str:
    return f"AWQ quantize {prefix!r} (weight {list(w.shape)})" if prefix else f"AWQ quantize (weight {list(w.shape)})"


def _check_finite(w: torch.Tensor, prefix: str, activations: torch.Tensor | None = None) -> None:
    """For callers of the API: ``fvq quantize`` refuses non-finite weights for every method before they get here, in
    the same words (``fastvideo_quant.quantize.finite``)."""
    found = describe_non_finite(w)
    if found is not None:
        raise QuantizeError(f"{_where(prefix, w)}: {found}; the source checkpoint is corrupt or was written by a "
                            "broken export: re-export the tensor")
    if activations is not None and not torch.isfinite(activations).all():
        count = int((~torch.isfinite(activations)).sum())
        raise QuantizeError(f"{_where(prefix, w)}: {count} calibration activation value(s) are not finite "
                            f"(activations {list(activations.shape)}); every candidate's output error would be NaN. "
                            "Record the calibration inputs again, or drop the tokens holding inf/NaN")


def _calibration(activations: torch.Tensor, w: torch.Tensor, prefix: str, normalize: bool = True) -> torch.Tensor:
    """The calibration tokens as float32 ``[T, in]`` on ``w``'s device; with ``normalize``, divided by their largest
    magnitude — the clip search ranks candidates by output error, which a constant factor on ``x`` scales alike for
    all, while activations near 1e19 squared overflow float32 and every candidate's error read inf. (Not for the scale
    search: its floor on ``s`` is absolute, so dividing ``x`` would move it; it squares its error in float64.)
    QuantizeError for no tokens at all (every candidate's error is a mean over none)."""
    x = activations.detach().reshape(-1, w.shape[1]).float().to(w.device)
    if x.shape[0] == 0:
        raise QuantizeError(f"{_where(prefix, w)}: the calibration activations {list(activations.shape)} hold no "
                            "tokens; the search needs the module's inputs. Record calibration data that reaches the "
                            "module, or quantize it without activations (round to nearest)")
    if not normalize:
        return x
    top = x.abs().max()
    return x / top if bool(top > 0) else x


def _check_scales(scales: torch.Tensor, w: torch.Tensor, group: int, prefix: str, what: str = "w") -> None:
    """Refuse fp16 scales that overflowed to inf, naming the worst group, its ``max |w|`` and the fp16 limit."""
    if torch.isfinite(scales).all():
        return
    wg = w.reshape(w.shape[0], -1, group)
    span = wg.amax(-1).clamp(min=0) - wg.amin(-1).clamp(max=0)
    r, g = (int(i) for i in (span == span.max()).nonzero()[0])
    peak = wg[r, g].abs().max().item()
    n_bad = int((~torch.isfinite(scales)).sum())
    raise QuantizeError(
        f"{_where(prefix, w)}: group {g} (inputs {g * group}..{(g + 1) * group - 1}) of output row {r} has max "
        f"|{what}| = {peak:.3g}; its scale (max(w, 0) - min(w, 0)) / 15 = {span[r, g].item() / MAX_INT:.4g} exceeds "
        f"fp16's largest value {FP16_MAX:.0f} and would be stored as inf ({n_bad} group(s) affected). AWQ scales are "
        f"fp16, so a group fits while max(w, 0) - min(w, 0) <= {FP16_MAX * MAX_INT:.0f}. Weights this large are "
        f"usually a broken export: check the source tensor, or leave this layer unquantized (fvq quantize --skip "
        f"{prefix or 'MODULE'}, or list it in modules_to_not_convert)"
    )


def _codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> torch.Tensor:
    wg = w.reshape(w.shape[0], -1, group)
    q = wg / scales[..., None]  # one float32 temporary, rounded and shifted in place
    return q.round_().add_(zeros[..., None]).clamp_(0, MAX_INT).reshape(w.shape)


def _dequant(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int, *,
             in_place: bool = False) -> torch.Tensor:
    """``(q - z) * s`` per group; ``in_place`` overwrites the float codes ``q`` (no further copy of the weight)."""
    qg = q.reshape(q.shape[0], -1, group)
    if in_place:
        return qg.sub_(zeros[..., None]).mul_(scales[..., None]).reshape(q.shape)
    return ((qg - zeros[..., None]) * scales[..., None]).reshape(q.shape)


def _pack(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[out, in]`` codes and ``[out, G]`` scales/zeros → AutoAWQ ``qweight/qzeros/scales``. The float codes are
    packed in chunks straight from their transposed view (no whole ``[in, out]`` integer copy)."""
    return {"qweight": pack_awq(q.t()).cpu(),
            "qzeros": pack_awq(zeros.t()).cpu(),
            "scales": scales.t().contiguous().to(torch.float16).cpu()}


def rtn(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes, scales, zeros of float32 ``w [out, in]``."""
    scales, zeros = _grid(w, group)
    return _codes(w, scales, zeros, group), scales, zeros


def _clip_search(w: torch.Tensor, x: torch.Tensor, group: int, n_grid: int = 20, max_shrink: float = 0.5):
    """AutoAWQ-style per-group clip-ratio search on output error; returns codes, scales, zeros."""
    out, k = w.shape
    g_count = k // group
    wg = w.reshape(out, g_count, group)
    xg = x.reshape(-1, g_count, group)  # [T, G, group]
    best_err = torch.full((out, g_count), float("inf"), device=w.device)
    best_max, best_min = wg.amax(-1), wg.amin(-1)
    ref = torch.einsum("tgk,ogk->tog", xg, wg)
    for i in range(int(max_shrink * n_grid)):
        ratio = 1 - i / n_grid
        mx, mn = wg.amax(-1) * ratio, wg.amin(-1) * ratio
        scales, zeros = _grid(w, group, mx, mn)
        # in place on the codes: one float32 copy of w, not three
        deq = _dequant(_codes(w, scales, zeros, group), scales, zeros, group, in_place=True).reshape(out, g_count, group)
        err = (torch.einsum("tgk,ogk->tog", xg, deq) - ref).pow(2).mean(0)  # [out, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, mx, best_max)
        best_min = torch.where(better, mn, best_min)
    scales, zeros = _grid(w, group, best_max, best_min)
    return _codes(w, scales, zeros, group), scales, zeros


def awq_scale_search(weight: torch.Tensor, activations: torch.Tensor, group_size: int = 128,
                     n_grid: int = 20, *, prefix: str = "") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AWQ's per-input-channel scale search → (GEMM tensors of ``Q(W diag(s))``, ``s [in]``).

    The layer then computes ``(x / s) @ dequant^T``: fold ``1/s`` into the op producing ``x``.
    ``alpha = 0`` (``s = 1``, plain RTN) is on the grid, so the result never loses to RTN on ``x``.
    ``prefix`` (the module's name) is only for errors: weights whose fp16 scales would overflow are refused.
    """
    w = weight.detach().float()
    group = w.shape[1] if group_size == -1 else group_size
    _check(w, group_size, activations)
    _check_finite(w, prefix, activations)
    _check_scales(_grid(w, group)[0], w, group, prefix)  # alpha = 0 (RTN) must fit
    x = _calibration(activations, w, prefix, normalize=False)  # (s's floor, 1e-4, is on the activations' own scale)
    ref = x @ w.t()
    x_mean = x.abs().mean(0)
    best = (float("inf"), None, None)
    for i in range(n_grid):
        alpha = i / (n_grid - 1)
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max().sqrt() * s.min().sqrt())  # (a product of the two overflows float32 past ~1.8e19)
        q, scales, zeros = rtn(w * s[None, :], group)
        deq = _dequant(q, scales, zeros, group)
        err = ((x / s) @ deq.t() - ref).double().pow(2).mean().item()  # (squared in float64: 1e19-sized outputs)
        if err < best[0]:
            best = (err, (q, scales, zeros), s)
    if best[1] is None:  # (finite inputs and a float64 error: never NaN or inf; kept as a guard)
        raise QuantizeError(f"{_where(prefix, w)}: no scale candidate gave a finite output error on the calibration "
                            f"activations {list(activations.shape)}")
    q, scales, zeros = best[1]
    _check_scales(scales, w * best[2][None, :], group, prefix, "w * s")
    return _pack(q, scales, zeros), best[2].cpu()


def quantize_weight(weight: torch.Tensor, activations: torch.Tensor | None = None, *,
                    group_size: int = 128, n_grid: int = 20, prefix: str = "") -> dict[str, torch.Tensor]:
    """Float ``[out, in]`` → AutoAWQ GEMM ``{"qweight", "qzeros", "scales"}`` for a standalone layer.

    Without ``activations``: round-to-nearest. With ``activations [tokens, in]``: activation-aware
    clip search within the format (see the module docstring for why ``s`` is not used here).
    ``prefix`` (the module's name) is only for errors: weights whose fp16 scales would overflow are refused.
    """
    return _pack(*quantize_codes(weight, activations, group_size=group_size, n_grid=n_grid, prefix=prefix))


def quantize_codes(weight: torch.Tensor, activations: torch.Tensor | None = None, *, group_size: int = 128,
                   n_grid: int = 20, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_weight` before packing: float codes ``[out, in]`` in ``[0, 15]``, fp16-rounded scales and
    zero points ``[out, G]`` (float32), with ``W = (q - z) * s``."""
    w = weight.detach().float()
    group = w.shape[1] if group_size == -1 else group_size
    _check(w, group_size, activations)
    _check_finite(w, prefix, activations)
    _check_scales(_grid(w, group)[0], w, group, prefix)  # the full range (clip ratio 1.0); shrunk ranges are smaller
    if activations is None:
        return rtn(w, group)
    return _clip_search(w, _calibration(activations, w, prefix), group, n_grid)


#: Symmetric int4 (compressed-tensors' ``calculate_qparams``): ``scale = max|w| / 7.5`` (half the range of [-8, 7]),
#: signed codes ``clamp(round(w / scale), -8, 7)`` stored ``+ 8`` (``ct_format.SYMMETRIC_ZERO``).
SYMMETRIC_HALF_RANGE = 7.5


def symmetric_codes(weight: torch.Tensor, *, group_size: int = 128, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric int4 of float ``[out, in]`` as compressed-tensors quantizes W4A16: stored codes
    ``[out, in]`` in ``[0, 15]`` (signed code + 8) and fp16-rounded scales ``[out, G]``; ``W = (u - 8) * s``."""
    w = weight.detach().float()
    group = w.shape[1] if group_size == -1 else group_size
    _check(w, group_size, None)
    _check_finite(w, prefix)
    peak = w.reshape(w.shape[0], -1, group).abs().amax(-1)
    scales = (peak / SYMMETRIC_HALF_RANGE).to(torch.float16).to(torch.float32).clamp(min=SCALE_FLOOR)
    if not torch.isfinite(scales).all():
        r, g = (int(i) for i in (peak == peak.max()).nonzero()[0])
        raise QuantizeError(f"{_where(prefix, w)}: group {g} of output row {r} has max |w| = {peak[r, g].item():.3g}; "
                            f"its scale max|w| / {SYMMETRIC_HALF_RANGE} exceeds fp16's largest value {FP16_MAX:.0f}. "
                            "Weights this large are usually a broken export: check the source tensor, or leave this "
                            "layer unquantized")
    return _codes(w, scales, torch.full_like(scales, SYMMETRIC_ZERO), group), scales
