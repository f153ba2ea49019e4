"""Contract: ``apply`` handles every input shape a model gives it — any row count, any number of leading dims, no rows.

The checks of :func:`~fastvideo_quant.testing.conformance.apply.check_apply` use 8 rows, a [2, 3, in] input and a
few more; kernels choose their path by the row count M (a GEMV path for one token, a small-M kernel up to 16 rows,
GEMM tiles of 64 or 128 with a partial last tile), so a bug on one path passes on the rows the suite happens to use.
These checks depend on ``apply``, not on the layer class: they run on the replicated layer only.
"""

from __future__ import annotations

import torch

from fastvideo_quant.testing.conformance.apply import check_shape_dtype_finite, reference, run_apply, within_tolerance
from fastvideo_quant.testing.conformance.report import rel_error
from fastvideo_quant.testing.conformance.subject import Subject, random_input

#: Row counts besides the suite's ``tokens`` (8) and the [2, 3, in] input's 6, tried in every activation dtype: 1 (a
#: decode step: GEMV paths) and 65 (past the usual small-batch limits).
TOKEN_COUNTS = (1, 65)
#: More row counts, on both sides of the limits kernels dispatch on, tried in :func:`sweep_dtypes` (every dtype on a
#: GPU, one on CPU): 2 (AWQ's M <= 4 rule); 16 and 17 (fp8's W8A16 small-M kernel and AWQ's small-M paths end at
#: M = 16); 33 and 64 (tiles of 32 and 64; AWQ's M <= 64 rule, fp8's block-scale W8A16 path ends at 64); 128, 129 and 257 (AWQ's
#: M <= 128 rule, fp8's untabled Triton GEMM ends at 128; tiles of 128: one whole, one and a partial, two and a
#: partial).
SWEEP_TOKEN_COUNTS = (2, 16, 17, 33, 64, 128, 129, 257)
#: The leading dims of the 4-D input: a video model's [batch, frames, tokens per frame] (distinct sizes, so a merged
#: or swapped dim shows in the output's shape).
LEADING_4D = (2, 3, 4)
#: Inputs with no rows, as the layer's forward gets them: [0, in] and [2, 0, in] (an empty batch, a sequence-parallel
#: shard or a chunk without tokens).
EMPTY_LEADING = ((0,), (2, 0))
#: How far the bias's fitted multiple may be from 1 before a row count's output reads as a bias bug (as in
#: ``check_apply``'s own bias check).
BIAS_SLACK = 0.25


def check_input_shapes(subject: Subject, layer, weight: torch.Tensor, kind: str, dtype: torch.dtype,
                       where: str) -> None:
    """Row counts (:data:`TOKEN_COUNTS`), a 4-D input and inputs with no rows, on a processed ``layer`` whose
    de-quantized weight is ``weight``."""
    _check_token_counts(subject, layer, weight, kind, dtype, where)
    _check_4d(subject, layer, weight.shape[0], kind, dtype, where)
    _check_zero_rows(subject, layer, weight.shape[0], dtype, where)


def sweep_dtypes(subject: Subject) -> tuple[torch.dtype, ...]:
    """The activation dtypes :data:`SWEEP_TOKEN_COUNTS` are tried in. On a GPU, every runnable dtype: kernels dispatch
    on the dtype as well as the row count (AWQ's and fp8's small-M kernels have float16 and bfloat16 variants), and
    the sweep takes milliseconds there. On CPU, one: bfloat16 where it runs (a video model's dtype), else the subject's
    main dtype; the sweep's ~650 rows take seconds in a kernel interpreted on CPU (Triton), three times that in every
    dtype, and CPU paths do not dispatch on the dtype."""
    if subject.device().type == "cuda":
        return subject.runnable_act_dtypes()
    return (torch.bfloat16 if torch.bfloat16 in subject.runnable_act_dtypes() else subject.main_dtype(),)


def _check_token_counts(subject: Subject, layer, weight: torch.Tensor, kind: str, dtype: torch.dtype,
                        where: str) -> None:
    """``apply`` on each of :data:`TOKEN_COUNTS` rows, and :data:`SWEEP_TOKEN_COUNTS` in :func:`sweep_dtypes`: the
    shape, dtype and accuracy of the ``tokens``-row check, against the float32 reference with the bias (an output
    without its bias is ~70% off with the suite's N(0, 1) biases), and the bias there once where a loose tolerance
    would let a dropped one pass."""
    counts = TOKEN_COUNTS + (SWEEP_TOKEN_COUNTS if dtype in sweep_dtypes(subject) else ())
    missed: dict[int, str] = {}
    for rows in counts:
        x = random_input(subject, (rows, subject.input_size), dtype, kind, "rows", rows)
        out = run_apply(subject, layer, x, layer.bias, kind, where)
        check_shape_dtype_finite(subject, out, x, weight.shape[0], where)
        problem = _row_count_problem(subject, out, x, weight, layer.bias)
        if problem:
            missed[rows] = problem
    if not missed:
        return
    rows, problem = next(iter(missed.items()))  # (the first in the order tried: 1 and 65 first)
    passed = [r for r in sorted(counts) if r not in missed]
    raise subject.fail(
        "apply: token count", where,
        f"with {rows} input rows (the {subject.tokens}-row input is within tolerance), against x.float() @ "
        f"dequantize_weight(layer).T + bias: {problem}; off at {sorted(missed)} rows, right at {passed} (kernels "
        "dispatch on the row count: each range takes its own path)",
        "every row count must take a correct path: check the kernel chosen for this many rows (a single-token GEMV "
        "path, a large-batch GEMM path, a small-M kernel, the last partial tile) for a missing bias or scale, or "
        "rows it leaves unwritten")


