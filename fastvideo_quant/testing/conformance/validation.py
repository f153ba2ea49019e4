"""Contract: ``validate_loaded_weights`` accepts a correct load and only looks.

The loader calls it on every layer before processing any (all failures in one
``WeightLoadError``, nothing processed), so it must pass on what the method's own
``quantize_weight`` wrote, leave the layer exactly as it was (the same parameters
and buffers, bit for bit, and the same attributes), and be safe to call again: a
model whose load is retried, or a layer loaded under ``strict=False`` and processed
later, is validated more than once. Generic for any method: what a method refuses
(non-finite scales, say) is its own tests' business, since a method may have no
scales at all.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject


def layer_state(layer: torch.nn.Module) -> dict[str, object]:
    """What validation must not change: attribute names, each parameter and buffer (object, dtype, shape, bits)."""
    tensors = {f"parameter {n!r}": p for n, p in layer.named_parameters(recurse=False)}
    tensors.update({f"buffer {n!r}": b for n, b in layer.named_buffers(recurse=False)})
    state: dict[str, object] = {"attributes": sorted(vars(layer))}
    for name, t in tensors.items():
        state[name] = (id(t), t.dtype, tuple(t.shape), t.device, _bits(t))
    return state


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes on CPU: NaN-safe (NaN != NaN) and dtype-agnostic (float8, bool)."""
    return t.detach().cpu().clone().reshape(-1).view(torch.uint8)


def changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What differs between two :func:`layer_state` snapshots, one line each."""
    out = []
    gone, new = sorted(set(before["attributes"]) - set(after["attributes"])), sorted(
        set(after["attributes"]) - set(before["attributes"]))
    if gone or new:
        out.append(f"attributes added {new}, removed {gone}")
    for name in sorted(set(before) | set(after)):
        if name == "attributes":
            continue
        if name not in after or name not in before:
            out.append(f"{name} {'removed' if name not in after else 'added'}")
            continue
        (oid, odt, oshape, odev, obits), (nid, ndt, nshape, ndev, nbits) = before[name], after[name]
        if oid != nid:
            out.append(f"{name} replaced by another tensor object")
        elif (odt, oshape, odev) != (ndt, nshape, ndev):
            out.append(f"{name} changed from {oshape} {odt} on {odev} to {nshape} {ndt} on {ndev}")
        elif not torch.equal(obits, nbits):
            out.append(f"{name} values changed")
    return out


def check_validate_loaded_weights(subject: Subject, kind: str) -> None:
    """On a correctly loaded layer, ``validate_loaded_weights`` passes twice and changes nothing."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype, process=False)
    method = type(layer.quant_method).__name__
    before = layer_state(layer)
    for call in ("first", "second"):
        try:
            layer.quant_method.validate_loaded_weights(layer)
        except Exception as exc:
            raise subject.fail("validate_loaded_weights", where,
                               f"{method} of {subject.owner()}: the {call} call on layer {layer.prefix!r}, loaded "
                               f"from the method's own quantize_weight tensors, raised {type(exc).__name__}: {exc}",
                               "accept every checkpoint quantize_weight writes, and do not depend on state a first "
                               "call leaves (the loader may validate a layer again)") from exc
        changed = changes(before, layer_state(layer))
        if changed:
            raise subject.fail(ck.VALIDATE_UNCHANGED, where,
                               f"{method} of {subject.owner()}: the {call} call modified layer {layer.prefix!r}: "
                               + "; ".join(changed), ck.VALIDATE_READ_ONLY_FIX)
    ck.process_weights(layer, subject, kind)


class ValidationTests(MethodFixtures):
    """``validate_loaded_weights`` passes on a correct load, twice, without modifying the layer."""

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_validate_loaded_weights(self, fvq_runnable: Subject, kind: str) -> None:
        check_validate_loaded_weights(fvq_runnable, kind)
