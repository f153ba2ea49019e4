"""Contract: ``apply`` after ``process_weights_after_loading`` computes ``x @ W.T + bias`` in the input's dtype.

The reference is float32 math on ``dequantize_weight`` (the method's own weights),
so the error measured is the method's kernel error, bounded by its ``tolerance``.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.errors import NotProcessedError
from fastvideo_quant.layers.base import apply_return_problem
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.loading import dequantized
from fastvideo_quant.testing.conformance.report import ConformanceFailure, max_abs_diff, rel_error, scale_bias, sqnr_db
from fastvideo_quant.testing.conformance.subject import (
    LAYER_KINDS,
    LOOSE_BAR_FLOOR,
    LOOSE_TOLERANCE_FACTOR,
    Subject,
    random_input,
)

ALL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: The layer class on which test_apply also checks how apply treats its caller (the output kept over a second call, a
#: non-contiguous input, other row counts, a 4-D input, no rows, grad mode), in every dtype: these depend on apply,
#: not on the layer class, and the extra calls are slow where a kernel runs interpreted on CPU (Triton).
CALLER_KIND = "replicated"


def run_apply(subject: Subject, layer, x: torch.Tensor, bias, kind: str, where: str, *,
              check_shape: bool = True) -> torch.Tensor:
    """``apply`` on its own copy of ``x``: a method that modifies its input in place fails
    ``[contract: apply: input unchanged]`` (:func:`check_apply`), not every check that reuses an input as something
    else (a serialization, deepcopy or state_dict difference). An output whose shape is not ``x.shape[:-1]`` + the
    layer's output size on this rank is ``[contract: apply: output shape]`` here, for every check that compares it
    (a comparison would fail inside the suite, on the sizes); ``check_shape=False`` for a check that says more about
    a wrong shape itself (the 4-D input's)."""
    out = call_apply(subject, layer, x.clone(), bias, where)
    rows = getattr(layer, "_fvq_out_features", None)  # (this rank's, which the layer records at create_weights)
    if rows is not None and check_shape:
        check_output_shape(subject, out, x, rows, where)
    return out


def call_apply(subject: Subject, layer, x: torch.Tensor, bias, where: str) -> torch.Tensor:
    """``apply`` on ``x`` itself; a raise is a failure naming the input, and so is a result that is not one tensor
    (:func:`one_tensor`) and an ``x`` modified in place (:func:`check_input_unchanged`: every call the suite makes,
    so that a method modifying only large, 3-D or bias-less inputs is caught as such)."""
    before = x.clone()
    try:
        out = layer.quant_method.apply(layer, x, bias)
    except Exception as exc:
        raise subject.fail("apply", where, f"apply on input {list(x.shape)} {x.dtype} raised "
                           f"{type(exc).__name__}: {exc}",
                           "apply must run after process_weights_after_loading on every layer class and "
                           "declared activation dtype (or drop the dtype from get_supported_act_dtypes / mark it "
                           "with cpu_act_dtypes)") from exc
    check_input_unchanged(subject, x, before, where)
    return one_tensor(subject, out, x, where)


#: The contract of an ``apply`` returning anything but one tensor (the layers' PluginError names it too).
RETURNS_ONE_TENSOR = "apply: returns one tensor"
#: The contract of an ``apply`` output that is not ``x.shape[:-1]`` + the layer's output size on this rank.
OUTPUT_SHAPE = "apply: output shape"
#: The contract of an ``apply`` that modifies its input in place.
INPUT_UNCHANGED = "apply: input unchanged"


def one_tensor(subject: Subject, out: object, x: torch.Tensor, where: str) -> torch.Tensor:
    """``out``, what ``apply`` returned for ``x``, when it is one tensor; else ``[contract: apply: returns one
    tensor]`` saying what it was (every check comparing outputs would otherwise fail inside the suite)."""
    problem = apply_return_problem(out)
    if problem is None:
        return out
    found, fix = problem
    raise subject.fail(RETURNS_ONE_TENSOR, where, f"apply on input {list(x.shape)} {x.dtype} returned {found}; "
                       "apply must return one tensor, the layer's output", fix)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x.float() @ weight.T + bias`` in float32 on CPU."""
    out = x.detach().float().cpu() @ weight.T
    return out + bias.detach().float().cpu() if bias is not None else out


def within_tolerance(subject: Subject, out: torch.Tensor, ref: torch.Tensor, tol=None, *,
                     dtype: torch.dtype) -> str | None:
    """None when ``out`` meets the config's tolerance (``tol``, else the subject's) for the activation dtype ``dtype``
    (the input's: never read from ``out``, which a wrong path may return in another dtype) against ``ref``, else what
    it missed."""
    whole = subject.tolerance() if tol is None else tol
    tol, name = whole.for_dtype(dtype), tolerance_name(whole, dtype)
    if tuple(out.shape) != tuple(ref.shape):  # (a path no shape check saw: say so, not a RuntimeError of the sizes)
        return f"output shape {list(out.shape)} against the reference's {list(ref.shape)}"
    err, sqnr = rel_error(out, ref), sqnr_db(out, ref)
    if tol.max_rel_error is not None and not err <= tol.max_rel_error:
        missed = f"relative error {err:.3g} > {name}.max_rel_error {tol.max_rel_error} (SQNR {sqnr:.1f} dB)"
    elif tol.min_sqnr_db is not None and not sqnr >= tol.min_sqnr_db:
        missed = f"SQNR {sqnr:.1f} dB < {name}.min_sqnr_db {tol.min_sqnr_db} (relative error {err:.3g})"
    else:
        return None
    return missed + _narrower_note(whole, dtype)


def _narrower_note(tol, dtype: torch.dtype) -> str:
    """For a miss of a bound set for ``dtype``'s own rounding: the usual causes (a narrower compute dtype; TF32, which
    torch's float32 matmul precision setting turns on)."""
    if dtype not in tol.dtypes:
        return ""
    note = (f" (a bound set for {dtype}'s own rounding: an apply that computes {dtype} inputs in a narrower dtype, "
            "bfloat16 or float16, misses it")
    if dtype == torch.float32 and torch.cuda.is_available() and (
            torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32):
        note += (f"; here torch.get_float32_matmul_precision() is {torch.get_float32_matmul_precision()!r} (allow_tf32 "
                 f"{torch.backends.cuda.matmul.allow_tf32}), so float32 matmuls on the GPU run in TF32 (~1e-3): run the "
                 "suite at 'highest'")
    return note + ")"


def tolerance_name(tol, dtype: torch.dtype) -> str:
    """How messages name the bound ``dtype`` is held to: ``tolerance``, or ``tolerance.dtypes[torch.float32]``."""
    return f"tolerance.dtypes[{dtype}]" if dtype in tol.dtypes else "tolerance"


def skip_unrunnable_dtype(subject: Subject, dtype: torch.dtype) -> None:
    if dtype not in subject.declared_act_dtypes():
        pytest.skip(f"method {subject.method!r} does not declare activation dtype {dtype}")
    if dtype not in subject.runnable_act_dtypes():
        pytest.skip(f"method {subject.method!r} cannot run activation dtype {dtype} on CPU (cpu_act_dtypes)")


def check_apply(subject: Subject, kind: str, dtype: torch.dtype) -> None:
    """Shape, dtype, finiteness, bias applied once, 2-D = 3-D, and accuracy against the float32 reference; on the
    :data:`CALLER_KIND` layer also how apply treats its caller, and other input shapes (:mod:`.input_shapes`)."""
    skip_unrunnable_dtype(subject, dtype)
    where = subject.describe(kind, bias=True, dtype=dtype)
    ckpt = ck.make_checkpoint(subject, kind)
    layer = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind)
    out = call_apply(subject, layer, x.clone(), layer.bias, where)
    if kind == CALLER_KIND:
        _check_output_kept(subject, layer, out, kind, dtype, where)
    weight = dequantized(subject, layer, kind)
    check_shape_dtype_finite(subject, out, x, weight.shape[0], where)
    ref = reference(x, weight, layer.bias)
    _check_bias_once(subject, layer, x, out, ref, kind, where)
    x3, out3 = _check_3d(subject, layer, out, kind, dtype, where)
    missed = within_tolerance(subject, out, ref, dtype=x.dtype)
    if missed:
        raise subject.fail("apply: accuracy", where,
                           f"against x.float() @ dequantize_weight(layer).T + bias: {missed}{_unresponsive(out, x)}"
                           f"{ck.calibration_spread_note(subject, ckpt)}",
                           "fix the kernel, or make dequantize_weight return exactly the weights apply uses; "
                           "loosen the config's tolerance only to what you measured")
    _check_gain(subject, out, ref, layer.bias, where)
    if kind == CALLER_KIND:  # (after the accuracy check: its failure must not read as a strided-input one)
        _check_non_contiguous(subject, layer, x3, out3, kind, where)
        from fastvideo_quant.testing.conformance.input_shapes import check_input_shapes  # (it imports this module)

        check_input_shapes(subject, layer, weight, kind, dtype, where)
        _check_created_frozen(subject, layer, where)
        _check_grad_mode(subject, layer, x, ref, kind, where)
        _check_trainable_parameters(subject, layer, x, where)


