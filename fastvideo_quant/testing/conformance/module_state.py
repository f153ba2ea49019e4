"""Contract: after loading and processing, every tensor a layer uses is a registered parameter or buffer.

A tensor kept as a plain attribute (on the layer or on its method) is left behind by
``layer.to(device)`` / ``.cuda()`` and missing from ``state_dict``-based tooling, so a
model loaded on CPU and moved to a GPU would feed CPU tensors to its kernels.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject


def _stray_tensors(obj: object, owner: str) -> list[str]:
    return [f"{owner}.{name}" for name, value in vars(obj).items() if isinstance(value, torch.Tensor)]


def check_tensors_registered(subject: Subject, kind: str) -> None:
    """No plain tensor attributes on the layer or its method; ``layer.to("meta")`` moves every tensor."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
    stray = _stray_tensors(layer, "layer") + _stray_tensors(layer.quant_method, "quant_method")
    if stray:
        raise subject.fail("module state: tensors registered", where,
                           f"after process_weights_after_loading these tensors are plain attributes: {stray}",
                           "register them with layer.register_buffer(name, tensor, persistent=False) (or as "
                           "parameters), so layer.to(device) moves them; keep no tensors on the method object")
    layer.to("meta")
    left = [n for n, t in list(layer.named_parameters()) + list(layer.named_buffers()) if t.device.type != "meta"]
    if left:
        raise subject.fail("module state: tensors registered", where, f"layer.to('meta') left {left} behind",
                           "do not override _apply/to; register tensors as parameters or buffers")


class ModuleStateTests(MethodFixtures):
    """Every tensor of a processed layer moves with the layer."""

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_tensors_registered(self, fvq_runnable: Subject, kind: str) -> None:
        check_tensors_registered(fvq_runnable, kind)
