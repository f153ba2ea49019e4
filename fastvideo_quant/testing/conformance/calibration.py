"""Contract: ``uses_calibration()`` tells the truth about whether ``quantize_weight`` reads ``activations``, and
``requires_calibration()`` whether it cannot run without them.

``fvq quantize --calibration`` refuses a config declaring False, since the file would change nothing; a config that
declares False and reads them anyway would have an operator's calibration refused although it mattered. So a config
declaring False must return bit-identical tensors with and without activations, and one declaring True or None
(not declared: ``fvq quantize`` passes them) must accept ``activations=`` of shape ``[tokens, in]`` and return the
same tensor names as without (a model loading the checkpoint builds the same parameters either way). One weight of
the replicated layer's shape is enough: the declaration is per config, not per layer class.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.checkpoint import calibration_input
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import fmt_shapes
from fastvideo_quant.testing.conformance.subject import Subject

CONTRACT = "uses_calibration"
#: The prefix ``quantize_weight`` is called with (the replicated layer's, as the checkpoint checks name it).
PREFIX = "conformance.replicated"


def check_calibration_declared(subject: Subject) -> None:
    """``quantize_weight`` with and without ``activations=`` agrees with the config's ``uses_calibration()``."""
    cfg = _config(subject)
    name = type(cfg).__name__
    declared = cfg.uses_calibration()
    if declared is not None and not isinstance(declared, bool):
        raise subject.fail(CONTRACT, name, f"uses_calibration() returned {declared!r}",
                           "return True (quantize_weight reads activations), False (it ignores them) or None")
    weight = ck.float_parts(subject, "replicated")[0][1]
    x = calibration_input(subject)
    where = f"{name}.quantize_weight(weight {list(weight.shape)}, prefix={PREFIX!r})"
    said = f"{name}.uses_calibration() returns {declared}"
    plain, plain_error = _attempt(subject, cfg, weight, None)
    given, given_error = _attempt(subject, cfg, weight, x)
    _check_no_raise(subject, cfg, where, said, x, plain_error if declared is False else None, given_error,
                    declared=declared)
    _check_required(subject, cfg, where, declared, plain_error)
    if declared is False:
        _check_ignored(subject, cfg, weight, where, said, plain, given)
    elif plain is not None and sorted(plain) != sorted(given):
        raise subject.fail(CONTRACT, where, f"returned {sorted(given)} with activations=x {list(x.shape)}, "
                           f"{sorted(plain)} without", "return the same tensor names with and without activations: "
                           "a model loading the checkpoint builds the same parameters either way")


def _check_required(subject: Subject, cfg, where: str, declared: bool | None, plain_error: Exception | None) -> None:
    """``requires_calibration()`` against the call without activations: True only where that call is refused (and
    with ``uses_calibration()`` True); a refusal without activations declared so (``fvq quantize`` then refuses a run
    without ``--calibration`` before reading any tensor, instead of failing at the first)."""
    name = type(cfg).__name__
    required = cfg.requires_calibration()
    if not isinstance(required, bool):
        raise subject.fail("requires_calibration", name, f"requires_calibration() returned {required!r}",
                           "return True (quantize_weight cannot run without activations) or False")
    if required and declared is not True:
        raise subject.fail("requires_calibration", name, f"requires_calibration() is True but uses_calibration() "
                           f"returns {declared!r}", "return True from uses_calibration() too: a method that needs "
                           "activations reads them")
    if required and plain_error is None:
        raise subject.fail("requires_calibration", where, "requires_calibration() is True, but without activations it "
                           "returned tensors", "return False from requires_calibration() (fvq quantize would refuse "
                           "runs without --calibration that work), or refuse the call without activations")
    if not required and plain_error is not None:
        raise subject.fail("requires_calibration", where, f"without activations it raised {type(plain_error).__name__}: "
                           f"{plain_error}, but requires_calibration() is False", "return True from "
                           "requires_calibration() under the settings that need activations (e.g. self.activation_scheme "
                           "== 'static'), so that fvq quantize refuses a run without --calibration before reading any "
                           "tensor") from plain_error


def _config(subject: Subject):
    """The config that writes checkpoints; a skip where it asks for what is missing here."""
    from fastvideo_quant.errors import MethodUnavailableError

    try:
        return subject.quant_config()
    except MethodUnavailableError as exc:
        pytest.skip(f"method {subject.method!r} with config {subject.config or {}} is unavailable here: {exc}")


