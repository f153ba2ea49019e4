"""Contract: the method's checkpoint tensors survive safetensors, and loading is deterministic.

The tensors are written with ``safetensors.torch.save_file`` and read back as
lazy slices (:class:`~fastvideo_quant.lazy.LazyTensor`), the way the model loader
hands them to weight loaders.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from fastvideo_quant.lazy import LazyTensor
from fastvideo_quant.loader import lazy_slice
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import run_apply
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import max_abs_diff
from fastvideo_quant.testing.conformance.subject import FUSED_KINDS, LAYER_KINDS, Subject, random_input


def save_entries(subject: Subject, kind: str, items: list[ck.Entry], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {e.name: e.tensor for e in items}
    bad = [n for n, t in tensors.items() if not t.is_contiguous()]
    if bad:
        raise subject.fail("serialization", subject.describe(kind), f"quantize_weight returned non-contiguous {bad}",
                           "return contiguous tensors (.contiguous()) so safetensors can save them")
    try:
        save_file(tensors, str(path))
    except Exception as exc:
        raise subject.fail("serialization", subject.describe(kind),
                           f"safetensors could not save {sorted(tensors)}: {type(exc).__name__}: {exc}",
                           "return plain, contiguous tensors of dtypes safetensors supports") from exc


def lazy_reader(handle):
    def get(e: ck.Entry) -> LazyTensor:
        return lazy_slice(handle, e.name)

    return get


def check_serialization(subject: Subject, kind: str) -> None:
    """Layers loaded from a safetensors file give the same output as from memory, every time."""
    from safetensors import safe_open

    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    ckpt = ck.make_checkpoint(subject, kind)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "serialization")
    in_memory = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype)
    want = run_apply(subject, in_memory, x, in_memory.bias, kind, where)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        probe = subject.build_layer(kind, bias=True, dtype=dtype)
        items = ck.entries(probe, ckpt, subject, fused_on_disk=kind in FUSED_KINDS)
        save_entries(subject, kind, items, path)
        outs, states = [], []
        for _ in range(2):
            with safe_open(str(path), framework="pt") as handle:
                layer = subject.build_layer(kind, bias=True, dtype=dtype)
                ck.load(layer, items, subject, kind, get=lazy_reader(handle))
            layer.to(subject.device())
            ck.process_weights(layer, subject, kind)
            outs.append(run_apply(subject, layer, x, layer.bias, kind, where))
            states.append(ck.param_snapshot(layer))
    if not torch.equal(outs[0], want):
        raise subject.fail("serialization", where,
                           f"output after a safetensors round trip differs from the in-memory load by "
                           f"{max_abs_diff(outs[0], want):.3g} (max abs)",
                           "weight loaders must accept lazy safetensors slices: use fastvideo_quant.lazy.narrow() "
                           "and materialize() instead of tensor methods")
    changed = [n for n in states[0] if not torch.equal(states[0][n], states[1][n])]
    if changed or not torch.equal(outs[0], outs[1]):
        raise subject.fail("determinism", where,
                           f"loading the same file twice gave different {changed or 'outputs'}",
                           "initialise every parameter from the checkpoint (no torch.empty leftovers) and make "
                           "process_weights_after_loading deterministic")


class SerializationTests(MethodFixtures):
    """safetensors round trip and deterministic loading."""

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_safetensors_round_trip(self, fvq_runnable: Subject, kind: str) -> None:
        check_serialization(fvq_runnable, kind)
