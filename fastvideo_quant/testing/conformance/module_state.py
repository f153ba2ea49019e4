"""Contract: after loading and processing, every tensor a layer uses is a registered parameter or buffer.

A tensor kept as a plain attribute (on the layer or on its method) is left behind by
``layer.to(device)`` / ``.cuda()`` and missing from ``state_dict``-based tooling, so a
model loaded on CPU and moved to a GPU would feed CPU tensors to its kernels.
The core promises more of a loaded, processed model (docs/guide/loading.md, "Saving,
copying and casting a loaded model"): ``copy.deepcopy`` gives an independent copy with
identical outputs, and ``load_state_dict`` between two such models restores identical
outputs; both hold only if ``apply`` reads nothing but the layer's persistent tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import run_apply
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import fmt_shapes, max_abs_diff
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject, random_input

#: The fix for a layer whose apply reads something other than its own registered, persistent tensors.
_OWN_TENSORS_FIX = ("keep every tensor apply reads as a registered parameter or persistent buffer of the layer "
                    "(layer.register_buffer(name, tensor)), not a plain attribute, a closure over the layer's tensors "
                    "or a cache outside the layer")


def _stray_tensors(obj: object, owner: str) -> list[str]:
    return [f"{owner}.{name}" for name, value in vars(obj).items() if isinstance(value, torch.Tensor)]


def check_tensors_registered(subject: Subject, kind: str) -> None:
    """No plain tensor attributes on the layer or its method, no float copy of the weight kept beside the kernel's
    tensors (:func:`check_memory`); ``layer.to("meta")`` moves every tensor."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
    stray = _stray_tensors(layer, "layer") + _stray_tensors(layer.quant_method, "quant_method")
    if stray:
        raise subject.fail("module state: tensors registered", where,
                           f"after process_weights_after_loading these tensors are plain attributes: {stray}",
                           "register them with layer.register_buffer(name, tensor) (or as "
                           "parameters), so layer.to(device) moves them; keep no tensors on the method object")
    check_memory(subject, layer, kind, where)
    layer.to("meta")
    left = [n for n, t in list(layer.named_parameters()) + list(layer.named_buffers()) if t.device.type != "meta"]
    if left:
        raise subject.fail("module state: tensors registered", where, f"layer.to('meta') left {left} behind",
                           "do not override _apply/to; register tensors as parameters or buffers")


def check_memory(subject: Subject, layer: torch.nn.Module, kind: str, where: str) -> None:
    """A processed layer holding more bytes than the float weight it replaces (``[rows, in]`` in the layer's
    ``params_dtype``, what the unquantized layer holds) keeps no float copy of that weight next to the kernel's tensors:
    a 16-bit or wider float tensor with the weight's elements in any layout (:func:`_weight_shaped`: its shape, the
    transpose, padded, flat or blocked; for a square weight, with values that follow it) beside other tensors of at
    least one bit per weight is a checkpoint-format or float weight left behind. Other extra bytes (padding, a
    rotation, a low-rank branch, a workspace; a method keeping the float weight with a few scales) pass."""
    dtype = getattr(layer, "params_dtype", None) or subject.main_dtype()
    rows = sum(getattr(layer, "output_partition_sizes", None) or [subject.output_rows(kind)])
    cols = getattr(layer, "input_size_per_partition", subject.input_size)
    budget = rows * cols * torch.empty((), dtype=dtype).element_size()
    tensors = {n: t for n, t in itertools.chain(layer.named_parameters(recurse=False), layer.named_buffers(recurse=False))
               if n != "bias" and t is not None}
    size = {n: t.numel() * t.element_size() for n, t in tensors.items()}
    held = sum(size.values())
    copies = {n: t for n, t in tensors.items() if _weight_shaped(t, rows, cols)}
    if held <= budget or not copies:
        return
    if rows == cols:  # a square weight: an [in, in] rotation has its shape too; a copy also has its values
        copies = _like_the_weight(subject, layer, kind, copies)
    if not copies or 8 * (held - max(size[n] for n in copies)) < rows * cols:
        return
    others = {n: t for n, t in tensors.items() if n not in copies}
    found = " and ".join(fmt_shapes({n: t}) for n, t in copies.items())
    raise subject.fail("module state: memory", where,
                       f"after process_weights_after_loading the layer holds {held} bytes of parameters and buffers "
                       f"besides the bias, {held / budget:.2f}x the {budget} bytes of the float weight it replaces "
                       f"([{rows}, {cols}] {str(dtype).replace('torch.', '')}), and {found} "
                       f"{'holds' if len(copies) == 1 else 'hold'} the float weight's {rows * cols} elements (its "
                       f"shape, the transpose, or a flat or blocked layout of it): a float copy of the weight kept "
                       f"next to the kernel's tensors"
                       + (f" ({fmt_shapes(others)})" if others else ""),
                       "in process_weights_after_loading, replace the checkpoint-format tensors with the kernel's "
                       "(del layer.weight, or register the new tensor under the old name) instead of keeping both")