def _check_grad_mode(subject: Subject, layer, x: torch.Tensor, ref: torch.Tensor, kind: str, where: str) -> None:
    """``apply`` in grad mode on an input that requires grad (trainable modules in front of the layer, a LoRA
    fine-tune of the rest of the model): the forward runs and is within tolerance (no backward is asked for)."""
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = one_tensor(subject, layer.quant_method.apply(layer, xg, layer.bias), xg, where)
        check_input_unchanged(subject, xg.detach(), x, where)
    except ConformanceFailure:
        raise
    except Exception as exc:
        raise subject.fail("apply: grad mode", where,
                           f"apply on an input {list(x.shape)} {x.dtype} that requires grad, in grad mode (a model "
                           f"with trainable modules in front of the layer) raised {type(exc).__name__}: {exc}",
                           "use ops autograd can record in apply (no out= arguments, no in-place writes into a "
                           "tensor that requires grad), or run the kernel under torch.no_grad() and return a tensor "
                           "that does not require grad") from exc
    check_shape_dtype_finite(subject, out.detach(), x, ref.shape[-1], where)
    missed = within_tolerance(subject, out.detach(), ref, dtype=x.dtype)
    if missed:
        raise subject.fail("apply: grad mode", where,
                           f"on an input that requires grad, in grad mode (the same input without grad is within "
                           f"tolerance), against x.float() @ dequantize_weight(layer).T + bias: {missed}",
                           "take the same path whether or not the input requires grad")


