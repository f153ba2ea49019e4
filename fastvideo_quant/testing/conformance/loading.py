"""Contract: checkpoint tensors load the same however they are laid out, faithfully, and bad ones are refused.

At TP=1 (this process); loading across tensor-parallel ranks is in
:mod:`~fastvideo_quant.testing.conformance.tensor_parallel`.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import max_abs_diff, rel_error, row_offset, scale_bias
from fastvideo_quant.testing.conformance.subject import (
    FUSED_KINDS,
    LAYER_KINDS,
    LOOSE_BAR_FACTOR,
    LOOSE_BAR_FLOOR,
    Subject,
)


def check_per_shard_equals_fused(subject: Subject, kind: str) -> None:
    """Loading q, k, v (or 0, 1) one by one fills the parameters exactly as one fused tensor (shard id None) does."""
    dtype = subject.main_dtype()
    ckpt = ck.make_checkpoint(subject, kind)
    per_shard = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype, process=False)
    fused = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype, fused_on_disk=True, process=False)
    a, b = ck.param_snapshot(per_shard), ck.param_snapshot(fused)
    bad = [n for n in a if not torch.equal(a[n], b[n])]
    if bad:
        ids = [p.shard_id for p in ckpt.parts]
        raise subject.fail(
            "loading: per-shard vs fused-on-disk", subject.describe(kind, dtype=dtype),
            f"loading shards {ids} one by one and loading them fused on disk (shard id None) give different "
            f"{bad} (max abs diff {max(max_abs_diff(a[n].float(), b[n].float()) for n in bad):.3g})",
            "a weight loader must place shard `shard_id` at its offset (narrow along output_dim by "
            "shard_offset/shard_size) and, for shard id None, split the fused tensor into its shards",
        )


def dequantized(subject: Subject, layer, kind: str, tp: int = 1) -> torch.Tensor:
    """``dequantize_weight(layer)`` as float32 on CPU; a failure naming the contract if it breaks."""
    try:
        w = layer.quant_method.dequantize_weight(layer)
    except Exception as exc:
        raise subject.fail("dequantize_weight", subject.describe(kind, tp=tp), f"raised {type(exc).__name__}: {exc}",
                           "implement dequantize_weight(layer) returning this rank's float32 [out, in] weight "
                           "after process_weights_after_loading") from exc
    return w.detach().float().cpu()


def check_weight_fidelity(subject: Subject, kind: str) -> None:
    """``dequantize_weight`` after loading is the float checkpoint weight, in order, up to the rounding."""
    dtype = subject.main_dtype()
    ckpt = ck.make_checkpoint(subject, kind)
    layer = ck.build_loaded(subject, kind, ckpt, bias=False, dtype=dtype)
    w, ref = dequantized(subject, layer, kind), ckpt.float_weight()
    where = subject.describe(kind, dtype=dtype)
    if tuple(w.shape) != tuple(ref.shape):
        raise subject.fail("dequantize_weight", where, f"returned shape {list(w.shape)}, expected {list(ref.shape)}",
                           "return this rank's weight as [out, in] (unpack and transpose as needed)")
    err = rel_error(w, ref)
    _check_row_offset(subject, ckpt, w, where)  # (an offset outgrows a tight bound: named before the bound is)
    if err <= subject.weight_bar:
        _check_bar_not_loose(subject, err, where)
        _check_gain(subject, ckpt, w, where)
        return
    rows, per_part = 0, []
    for p in ckpt.parts:
        n = p.weight.shape[0]
        per_part.append((p.shard_id, rel_error(w[rows:rows + n], p.weight)))
        rows += n
    parts = (f" (per checkpoint part: {', '.join(f'{s!r}: {e:.3g}' for s, e in per_part)})"
             if len(ckpt.parts) > 1 else "")
    raise subject.fail(
        "loading: weight fidelity", where,
        f"||dequantize_weight - float weight|| / ||float weight|| = {err:.3g} > weight_rel_error "
        f"{subject.weight_bar}{parts}",
        "a part far off means it loaded into the wrong rows (check the weight loader's use of shard_id); all far "
        "off means quantize_weight, the loader and dequantize_weight disagree on the format"
        + _bar_too_tight(subject, err, [e for _, e in per_part]),
    )


def _check_gain(subject: Subject, ckpt: ck.LayerCheckpoint, w: torch.Tensor, where: str) -> None:
    """Each checkpoint part's de-quantized rows are not its float weight times a constant factor more than
    ``max_gain_error`` from 1 (:func:`~.report.scale_bias`: both least-squares gains on the same side). The fidelity
    bound alone lets a constant factor through: 4-bit rounding errs ~0.10, so a bound of 0.14 passes a scale 16/15 too
    large; rounding to nearest leaves the gains within ~0.1% of 1 (noise over thousands of weights), and a codebook
    fitted for least squared error keeps them on either side of 1."""
    rows, off = 0, []
    for p in ckpt.parts:
        n = p.weight.shape[0]
        biased = scale_bias(w[rows:rows + n], p.weight, subject.max_gain_error)
        rows += n
        if biased is not None:
            gains = f"{biased[0]:.4f} (reverse {biased[1]:.4f})"
            off.append(f"{p.shard_id!r}: {gains}" if len(ckpt.parts) > 1 else gains)
    if off:
        raise subject.fail(
            "loading: weight scale", where,
            f"dequantize_weight is the float checkpoint weight times a gain (least squares) of {', '.join(off)}, more "
            f"than max_gain_error {subject.max_gain_error:g} from 1 both ways, though within weight_rel_error "
            f"{subject.weight_bar}: a scale written or read off by a constant factor (a reciprocal, levels counted 15 "
            "for 16, a fused part given another part's scale); rounding to nearest leaves the gains within ~0.001",
            "make quantize_weight, the weight loader and dequantize_weight agree on each scale; a method that clips "
            "weights on purpose declares max_gain_error on its suite class (its measured gain's distance from 1 plus "
            "a margin)")


#: The fewest inputs a row for which the offset check holds: rounding to nearest reads ~0.8 / sqrt(in) in the median,
#: ~0.2 at 16, but up to 1.0 at 1-4 inputs (a diff reviewer's measurement: symmetric int4 0.44 at 4, asymmetric 0.5).
MIN_OFFSET_INPUTS = 16


def _check_row_offset(subject: Subject, ckpt: ck.LayerCheckpoint, w: torch.Tensor, where: str) -> None:
    """No checkpoint part's de-quantized rows are its float weight plus a constant per row, more than
    ``max_row_offset`` of the rows' error (:func:`~.report.row_offset`). A 4-bit zero point off by one (AutoGPTQ's v1
    format stores ``z - 1``) errs ~3.5x the rounding, within a bound the weight-fidelity check thinks tight, and the
    gain check does not see an offset. Not below :data:`MIN_OFFSET_INPUTS` inputs a row, where rounding to nearest
    itself reads up to 1 (one entry a row: its error is its own mean)."""
    k = ckpt.parts[0].weight.shape[1]
    if k < MIN_OFFSET_INPUTS:
        return
    rows, off = 0, []
    for p in ckpt.parts:
        n = p.weight.shape[0]
        ratio = row_offset(w[rows:rows + n], p.weight)
        rows += n
        if ratio > subject.max_row_offset:
            off.append(f"{p.shard_id!r}: {ratio:.2f}" if len(ckpt.parts) > 1 else f"{ratio:.2f}")
    if off:
        raise subject.fail(
            "loading: weight offset", where,
            f"dequantize_weight is the float checkpoint weight plus a constant per row: each row's mean error is "
            f"{', '.join(off)} of its RMS error (median over rows), more than max_row_offset {subject.max_row_offset:g}; "
            f"rounding to nearest leaves ~{0.8 / k ** 0.5:.2f} at {k} inputs. A zero point off by one (stored z - 1 and "
            "read as z, or 1 added twice), codes offset by a constant (8 for signed 4-bit) or rounding one way "
            "(floor) does this",
            "make quantize_weight, the weight loader and dequantize_weight agree on the zero point and the codes' "
            "offset; a method that rounds one way on purpose declares max_row_offset on its suite class")


#: A measured weight error within this many times the bound, with every checkpoint part off alike (within
#: :data:`PARTS_ALIKE_FACTOR` of each other), may be the method's own rounding: the fix then suggests raising the
#: declared bound too. (A shard loaded into the wrong rows is ~1.4 off, far from its neighbours.)
NEAR_BAR_FACTOR = 4.0
PARTS_ALIKE_FACTOR = 2.0
#: A weight error at or above this is no rounding (zeros are 1 off, an unrelated weight ~1.4; sign-only quantization
#: with a scale per row ~0.6).
MAX_ROUNDING_ERROR = 0.8


def _bar_too_tight(subject: Subject, err: float, part_errors: list[float]) -> str:
    """The second fix of a weight-fidelity failure close to the bound, all parts off alike: the bound may be too
    tight for the method's rounding (``""`` otherwise)."""
    bar = subject.weight_bar
    near = err <= NEAR_BAR_FACTOR * bar and err < MAX_ROUNDING_ERROR
    if not near or not min(part_errors) > 0 or max(part_errors) > PARTS_ALIKE_FACTOR * min(part_errors):
        return ""
    declared = subject.declared_weight_bar()
    where = declared[1] if declared else (f"{subject.config_cls().__name__}.weight_rel_error (undeclared: the suite's "
                                          f"default {bar} applies)")
    return (f"; or, since the error is within {NEAR_BAR_FACTOR:g}x the bound and every part is off alike, it may be "
            f"this method's rounding: if the format is right, raise {where} from {bar} to the measured {err:.3g} plus "
            f"a margin (about {1.5 * err:.2g})")