def _check_no_raise(subject: Subject, cfg, where: str, said: str, x: torch.Tensor, plain_error: Exception | None,
                    given_error: Exception | None, *, declared: bool | None) -> None:
    """A failure for a call that raised: with activations (any declaration), without them (``plain_error`` is given
    only for a config declaring False, which must not need them)."""
    for error in (given_error, plain_error):
        _skip_if_unavailable(subject, cfg, error)
    if given_error is not None:
        fix = ("ignore activations (return the tensors of the call without them), or return True from "
               "uses_calibration() if quantize_weight reads them") if declared is False else (
            "accept activations=[tokens, in] (fvq quantize --calibration passes each module's inputs so); if "
            "quantize_weight does not read them, return False from uses_calibration()")
        raise subject.fail(CONTRACT, where, f"{said}, but with activations=x {list(x.shape)} float32 it raised "
                           f"{type(given_error).__name__}: {given_error}", fix) from given_error
    if plain_error is not None:
        raise subject.fail(CONTRACT, where, f"{said} (quantize_weight ignores activations, so fvq quantize refuses "
                           f"--calibration), but without activations it raised {type(plain_error).__name__}: "
                           f"{plain_error}", "return True from uses_calibration() when quantize_weight needs "
                           "activations with this config's settings") from plain_error


def _skip_if_unavailable(subject: Subject, cfg, error: Exception | None) -> None:
    """Skip, saying why, when ``quantize_weight`` raised for a method unavailable here (a dependency it imports)."""
    reason = type(cfg).unavailable_reason() if error is not None else None
    if reason:
        pytest.skip(f"method {subject.method!r} is unavailable here: {reason} (quantize_weight raised "
                    f"{type(error).__name__}: {error})")


def _attempt(subject: Subject, cfg, weight: torch.Tensor,
             x: torch.Tensor | None) -> tuple[dict[str, torch.Tensor] | None, Exception | None]:
    """``(tensors on CPU, None)`` of ``quantize_weight`` on copies, or ``(None, the exception it raised)``; a skip
    when the config cannot quantize at all (NotImplementedError)."""
    try:
        out = cfg.quantize_weight(weight.clone(), prefix=PREFIX, activations=None if x is None else x.clone())
    except NotImplementedError as exc:
        pytest.skip(f"{type(cfg).__name__} cannot quantize checkpoints (quantize_weight raised NotImplementedError: "
                    f"{exc}), so it reads no calibration activations")
    except Exception as exc:  # noqa: BLE001 - the caller says which contract a raise breaks
        return None, exc
    if not isinstance(out, dict) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise subject.fail("quantize_weight", type(cfg).__name__, f"returned {type(out).__name__} {out!r:.200}",
                           "return a non-empty dict {suffix: tensor}, e.g. {'weight': q, 'weight_scale': s}")
    return {k: v.detach().cpu() for k, v in out.items()}, None


def _check_ignored(subject: Subject, cfg, weight: torch.Tensor, where: str, said: str,
                   plain: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Bit-identical outputs, else a failure naming the tensors that differ (a skip when two calls without
    activations differ too: then the difference says nothing about them)."""
    differ = _differing(plain, given)
    if not differ:
        return
    again = _differing(plain, _attempt(subject, cfg, weight, None)[0] or {})
    if again:
        pytest.skip(f"{type(cfg).__name__}.quantize_weight is not deterministic (two calls without activations differ "
                    f"in {again}), so whether it reads activations cannot be told from its output")
    raise subject.fail(
        CONTRACT, where,
        f"{said} (quantize_weight ignores activations, so fvq quantize refuses --calibration), but with "
        f"activations=x [{subject.tokens}, {subject.input_size}] it returned {fmt_shapes(given)}, differing from the "
        f"call without in {differ}",
        "return True from uses_calibration() when quantize_weight reads activations with this config's settings "
        "(where an option decides it, return that test, e.g. self.activation_scheme == 'static'); else do not read "
        "them")


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names in one dict only, then names whose tensors differ in dtype, shape or any bit."""
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not _same_bits(a[k], b[k])]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


class CalibrationTests(MethodFixtures):
    """``uses_calibration()`` agrees with what ``quantize_weight`` does with ``activations`` (once per method)."""

    def test_calibration_declared(self, fvq_subject: Subject) -> None:
        check_calibration_declared(fvq_subject)