def _check_created_frozen(subject: Subject, layer, where: str) -> None:
    """Every parameter of a loaded, processed layer has ``requires_grad=False``, as the layers create theirs (vLLM's and
    FastVideo's weights too): a fine-tune that builds its optimizer from the parameters that require grad, meaning
    its adapters, would otherwise also train this layer's codes or scales, and every forward outside ``no_grad`` would
    record a graph. torch's ``Parameter(t)`` defaults to ``requires_grad=True``."""
    on = [n for n, p in layer.named_parameters() if p.requires_grad]
    if on:
        raise subject.fail("processing: parameters frozen", where,
                           f"after loading and process_weights_after_loading, the layer's parameters {on} require "
                           "grad; the layers create every parameter frozen, so an optimizer given the parameters that "
                           "require grad (a LoRA fine-tune's) would update them too",
                           "create them with requires_grad=False — torch.nn.Parameter(t, requires_grad=False), whose "
                           "default is True — in create_weights and in process_weights_after_loading alike")


def _check_trainable_parameters(subject: Subject, layer, x: torch.Tensor, where: str) -> None:
    """The layer's float parameters other than the bias, turned on for training (``model.requires_grad_(True)`` does
    that to every one): in grad mode each either gets a gradient through ``apply`` or ``apply`` refuses it, naming it.
    A ``.grad`` left ``None`` is a parameter an optimizer skips without a word (fp8's float8 weight did so: torch
    lets a float8 tensor require grad). At one row and at the suite's row count: kernels dispatch on M, and a path
    that reads ``weight.data`` at small M only gave a gradient on one path and not the other."""
    params = [(n, p) for n, p in layer.named_parameters() if n != "bias" and p.is_floating_point()]
    if not params:
        return
    for rows in sorted({1, x.shape[0]}):
        if _trainable_parameters_at(subject, layer, x[:rows], params, where):
            return  # refused by name: the method refuses them on every path it checks alike