def _check_bar_not_loose(subject: Subject, err: float, where: str) -> None:
    """A declared ``weight_rel_error`` at most :data:`LOOSE_BAR_FACTOR` times the measured error: a looser bar lets a
    wrong scale through, and nothing else in the suite would see it (``apply`` is compared with the method's own
    ``dequantize_weight``)."""
    declared = subject.declared_weight_bar()
    if declared is None:
        return  # the loose default: test_weight_bar_declared skips, saying so
    bar, source = declared
    if bar <= LOOSE_BAR_FLOOR or bar <= LOOSE_BAR_FACTOR * err:
        return
    times = f"{bar / err:.0f}x" if err > 0 else "infinitely many times"
    raise subject.fail(
        "loading: weight_rel_error declared", where,
        f"||dequantize_weight - float weight|| / ||float weight|| = {err:.3g}, but {source} is {bar}, {times} that "
        f"(more than {LOOSE_BAR_FACTOR:g}x): a scale written up to ~{100 * (bar - err):.0f}% off would pass the "
        "weight-fidelity checks",
        f"declare your measured error plus a margin (here about {max(1.5 * err, 2 * LOOSE_BAR_FLOOR):.2g}); where one "
        "suite class needs a looser bound (another group size), set weight_rel_error on that class")


def _bad_tensor(ckpt: ck.LayerCheckpoint) -> tuple[str, torch.Tensor]:
    """The checkpoint's largest tensor with every dim one larger (so no sharding rule can accept it)."""
    name = max(ckpt.suffixes(), key=lambda s: (ckpt.parts[0].tensors[s].dim(), ckpt.parts[0].tensors[s].numel()))
    t = ckpt.parts[0].tensors[name]
    return name, torch.zeros(tuple(n + 1 for n in t.shape) or (2,), dtype=t.dtype)


