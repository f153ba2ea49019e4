"""torch.export of loaded models with every method (CPU): the exported program gives eager's outputs, with a static or
a dynamic token count, after a save and load too — and the export leaves eager as it was (fp8's CPU upcast table,
first made while tracing, was kept as a fake tensor: every export failed, and every later eager call of the
process returned a FakeTensor)."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: loaded(m, write_checkpoint(m, root / m)) for m in METHODS}


@pytest.fixture
def empty_caches(monkeypatch):
    """The tensors the kernels make once and keep, not yet made: the export is their first use."""
    import fvq_fp8.kernels.gemm as gemm

    import fastvideo_quant.kernels as kernels

    monkeypatch.setattr(gemm, "_FP8_TO_F32", {})
    monkeypatch.setattr(kernels, "_UNITS", {})


def _x(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_export_gives_eagers_output_and_leaves_eager_as_it_was(method, models, empty_caches):
    model = models[method]
    x = _x(3)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        eager = model(x)
        assert type(eager) is torch.Tensor, f"{method}: eager after the export returned {type(eager).__name__}"
        assert torch.equal(program.module()(x), eager)


@pytest.mark.parametrize("method", METHODS)
def test_export_with_a_dynamic_token_count_saves_loads_and_runs_every_count(method, models, tmp_path):
    """One program for every token count (the CPU path has no branch on M to guard), through torch.export.save/load."""
    model = models[method]
    tokens = torch.export.Dim("tokens", min=1, max=8192)
    with torch.no_grad():
        program = torch.export.export(model, (_x(4),), dynamic_shapes={"x": {0: tokens}})
        torch.export.save(program, tmp_path / "model.pt2")
        reloaded = torch.export.load(tmp_path / "model.pt2").module()
        for rows in (1, 7, 300):
            x = _x(rows, seed=rows)
            want = model(x)
            assert torch.equal(program.module()(x), want), f"{method}: {rows} tokens"
            assert torch.equal(reloaded(x), want), f"{method}: {rows} tokens, saved and loaded"


@pytest.mark.parametrize("grad_mode", [False, True], ids=["exported-under-no_grad", "exported-in-grad-mode"])
@pytest.mark.parametrize("method", METHODS)
def test_a_backward_through_the_program_is_eagers(method, grad_mode, models):
    """Export traced through the methods' autograd Functions and kept their forwards' ops only: a backward through the
    program failed with fp8 tensor / channel scales (an op with no derivative) and was wrong with int8 and fp8 block
    scales (rounding's zero derivative). Each quantized layer is now one op with the straight-through derivative."""
    model = models[method]
    with torch.set_grad_enabled(grad_mode):
        program = torch.export.export(model, (_x(3),)).module()
    grads = []
    for run in (model, program):
        x = _x(3, seed=5).requires_grad_()
        run(x).square().sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[1], grads[0]), f"{method}: the program's input gradient is not eager's"


#: A fresh process loads each saved program after the imports docs/guide/loading.md names, runs it and its backward.
LOAD_ELSEWHERE = """
import sys
import torch
import fvq_fp8  # noqa: F401  (fp8 programs: torch.ops.fvq_fp8)
import fvq_int8  # noqa: F401  (int8 programs: torch.ops.fvq_int8)

root = sys.argv[1]
for method in sys.argv[2:]:
    x, want, want_grad = torch.load(f"{root}/{method}.io")
    x.requires_grad_()
    got = torch.export.load(f"{root}/{method}.pt2").module()(x)
    got.square().sum().backward()
    # (relative error, not equality: this process's float matmuls may run on another thread count than the saver's)
    print(method, max(float((got - want).norm() / want.norm()), float((x.grad - want_grad).norm() / want_grad.norm())))
"""


@pytest.mark.slow  # a fresh process
def test_a_saved_program_loads_in_a_fresh_process_after_the_documented_imports(models, tmp_path):
    """A program holds the methods' custom ops (fvq_fp8::quantized_linear, fvq_int8::quantized_linear): loaded in a
    process that has not registered them, torch.export.load fails ("We failed to resolve
    torch.ops.fvq_fp8.quantized_linear.default to an operator"); the docs said save/load works and named no import.
    Their derivatives come with the imports too: the backward in that process is eager's."""
    import os
    import subprocess
    import sys

    for method, model in models.items():
        x = _x(5, seed=9)
        with torch.no_grad():
            torch.export.save(torch.export.export(model, (x,)), tmp_path / f"{method}.pt2")
        x_grad = x.clone().requires_grad_()
        out = model(x_grad)
        out.square().sum().backward()
        torch.save((x, out.detach(), x_grad.grad), tmp_path / f"{method}.io")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, sys.path)), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(tmp_path), *models], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = dict(zip(proc.stdout.split()[::2], map(float, proc.stdout.split()[1::2]), strict=True))
    assert list(errors) == list(models), proc.stdout
    assert all(err < 1e-5 for err in errors.values()), errors
