"""Optional capabilities: each runs only where the method declares it and the machine has it, else skips."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import run_apply
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import rel_error
from fastvideo_quant.testing.conformance.subject import Subject, random_input


def check_torch_compile(subject: Subject, kind: str = "column") -> None:
    """``torch.compile(apply, fullgraph=True)`` traces without graph breaks and matches eager."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "compile")
    eager = run_apply(subject, layer, x, layer.bias, kind, where)
    backend = "inductor" if x.is_cuda else "aot_eager"  # CPU inductor needs a C++ toolchain
    torch._dynamo.reset()
    fn = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True, backend=backend)
    try:
        out = fn(x)
    except Exception as exc:
        raise subject.fail("torch.compile(fullgraph=True)", where, f"{type(exc).__name__}: {str(exc)[:800]}",
                           "remove graph breaks from apply (data-dependent Python control flow, .item(), "
                           "untraceable custom ops: register them with torch.library), or set "
                           "supports_torch_compile = False") from exc
    err = rel_error(out, eager)
    if err > 1e-2:
        raise subject.fail("torch.compile(fullgraph=True)", where, f"compiled output differs from eager by {err:.3g}",
                           "the compiled path must compute what eager does")


def check_cuda_device(subject: Subject, kind: str = "column") -> None:
    """On a GPU the output stays on the input's device."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "cuda")
    out = run_apply(subject, layer, x, layer.bias, kind, where)
    if out.device != x.device:
        raise subject.fail("apply: device", where, f"input on {x.device} gave output on {out.device}",
                           "keep every tensor of apply on the input's device")


class CapabilityTests(MethodFixtures):
    """torch.compile and CUDA paths, skipped with a reason where not declared or not available."""

    def test_torch_compile_fullgraph(self, fvq_runnable: Subject, request: pytest.FixtureRequest) -> None:
        if not getattr(request.cls, "supports_torch_compile", False):
            pytest.skip("method does not declare torch.compile support (set supports_torch_compile = True)")
        check_torch_compile(fvq_runnable)

    def test_cuda_apply(self, fvq_runnable: Subject) -> None:
        if not torch.cuda.is_available():
            pytest.skip("CUDA-only path: no CUDA GPU is visible")
        check_cuda_device(fvq_runnable)
