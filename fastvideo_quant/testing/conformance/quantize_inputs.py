"""Contract: ``quantize_weight`` takes a weight as ``fvq quantize`` passes it, and leaves it as it was.

``fvq quantize`` hands ``quantize_weight`` each checkpoint tensor in its stored dtype — bfloat16 or float16 for most
real checkpoints — while the suite's other checks quantize float32 weights, so a ``quantize_weight`` that only works
on float32 (a ``weight.numpy()``, an op without a bfloat16 kernel) would pass them and fail on the first real model.
It must return the same tensor names and shapes for a bfloat16 or float16 weight as for a float32 one, of the same
kinds (float, integer, float8: the loaders convert among floats, not across kinds). And it must not modify the
weight: ``weight.float()`` is the caller's own tensor when the weight is float32 already, so an in-place op on it
changes the model that is being quantized. One weight of the replicated layer's shape is enough: this is per config.
A config whose ``uses_calibration()`` is not False may need calibration activations (fp8's static activation scheme
computes ``input_scale`` from them), so every call gets the same ``[tokens, in]`` ones (``calibration_input``).
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.calibration import PREFIX, _config, _skip_if_unavailable, calibration_input
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import fmt_shapes, max_abs_diff
from fastvideo_quant.testing.conformance.subject import Subject

#: The dtypes checkpoints store float weights in, besides the float32 the other checks use.
CHECKPOINT_DTYPES = (torch.bfloat16, torch.float16)


def check_quantize_weight_inputs(subject: Subject) -> None:
    """``quantize_weight`` leaves its (float32) weight unchanged and takes bfloat16 and float16 weights, returning
    the tensors it returns for float32. A config that may read calibration activations (``uses_calibration()`` not
    False: fp8's static activation scheme needs them) is given the same ``[tokens, in]`` activations in every call."""
    cfg = _config(subject)
    weight = ck.float_parts(subject, "replicated")[0][1]
    x = None if cfg.uses_calibration() is False else calibration_input(subject)
    reference = _call(subject, cfg, weight, x)
    for dtype in CHECKPOINT_DTYPES:
        got = _call(subject, cfg, weight.to(dtype), x)
        problem = _unlike(reference, got)
        if problem:
            raise subject.fail("quantize_weight: checkpoint dtypes", _where(cfg, weight, dtype, x),
                               f"returned {fmt_shapes(got)}, but {fmt_shapes(reference)} for the float32 weight: "
                               f"{problem}", "return the same tensors whatever the float dtype of the weight (quantize "
                               "from weight.float()): checkpoints store it in bfloat16 or float16")


def _where(cfg, weight: torch.Tensor, dtype: torch.dtype, x: torch.Tensor | None) -> str:
    given = "" if x is None else f", activations=x {list(x.shape)} float32"
    return (f"{type(cfg).__name__}.quantize_weight(weight {list(weight.shape)} {str(dtype).replace('torch.', '')}, "
            f"prefix={PREFIX!r}{given})")


def _call(subject: Subject, cfg, weight: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``quantize_weight(weight, activations=x)`` on CPU; a failure when it raises or modifies ``weight`` (a raise for
    the float32 weight is no dtype problem: it says so), a skip when the config cannot quantize (NotImplementedError)
    or needs what is missing here."""
    where = _where(cfg, weight, weight.dtype, x)
    given = weight.clone()
    try:
        out = cfg.quantize_weight(given, prefix=PREFIX, activations=None if x is None else x.clone())
    except NotImplementedError as exc:
        pytest.skip(f"{type(cfg).__name__} cannot quantize checkpoints (quantize_weight raised NotImplementedError: "
                    f"{exc})")
    except Exception as exc:
        _skip_if_unavailable(subject, cfg, exc)
        if weight.dtype == torch.float32:
            raise subject.fail("quantize_weight", where, f"raised {type(exc).__name__}: {exc}",
                               "quantize a float32 weight of the replicated layer's shape"
                               + (" without activations: uses_calibration() returns False, so fvq quantize passes "
                                  "none (return True or None from it if quantize_weight needs them)" if x is None else
                                  " with activations=[tokens, in] float32, as fvq quantize --calibration passes them")
                               ) from exc
        raise subject.fail("quantize_weight: checkpoint dtypes", where,
                           f"raised {type(exc).__name__}: {exc} (the float32 weight quantizes)",
                           "accept a float weight of any dtype: fvq quantize passes each checkpoint tensor in its "
                           "stored dtype, bfloat16 or float16 for most models (quantize from weight.float(); no "
                           "numpy, which has no bfloat16)") from exc
    if not isinstance(out, dict) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise subject.fail("quantize_weight", where, f"returned {type(out).__name__} {out!r:.200}",
                           "return a non-empty dict {suffix: tensor}, e.g. {'weight': q, 'weight_scale': s}")
    if not torch.equal(given, weight):
        changed = int(given.ne(weight).sum())
        raise subject.fail("quantize_weight: input unchanged", where,
                           f"modified the weight it was given in place: {changed} of {weight.numel()} values changed "
                           f"(max abs diff {max_abs_diff(given, weight):.3g})",
                           "work on a copy: weight.float() returns the caller's own tensor when the weight is float32 "
                           "already, so use w = weight.float().clone() (or out-of-place ops: w / s, not w.div_(s))")
    return {k: v.detach().cpu() for k, v in out.items()}


def _kind(dtype: torch.dtype) -> str:
    """float8, float or integer: what a loader converts within (``copy_checked`` refuses across)."""
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return "float8"
    return "float" if dtype.is_floating_point else "integer"


def _unlike(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str | None:
    """How ``got`` differs from ``reference`` in names, shapes or dtype kinds, or None."""
    if sorted(got) != sorted(reference):
        return f"other tensor names ({sorted(got)} vs {sorted(reference)})"
    shapes = [k for k in sorted(got) if got[k].shape != reference[k].shape]
    if shapes:
        return f"other shapes for {shapes}"
    kinds = [k for k in sorted(got) if _kind(got[k].dtype) != _kind(reference[k].dtype)]
    if kinds:
        return f"other dtype kinds for {kinds} (a loader converts among floats, not between float and integer)"
    return None


class QuantizeWeightTests(MethodFixtures):
    """``quantize_weight`` takes checkpoint dtypes and leaves its input alone (once per method)."""

    def test_quantize_weight_inputs(self, fvq_subject: Subject) -> None:
        check_quantize_weight_inputs(fvq_subject)