def check_rejects_misshaped(subject: Subject, kind: str) -> None:
    """A checkpoint tensor of the wrong shape raises an error that names the shape it found."""
    dtype = subject.main_dtype()
    ckpt = ck.make_checkpoint(subject, kind)
    layer = subject.build_layer(kind, bias=False, dtype=dtype)
    name, bad = _bad_tensor(ckpt)
    param = ck.check_tensor_names(layer, ckpt, subject)[name]  # (a name no parameter has: the names' contract)
    if bad.dtype.is_floating_point != param.dtype.is_floating_point:  # (a dtype the parameter cannot take is the
        bad = bad.to(param.dtype)  # loading check's failure; here only the shape is wrong)
    shard = ckpt.parts[0].shard_id
    where = subject.describe(kind, dtype=dtype)
    if not callable(getattr(param, "weight_loader", None)):  # (its own failure, not a message missing the shape)
        raise ck.no_loader_failure(subject, layer, where)
    try:
        param.weight_loader(param, bad, shard) if kind in FUSED_KINDS else param.weight_loader(param, bad)
    except Exception as exc:
        msg = str(exc)
        if not any(s in msg for s in (str(tuple(bad.shape)), str(list(bad.shape)), str(bad.shape))):
            raise subject.fail("loading: mis-shaped tensor", where,
                               f"loading a {list(bad.shape)} tensor into {name!r} {list(param.shape)} raised "
                               f"{type(exc).__name__}: {msg!r}, which does not say the shape it found",
                               "raise an error naming the parameter, the expected and the found shape "
                               "(fastvideo_quant.parameter.copy_checked does)") from exc
        return
    raise subject.fail("loading: mis-shaped tensor", where,
                       f"loading a {list(bad.shape)} tensor into {name!r} {list(param.shape)} (shard id {shard!r}) "
                       "was accepted silently",
                       "check shapes before copying (fastvideo_quant.parameter.copy_checked / check_full_size)")


class LoadingTests(MethodFixtures):
    """Per-shard vs fused-on-disk loading, weight fidelity, mis-shaped tensors (TP=1)."""

    @pytest.mark.parametrize("kind", FUSED_KINDS)
    def test_per_shard_equals_fused(self, fvq_runnable: Subject, kind: str) -> None:
        check_per_shard_equals_fused(fvq_runnable, kind)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_weight_fidelity(self, fvq_runnable: Subject, kind: str) -> None:
        check_weight_fidelity(fvq_runnable, kind)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_rejects_misshaped(self, fvq_runnable: Subject, kind: str) -> None:
        check_rejects_misshaped(fvq_runnable, kind)