def _like_the_weight(subject: Subject, layer: torch.nn.Module, kind: str,
                     candidates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``[n, n]`` candidates of a square layer whose values follow its weight (``dequantize_weight``) or the
    transpose (``|cosine| >= 0.5``); a rotation of the inputs (a Hadamard or random orthogonal matrix) is ~0."""
    from fastvideo_quant.testing.conformance.loading import dequantized

    w = dequantized(subject, layer, kind).double()
    out = {}
    for name, t in candidates.items():
        if t.shape != w.shape:  # (flat or tiled: not square, so not a rotation)
            out[name] = t
            continue
        c = t.detach().double().cpu()
        cos = max(abs(torch.nn.functional.cosine_similarity(c.flatten(), v.flatten(), dim=0).item())
                  for v in (w, w.t()))
        if cos >= 0.5:
            out[name] = t
    return out


def _weight_shaped(t: torch.Tensor, rows: int, cols: int) -> bool:
    """Whether ``t`` could be a float copy of a ``[rows, cols]`` weight: a 16-bit or wider float tensor of that shape
    or its transpose, one of the two dims possibly padded, or of exactly ``rows * cols`` elements in another layout
    (flat, ``[rows / 16, 16, cols]`` tiles for a kernel). A square ``[cols, cols]`` or ``[rows, rows]`` tensor of a
    non-square weight is a rotation of the inputs or outputs (QuaRot, a Hadamard transform), not a copy."""
    if not t.is_floating_point() or t.element_size() < 2:
        return False
    if t.dim() == 2:
        a, b = t.shape
        if a == b and a in (rows, cols) and rows != cols:
            return False
        if any(x >= rows and y >= cols and (x == rows or y == cols) for x, y in ((a, b), (b, a))):
            return True
    return t.numel() == rows * cols


def _loaded(subject: Subject, kind: str, seed: int | None = None) -> torch.nn.Module:
    """A processed ``kind`` layer (with bias) loaded from the subject's checkpoint, or from one seeded by ``seed``."""
    source = subject if seed is None else dataclasses.replace(subject, seed=seed)
    return ck.build_loaded(subject, kind, ck.make_checkpoint(source, kind), bias=True, dtype=subject.main_dtype())


def _output(subject: Subject, layer: torch.nn.Module, x: torch.Tensor, kind: str, where: str, *,
            bias: bool = True) -> torch.Tensor:
    with torch.no_grad():
        return run_apply(subject, layer, x, layer.bias if bias else None, kind, where)


def _zero_tensors(layer: torch.nn.Module) -> None:
    """Zero, in place, every floating-point and integer parameter and buffer of ``layer``."""
    with torch.no_grad():
        for t in itertools.chain(layer.parameters(), layer.buffers()):
            if t.dtype != torch.bool and not t.is_complex():
                t.zero_()


def _shared(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of ``b``'s tensors whose storage is one of ``a``'s."""
    def storages(m: torch.nn.Module) -> dict[str, int]:
        return {n: t.untyped_storage().data_ptr() for n, t in itertools.chain(m.named_parameters(), m.named_buffers())}

    theirs = set(storages(a).values())
    return [n for n, ptr in storages(b).items() if ptr in theirs]


def check_deepcopy(subject: Subject, kind: str) -> None:
    """``copy.deepcopy`` of a processed layer gives bit-identical output and shares no tensor with the original."""
    where = subject.describe(kind, bias=True, dtype=subject.main_dtype())
    layer = _loaded(subject, kind)
    x = random_input(subject, (subject.tokens, subject.input_size), subject.main_dtype(), kind, "deepcopy")
    want, unbiased = _output(subject, layer, x, kind, where), _output(subject, layer, x, kind, where, bias=False)
    try:
        twin = copy.deepcopy(layer)
    except Exception as exc:
        raise subject.fail("module state: deepcopy", where, f"copy.deepcopy(layer) raised {type(exc).__name__}: {exc}",
                           _OWN_TENSORS_FIX) from exc
    got = _output(subject, twin, x, kind, where)
    if not torch.equal(got, want):
        raise subject.fail("module state: deepcopy", where, f"the copy's output differs from the original's by "
                           f"{max_abs_diff(got, want):.3g} (max abs)", _OWN_TENSORS_FIX)
    _zero_tensors(twin)
    after = _output(subject, layer, x, kind, where)
    if not torch.equal(after, want):
        raise subject.fail("module state: deepcopy", where, f"zeroing the copy's parameters and buffers changed the "
                           f"original's output by {max_abs_diff(after, want):.3g} (max abs): they share tensors "
                           f"(storage shared: {_shared(layer, twin) or 'none registered'})",
                           _OWN_TENSORS_FIX)
    if torch.equal(_output(subject, twin, x, kind, where, bias=False), unbiased):
        raise subject.fail("module state: deepcopy", where, "with every parameter and buffer of the copy zeroed, the "
                           "copy's output is still the original's: its apply reads tensors that are not the copy's",
                           _OWN_TENSORS_FIX)


def _unsaved(a: torch.nn.Module, b: torch.nn.Module, keys: set[str]) -> list[str]:
    """``b``'s tensors that still differ from ``a``'s after a state_dict round trip, marked when not in the state_dict."""
    mine = dict(itertools.chain(b.named_parameters(), b.named_buffers()))
    theirs = dict(itertools.chain(a.named_parameters(), a.named_buffers()))
    return [name + ("" if name in keys else " (a non-persistent buffer: not in the state_dict)")
            for name, t in mine.items() if name in theirs and not torch.equal(t, theirs[name])]


def check_state_dict_round_trip(subject: Subject, kind: str) -> None:
    """``b.load_state_dict(a.state_dict())`` between two processed layers of one config gives ``b`` ``a``'s output."""
    where = subject.describe(kind, bias=True, dtype=subject.main_dtype())
    a, b = _loaded(subject, kind), _loaded(subject, kind, seed=subject.seed + 1)
    x = random_input(subject, (subject.tokens, subject.input_size), subject.main_dtype(), kind, "state_dict")
    want = _output(subject, a, x, kind, where)
    state = a.state_dict()
    try:
        b.load_state_dict(state)
    except Exception as exc:
        raise subject.fail("module state: state_dict", where, f"b.load_state_dict(a.state_dict()) between two "
                           f"processed layers of one config raised {type(exc).__name__}: {exc}",
                           "the state_dict of a processed layer must load into another processed layer of the same "
                           "config: register every tensor apply reads with the same name and shape") from exc
    got = _output(subject, b, x, kind, where)
    if not torch.equal(got, want):
        differ = _unsaved(a, b, set(state))
        found = (f"these tensors still differ: {differ}" if differ else "every registered tensor equals a's, so apply "
                 "reads a tensor outside them")
        raise subject.fail("module state: state_dict", where, f"after b.load_state_dict(a.state_dict()), b's output "
                           f"differs from a's by {max_abs_diff(got, want):.3g} (max abs); {found}",
                           "register every tensor apply reads as a parameter or a persistent buffer "
                           "(register_buffer(name, tensor), not persistent=False), so the state_dict carries it")


class ModuleStateTests(MethodFixtures):
    """Every tensor of a processed layer moves, copies and round-trips through state_dict with the layer."""

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_tensors_registered(self, fvq_runnable: Subject, kind: str) -> None:
        check_tensors_registered(fvq_runnable, kind)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_deepcopy(self, fvq_runnable: Subject, kind: str) -> None:
        check_deepcopy(fvq_runnable, kind)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_state_dict_round_trip(self, fvq_runnable: Subject, kind: str) -> None:
        check_state_dict_round_trip(fvq_runnable, kind)