def _trainable_parameters_at(subject: Subject, layer, x: torch.Tensor, params: list, where: str) -> bool:
    """:func:`_check_trainable_parameters` at ``x``'s row count; True where ``apply`` refused them, naming one."""
    before = [p.requires_grad for _, p in params]
    names = [n for n, _ in params]
    on = f"with the layer's parameters {names} requiring grad (model.requires_grad_(True)), apply on {x.shape[0]} row(s)"
    try:
        for _, p in params:
            p.requires_grad_(True)
        xg = x.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                out = layer.quant_method.apply(layer, xg, layer.bias)
        except Exception as exc:
            if any(repr(n) in str(exc) or f".{n}" in str(exc) for n in names):
                return True  # refused, and the message says which
            raise subject.fail("apply: parameters that require grad", where,
                               f"{on} in grad mode raised {type(exc).__name__} without naming any of them: {exc}",
                               "name the parameter that may not require grad in the error (e.g. raise through "
                               "fastvideo_quant.quantization.base.check_frozen_storage)") from exc
        tensors = [p for _, p in params]
        try:
            grads = (torch.autograd.grad(out.float().sum(), tensors, allow_unused=True)
                     if isinstance(out, torch.Tensor) and out.requires_grad else [None] * len(tensors))
        except RuntimeError as exc:
            raise subject.fail("apply: parameters that require grad", where,
                               f"{on} in grad mode ran, but its output cannot be differentiated: "
                               f"{type(exc).__name__}: {exc}",
                               "refuse a parameter that requires grad in apply, naming it (a quantized layer's codes "
                               "and scales: fastvideo_quant.quantization.base.check_frozen_storage does this), or give "
                               "the op a derivative (torch.library.register_autograd, an autograd.Function)") from exc
    finally:
        for (_, p), was in zip(params, before, strict=True):
            p.requires_grad_(was)
    missing = [n for n, g in zip(names, grads, strict=True) if g is None]
    if missing:
        raise subject.fail("apply: parameters that require grad", where,
                           f"{on} in grad mode ran, but its output gives {missing} no gradient: their .grad stays "
                           "None, and an optimizer given model.parameters() skips them without a word",
                           "refuse a parameter that requires grad in apply, naming it (a quantized layer's codes and "
                           "scales: fastvideo_quant.quantization.base.check_frozen_storage does this), or keep it in "
                           "the autograd graph so that it trains")
    return False


def _check_output_kept(subject: Subject, layer, out: torch.Tensor, kind: str, dtype: torch.dtype, where: str) -> None:
    """The tensor ``apply`` returned is the caller's: a second call (another input) leaves it as it was."""
    kept = out.clone()
    other = random_input(subject, tuple(out.shape[:-1]) + (subject.input_size,), dtype, kind, "second call")
    run_apply(subject, layer, other, layer.bias, kind, where)
    if torch.allclose(out, kept, rtol=0, atol=0, equal_nan=True):  # (NaN outputs fail the finite check)
        return
    raise subject.fail("apply: output kept", where,
                       f"the output of one apply call changed when apply was called again with another input (max abs "
                       f"diff {max_abs_diff(out, kept):.3g}): apply returns a buffer it writes again on every call",
                       "return a new tensor from each call (allocate the output per call, or return buf.clone()): the "
                       "model keeps the output while it runs the next layers, which may be this one again")


def check_input_unchanged(subject: Subject, x: torch.Tensor, original: torch.Tensor, where: str) -> None:
    """``apply`` left its input as it was: the caller still uses ``x`` (a residual connection, another layer)."""
    if torch.equal(x, original):
        return
    changed = x.ne(original) & ~(x.isnan() & original.isnan())
    if not bool(changed.any()):
        return  # (NaN where NaN was: equal, though torch.equal says not)
    raise subject.fail(INPUT_UNCHANGED, where,
                       f"apply modified its input x {list(x.shape)} {x.dtype} in place: {int(changed.sum())} of "
                       f"{x.numel()} values changed (max abs diff {max_abs_diff(x, original):.3g})",
                       "compute on a new tensor (x / s, x.to(...), not x.div_(s) or x.copy_(...)): the model still "
                       "reads x after the layer (residual connections, the other projections of the same input)")


def check_output_shape(subject: Subject, out: torch.Tensor, x: torch.Tensor, rows: int, where: str) -> None:
    """``out``, apply's output for ``x``, is ``x.shape[:-1] + (rows,)``."""
    want = (*x.shape[:-1], rows)
    if tuple(out.shape) != want:
        raise subject.fail(OUTPUT_SHAPE, where, f"input {list(x.shape)} gave {list(out.shape)}, "
                           f"expected {list(want)}", "return x.shape[:-1] + (this rank's output size,)")