def _row_count_problem(subject: Subject, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor) -> str | None:
    """What ``out`` misses against the reference with ``bias`` (with the bias's multiple in the output when the
    output is right but for the bias), or None."""
    ref = reference(x, weight, bias)
    b = bias.detach().float().cpu().expand_as(ref)
    k = ((out.float().cpu() - reference(x, weight, None)) * b).sum().item() / max((b * b).sum().item(), 1e-30)
    missed = within_tolerance(subject, out, ref, dtype=x.dtype)
    if abs(k - 1.0) <= BIAS_SLACK:
        return missed
    if within_tolerance(subject, out.float().cpu() - (k - 1.0) * b, ref, dtype=x.dtype) is not None:
        return missed  # (wrong apart from the bias too: not a bias bug)
    bias_bug = (f"the output holds the bias {round(k, 2) + 0.0:.2f} times (expected once): this path drops or "  # (no -0.00)
                "repeats the bias, and is right otherwise")
    return f"{missed}; {bias_bug}" if missed else bias_bug


def _check_4d(subject: Subject, layer, out_features: int, kind: str, dtype: torch.dtype, where: str) -> None:
    """A [2, 3, 4, in] input gives [2, 3, 4, out] equal to the same rows as [24, in]: a method that restores only
    the first leading dim (``out.reshape(x.shape[0], -1, out)``) is right on 2-D and 3-D inputs."""
    x4 = random_input(subject, (*LEADING_4D, subject.input_size), dtype, kind, "4d")
    out4 = run_apply(subject, layer, x4, layer.bias, kind, where, check_shape=False)  # (its own contract, below)
    want = [*LEADING_4D, out_features]
    fix = ("flatten every leading dim (x.reshape(-1, x.shape[-1])) and restore them all on the output "
           "(out.reshape(*x.shape[:-1], out.shape[-1]))")
    if list(out4.shape) != want:
        raise subject.fail("apply: 4-D input", where,
                           f"a [B, T, S, in] input {list(x4.shape)} (a video model's [batch, frames, tokens, in]) gave "
                           f"{list(out4.shape)}, expected {want}", fix)
    check_shape_dtype_finite(subject, out4, x4, out_features, where)
    flat = run_apply(subject, layer, x4.reshape(-1, subject.input_size), layer.bias, kind, where)
    err = rel_error(out4.reshape(flat.shape), flat)
    if err > 1e-3:
        raise subject.fail("apply: 4-D input", where,
                           f"a [B, T, S, in] input {list(x4.shape)} differs from the same rows as "
                           f"[{flat.shape[0]}, in] by relative error {err:.3g}", fix)


def _check_zero_rows(subject: Subject, layer, out_features: int, dtype: torch.dtype, where: str) -> None:
    """The layer's forward (what a model calls) on [0, in] and [2, 0, in] returns an empty output of the input's
    leading dims and dtype. The layers pass such an input on to ``apply`` (``LinearBase._run_method`` has no
    empty-input branch), so ``apply`` must handle M = 0 itself: a kernel launched on no rows raises (an empty grid)
    or reads memory it does not own."""
    for leading in EMPTY_LEADING:
        x = torch.empty(*leading, subject.input_size, dtype=dtype, device=subject.device())
        want = [*leading, out_features]
        fix = (f"return an empty output before any kernel when x has no rows (if x.numel() == 0: return "
               f"x.new_empty(*x.shape[:-1], {out_features})); the layer passes such inputs to apply as they are")
        try:
            out = layer(x)[0]
        except Exception as exc:
            raise subject.fail("apply: zero rows", where,
                               f"the layer's forward on an input {list(x.shape)} {dtype} (no rows: an empty batch) "
                               f"raised {type(exc).__name__}: {exc}", fix) from exc
        if list(out.shape) != want or out.dtype != dtype:
            raise subject.fail("apply: zero rows", where,
                               f"the layer's forward on an input {list(x.shape)} {dtype} (no rows) returned "
                               f"{list(out.shape)} {out.dtype}, expected {want} {dtype}", fix)
