"""Optional capabilities: each runs only where the method declares it and the machine has it, else skips."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import call_apply, run_apply
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import rel_error
from fastvideo_quant.testing.conformance.subject import Subject, random_input


def check_torch_compile(subject: Subject, kind: str = "column") -> None:
    """``torch.compile(apply, fullgraph=True)`` traces without graph breaks and matches eager, under ``no_grad`` and
    in grad mode with an input that requires grad (a model with trainable modules in front of the layer, run outside
    ``torch.no_grad()``: AOTAutograd then traces a backward, and an op without a derivative fails to compile)."""
    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=True, dtype=dtype)
    layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "compile")
    eager = call_apply(subject, layer, x.clone(), layer.bias, where)  # (it checks the input is left unchanged: in
    # grad mode an in-place write fails to compile, which is no graph break)
    for grad in (False, True):
        out = _compiled_apply(subject, layer, x.detach().clone().requires_grad_(grad), grad, where)
        err = rel_error(out.detach(), eager)
        if err > 1e-2:
            raise subject.fail("torch.compile(fullgraph=True)", where + _mode(grad),
                               f"compiled output differs from eager by {err:.3g}",
                               "the compiled path must compute what eager does")


def _mode(grad: bool) -> str:
    return ", grad mode, input requiring grad" if grad else ", under torch.no_grad()"


def _compiled_apply(subject: Subject, layer: torch.nn.Module, x: torch.Tensor, grad: bool, where: str) -> torch.Tensor:
    backend = "inductor" if x.is_cuda else "aot_eager"  # CPU inductor needs a C++ toolchain
    torch._dynamo.reset()
    fn = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True, backend=backend)
    fix = ("remove graph breaks from apply (data-dependent Python control flow, .item(), untraceable custom ops: "
           "register them with torch.library), or set supports_torch_compile = False")
    if grad:
        fix = ("in grad mode AOTAutograd traces apply's backward: give an op without a derivative one "
               "(torch.autograd.Function, torch.library.register_autograd), or " + fix)
    try:
        with torch.set_grad_enabled(grad):
            return fn(x)
    except Exception as exc:
        raise subject.fail("torch.compile(fullgraph=True)", where + _mode(grad), f"{type(exc).__name__}: "
                           f"{str(exc)[:800]}", fix) from exc


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


def _declare_compile(subject: Subject) -> str:
    """Where the method declares it: its config class (what ``fvq check`` and every suite class read)."""
    return (f"{subject.config_cls().__name__}.supports_torch_compile is False: set it True on the config class when "
            "apply traces with torch.compile(fullgraph=True)")


class CapabilityTests(MethodFixtures):
    """torch.compile and CUDA paths, skipped with a reason where not declared or not available."""

    def test_torch_compile_fullgraph(self, fvq_runnable: Subject, request: pytest.FixtureRequest) -> None:
        declared = getattr(request.cls, "supports_torch_compile", None)
        if declared is None:
            declared = fvq_runnable.config_cls().supports_torch_compile
        elif not declared:
            pytest.skip("torch.compile not checked: supports_torch_compile was set False for this run (the suite "
                        "class, or --set)")
        if not declared:
            pytest.skip(f"method does not declare torch.compile support ({_declare_compile(fvq_runnable)})")
        check_torch_compile(fvq_runnable)

    @pytest.mark.cuda
    def test_cuda_apply(self, fvq_runnable: Subject) -> None:
        if not torch.cuda.is_available():
            pytest.skip("CUDA-only path: no CUDA GPU is visible")
        check_cuda_device(fvq_runnable)