def check_shape_dtype_finite(subject: Subject, out: torch.Tensor, x: torch.Tensor, rows: int, where: str) -> None:
    """``out``, apply's output for ``x``, is ``x.shape[:-1] + (rows,)`` in ``x``'s dtype, every value finite."""
    check_output_shape(subject, out, x, rows, where)
    if out.dtype != x.dtype:
        raise subject.fail("apply: output dtype", where, f"input dtype {x.dtype} gave output dtype {out.dtype}",
                           "cast the result to x.dtype (e.g. out.to(x.dtype)) before returning")
    if not torch.isfinite(out).all():
        raise subject.fail("apply: finite output", where,
                           f"{(~torch.isfinite(out)).sum().item()} of {out.numel()} outputs are NaN/Inf",
                           "check scales for zero/overflow and the accumulation dtype")


def _unresponsive(out: torch.Tensor, x: torch.Tensor) -> str:
    """A note for an accuracy failure whose output cannot be the product: all zeros, or every row the same for
    inputs whose rows differ (the output does not depend on x); else ``""``."""
    if not out.any():
        return ("; apply returned all zeros (the reference is not): the product never reached the output (an output "
                "allocated with torch.zeros / torch.empty and never written, a kernel writing another buffer)")
    rows, xs = out.reshape(-1, out.shape[-1]), x.reshape(-1, x.shape[-1])
    if rows.shape[0] > 1 and bool((rows == rows[:1]).all()) and not bool((xs == xs[:1]).all()):
        return "; every row of the output is the same though the input rows differ: the output does not depend on x"
    return ""


def _check_bias_once(subject: Subject, layer, x: torch.Tensor, out: torch.Tensor, ref: torch.Tensor, kind: str,
                     where: str) -> None:
    """``apply(x, bias) - apply(x, None)`` is the bias: fit its multiple ``k`` and require ``k ≈ 1``. The bias is
    blamed only when the output is otherwise right: ``apply(x, bias)`` itself, or ``apply(x, None)`` plus the bias
    once, is within tolerance of ``ref`` (the float32 reference with the bias); an output wrong anyway (all zeros, a
    wrong kernel) is the accuracy check's to report, not a bias bug."""
    no_bias = run_apply(subject, layer, x, None, kind, where)
    check_shape_dtype_finite(subject, no_bias, x, out.shape[-1], where)
    d = (out.float() - no_bias.float()).cpu()
    b = layer.bias.detach().float().cpu().expand_as(d)
    k = (d * b).sum().item() / max((b * b).sum().item(), 1e-30)
    if abs(k - 1.0) <= 0.25:
        return
    if (within_tolerance(subject, out, ref, dtype=x.dtype) is None
            or within_tolerance(subject, no_bias.float().cpu() + b, ref, dtype=x.dtype) is None):
        raise subject.fail("apply: bias applied once", where,
                           f"apply(x, bias) - apply(x, None) is {k:.2f} × bias (expected 1)",
                           "add the bias exactly once when it is not None (F.linear(x, w, bias) or out + bias), "
                           "and not when it is None")


def _check_3d(subject: Subject, layer, out2: torch.Tensor, kind: str, dtype: torch.dtype,
              where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A [2, 3, in] input equals the same rows as [6, in]; returns the input and its output."""
    x3 = random_input(subject, (2, 3, subject.input_size), dtype, kind, "3d")
    out3 = run_apply(subject, layer, x3, layer.bias, kind, where)
    check_shape_dtype_finite(subject, out3, x3, out2.shape[-1], where)
    flat = run_apply(subject, layer, x3.reshape(-1, subject.input_size), layer.bias, kind, where)
    err = rel_error(out3.reshape(flat.shape), flat)
    if err > 1e-3:
        raise subject.fail("apply: 3-D input", where,
                           f"a [2, 3, in] input differs from the same rows as [6, in] by relative error {err:.3g}",
                           "flatten leading dims (x.reshape(-1, x.shape[-1])) and restore them on the output")
    return x3, out3


def _check_non_contiguous(subject: Subject, layer, x3: torch.Tensor, out3: torch.Tensor, kind: str,
                          where: str) -> None:
    """The same [2, 3, in] rows as a non-contiguous view (a transposed activation, as attention's output is before
    its projection) give the same output."""
    strided = x3.transpose(0, 1).contiguous().transpose(0, 1)  # equal values, strides (in, 2 * in, 1)
    try:
        out = one_tensor(subject, layer.quant_method.apply(layer, strided, layer.bias), strided, where)
        check_input_unchanged(subject, strided, x3, where)
    except ConformanceFailure:
        raise
    except Exception as exc:
        raise subject.fail("apply: non-contiguous input", where,
                           f"apply on a non-contiguous input [2, 3, in] (strides {list(strided.stride())}, e.g. a "
                           f"transposed activation) raised {type(exc).__name__}: {exc}",
                           "use x.reshape(-1, x.shape[-1]) (not x.view), or x.contiguous() before a kernel that "
                           "needs it") from exc
    if out.shape != out3.shape:
        missed = f"gave {list(out.shape)}, the same values contiguous {list(out3.shape)}"
    elif out.dtype != x3.dtype:
        missed = f"gave dtype {out.dtype}, the input's is {x3.dtype}"
    else:  # (not bit-equal: a strided input may take another accumulation order, as F.linear's does in bfloat16)
        missed = within_tolerance(subject, out, reference(x3, dequantized(subject, layer, kind), layer.bias),
                                  dtype=x3.dtype)
    if missed:
        raise subject.fail("apply: non-contiguous input", where,
                           f"a non-contiguous [2, 3, in] input (strides {list(strided.stride())}; contiguous it is "
                           f"within tolerance), against x.float() @ dequantize_weight(layer).T + bias: {missed}",
                           "do not assume x is contiguous: reshape (not view) and call x.contiguous() before a kernel "
                           "that reads raw memory")


def check_apply_before_processing(subject: Subject, kind: str) -> None:
    """``apply`` on a loaded layer before ``process_weights_after_loading``: a ``NotProcessedError`` naming the
    layer, or (for methods whose processing changes nothing ``apply`` reads) the same result as after it."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    ckpt = ck.make_checkpoint(subject, kind)
    layer = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype, process=False)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "unprocessed")
    try:
        given = x.clone()
        early = one_tensor(subject, layer.quant_method.apply(layer, given, layer.bias), x, where)
        check_input_unchanged(subject, given, x, where)
    except ConformanceFailure:
        raise
    except NotProcessedError as exc:
        if layer.prefix not in str(exc):
            raise subject.fail("apply before processing", where, f"the NotProcessedError does not name the layer "
                               f"{layer.prefix!r}: {exc}", "put the layer's prefix in the message") from exc
        return
    except Exception as exc:
        raise subject.fail("apply before processing", where, f"raised {type(exc).__name__}: {exc}",
                           "raise fastvideo_quant.errors.NotProcessedError naming the layer (and saying to call "
                           "process_weights_after_loading) when apply runs on an unprocessed layer") from exc
    ck.process_weights(layer, subject, kind)
    late = run_apply(subject, layer, x, layer.bias, kind, where)
    err = rel_error(early, late)
    if not err <= 1e-3:  # (NaN from unloaded placeholder scales fails too)
        raise subject.fail("apply before processing", where,
                           f"returned a result that differs from the processed layer's by relative error {err:.3g}",
                           "raise fastvideo_quant.errors.NotProcessedError before processing instead of computing "
                           "with unprocessed tensors")


def tolerance_bound(tol) -> float | None:
    """The relative error a ``Tolerance`` allows: the tighter of ``max_rel_error`` and the error ``min_sqnr_db`` allows
    (``10 ** (-min_sqnr_db / 20)``); None when it states neither."""
    bounds = [b for b in (tol.max_rel_error, None if tol.min_sqnr_db is None else 10 ** (-tol.min_sqnr_db / 20))
              if b is not None]
    return min(bounds) if bounds else None


def _check_gain(subject: Subject, out: torch.Tensor, ref: torch.Tensor, bias: torch.Tensor | None, where: str) -> None:
    """``apply``'s output less the bias is not ``x @ dequantize_weight(layer).T`` times a constant factor more than
    ``max_gain_error`` from 1 (:func:`~.report.scale_bias`: both least-squares gains on the same side). A tolerance
    wide enough for bfloat16 rounding (4x its eps: 0.031) passes a kernel that scales its output 2-3% (a scale applied
    twice in a fused epilogue, a wrong rescale constant); rounding and dynamic activation quantization leave the gains
    within 0.001 of 1 (the built-in methods), a static scale's clipping of the rare input beyond it ~0.003 (fp8 static
    on the suite's inputs)."""
    b = 0.0 if bias is None else bias.detach().double().cpu()
    biased = scale_bias(out.detach().double().cpu() - b, ref.double() - b, subject.max_gain_error)
    if biased is None:
        return
    raise subject.fail(
        "apply: output scale", where,
        f"apply(x) - bias is x.float() @ dequantize_weight(layer).T times a gain (least squares) of {biased[0]:.4f} "
        f"(reverse {biased[1]:.4f}), more than max_gain_error {subject.max_gain_error:g} from 1 both ways, though "
        f"within tolerance {subject.tolerance()}: the kernel scales its output by a constant (a scale applied twice "
        "or not at all in a fused epilogue, a rescale constant off); rounding leaves the gains within ~0.001",
        "apply each scale exactly once, as dequantize_weight does; a method whose activation quantization clips on "
        "purpose declares max_gain_error on its suite class (its measured distance from 1 plus a margin)")


def check_tolerance_declared(subject: Subject) -> None:
    """Each bound of the config class's ``tolerance`` — the outer one for the activation dtypes it covers, each of
    ``tolerance.dtypes`` for its own — is at most :data:`LOOSE_TOLERANCE_FACTOR` times the larger of the worst relative
    error ``apply`` measures against ``x.float() @ dequantize_weight(layer).T + bias`` in those dtypes (every layer
    class, the suite's inputs) and the eps of the coarsest of them (the output's own rounding: an exact method
    measures ~0 in float32). Bounds at or below :data:`LOOSE_BAR_FLOOR` pass. The class attribute is judged: a config
    refining it per instance for a setting (AWQ's ``fp8_compute``) changes a path the suite's inputs need not take."""
    cls = subject.config_cls()
    tol = cls.tolerance
    declared = tuple(cls.get_supported_act_dtypes())
    runnable = subject.runnable_act_dtypes()
    _check_tolerance_stated(subject, cls, declared, runnable)
    groups = [("tolerance", tol, tuple(d for d in declared if d not in tol.dtypes))]
    groups += [(f"tolerance.dtypes[{d}]", t, (d,)) for d, t in tol.dtypes.items() if d in declared]
    worst: dict[torch.dtype, tuple[float, str]] = {}
    failures, unchecked = [], []
    for name, bound_tol, covered in groups:
        bound = tolerance_bound(bound_tol)
        floor = max((torch.finfo(d).eps for d in covered), default=0.0)
        if not covered or bound is None or bound <= LOOSE_BAR_FLOOR or bound <= LOOSE_TOLERANCE_FACTOR * floor:
            continue  # (within what the output dtype's rounding alone may take: nothing to measure)
        for d in covered:
            if d in runnable and d not in worst:
                worst[d] = _worst_apply_error(subject, (d,))
        measured = [worst[d] for d in covered if d in runnable]
        err, where = max(measured, default=(0.0, subject.describe("replicated", bias=True)))
        if bound <= LOOSE_TOLERANCE_FACTOR * max(err, floor):
            continue
        missing = [_short(d) for d in covered if d not in runnable]
        if missing:
            unchecked.append(f"{cls.__name__}.{name} looks loose for the activation dtypes checked here, but it covers "
                             f"{missing} too, which are not checked here")
            continue
        failures.append((name, bound_tol, covered, bound, floor, err, where))
    if not failures and unchecked:
        pytest.skip("; ".join(unchecked) + " (the suite class's act_dtypes, or cpu_act_dtypes on CPU) and may need "
                    "it: check it where every dtype the config declares runs")
    if failures:
        name, bound_tol, covered, bound, floor, err, where = failures[0]
        times = f"{bound / err:.0f}x" if err > 0 else "infinitely many times"
        passes = (f"an apply up to ~{100 * bound:.0f}% off its own dequantize_weight would pass the accuracy checks"
                  if bound < 1 else "an apply returning zeros (relative error 1) would pass the accuracy checks")
        suggest = f"Tolerance(max_rel_error={_suggested_bound(err, floor)})"
        rounding = (f"{_short(covered[0])}'s rounding" if name != "tolerance" else
                    "the coarsest declared activation dtype's rounding" if not bound_tol.dtypes else
                    "the rounding of the coarsest declared activation dtype it covers")
        if name != "tolerance":
            suggest = f"dtypes={{{covered[0]}: {suggest}}}"
        raise subject.fail(
            "apply: tolerance declared", where,
            f"apply's relative error against x.float() @ dequantize_weight(layer).T + bias is at most {err:.3g} on the "
            f"suite's inputs (every layer class, dtypes {[_short(d) for d in covered]}, {subject.tokens} rows; the "
            f"worst on this layer), but {cls.__name__}.{name} = {bound_tol} allows {bound:.3g}, {times} that (more "
            f"than {LOOSE_TOLERANCE_FACTOR:g}x, and above {LOOSE_TOLERANCE_FACTOR:g}x {rounding}, eps {floor:.3g}): "
            f"{passes}"
            + (f" (and {len(failures) - 1} more bound(s) of the tolerance as loose)" if len(failures) > 1 else ""),
            f"declare your measured error plus a margin (here about {suggest}); a setting that needs a looser bound "
            "refines it on the config instance (self.tolerance = ...), as AWQ's fp8_compute does")


def _check_tolerance_stated(subject: Subject, cls, declared: tuple[torch.dtype, ...],
                            runnable: tuple[torch.dtype, ...]) -> None:
    """``[contract: apply: tolerance declared]`` for a config class that states no ``tolerance`` (it inherits
    ``QuantizationConfig``'s ``max_rel_error=1e-2`` for every activation dtype, which no measurement chose: a float32
    path computing in bfloat16, ~2e-3 off, passes it), with the bound per dtype its measured error suggests. A class
    inheriting a plugin's declared bounds (a subclass of ``UnquantizedConfig``) states them, and so does one whose
    instances set their own (``self.tolerance = ...`` in ``from_config``), which the accuracy checks read."""
    from fastvideo_quant.quantization.base import QuantizationConfig, states_tolerance

    if states_tolerance(cls) or "tolerance" in vars(subject.checkpoint_config()):  # (or its instances set one)
        return
    measured = {d: _worst_apply_error(subject, (d,)) for d in declared if d in runnable}
    err, where = max(measured.values(), default=(0.0, subject.describe("replicated", bias=True)))

    def bound(d: torch.dtype) -> str:
        return _suggested_bound(measured[d][0], torch.finfo(d).eps)

    coarsest = max(measured, key=lambda d: torch.finfo(d).eps, default=None)
    if coarsest is None:
        suggest = "Tolerance(max_rel_error=<your measured error plus a margin>)"
    else:
        finer = [d for d in measured if d != coarsest and float(bound(d)) < float(bound(coarsest))]
        dtypes = ", ".join(f"{d}: Tolerance(max_rel_error={bound(d)})" for d in finer)
        suggest = f"Tolerance(max_rel_error={bound(coarsest)}" + (f", dtypes={{{dtypes}}})" if finer else ")")
    said = ", ".join(f"{_short(d)} {e:.3g}" for d, (e, _) in measured.items()) or "no declared dtype runs here"
    raise subject.fail(
        "apply: tolerance declared", where,
        f"{cls.__name__} states no tolerance: it inherits QuantizationConfig.tolerance = {QuantizationConfig.tolerance} "
        f"for every activation dtype, a default no measurement of this method chose, which the accuracy checks would "
        f"judge it by (a float32 path computing in bfloat16, ~2e-3 off, passes it). apply's worst relative error "
        f"against x.float() @ dequantize_weight(layer).T + bias measured here: {said}",
        f"state the bound per activation dtype on {cls.__name__}: tolerance = {suggest} (the measured error plus a "
        "margin; fastvideo_quant.quantization.Tolerance)")


def _suggested_bound(err: float, floor: float) -> str:
    """The bound the tolerance checks suggest for a measured error: a margin of 1.5x, at least ``floor`` (the eps of
    the coarsest dtype the bound covers)."""
    return f"{max(1.5 * err, floor):.2g}"


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _worst_apply_error(subject: Subject, dtypes: tuple[torch.dtype, ...] | None = None) -> tuple[float, str]:
    """The largest relative error of ``apply`` against its float32 reference over every layer class and ``dtypes``
    (every runnable activation dtype when None), on the suite's ``tokens``-row input, and the layer it was measured
    on."""
    worst, where = 0.0, subject.describe("replicated", bias=True)
    for dtype in subject.runnable_act_dtypes() if dtypes is None else dtypes:
        for kind in LAYER_KINDS:
            layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
            here = subject.describe(kind, bias=True, dtype=dtype)
            x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind)
            out = run_apply(subject, layer, x, layer.bias, kind, here)
            err = rel_error(out, reference(x, dequantized(subject, layer, kind), layer.bias))
            if err >= worst:
                worst, where = err, here
    return worst, where


class ApplyTests(MethodFixtures):
    """``apply`` on every layer class and activation dtype."""

    @pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_apply(self, fvq_runnable: Subject, kind: str, dtype: torch.dtype) -> None:
        check_apply(fvq_runnable, kind, dtype)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_apply_before_processing(self, fvq_runnable: Subject, kind: str) -> None:
        check_apply_before_processing(fvq_runnable, kind)

    def test_tolerance_declared(self, fvq_runnable: Subject) -> None:
        check_tolerance_declared(fvq_runnable)
