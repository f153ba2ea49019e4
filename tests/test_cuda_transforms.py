"""torch.export, torch.compile and torch.func on a GPU, with every method (the CPU files — test_torch_export.py,
test_torch_compile.py, test_torch_func.py — check the CPU paths): the eager CUDA paths launch their kernels directly
and branch on the token count, which the CPU paths do not. Each compares with eager on the same model, in bf16.
Skips without a GPU (``pytest --cuda-only`` runs it on the device)."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: Token counts across the GPU routes: the W8A16/GEMV kernels (1, 16), the small-M GEMMs (17), the large tiles (300).
ROWS = (1, 16, 17, 300)
#: bf16 outputs of the same kernels: equal but for a reduction order that may differ between a graph and eager.
REL = 2e-3
#: inductor's graph keeps the bf16 chain's intermediates (and the backward's) in float32 where eager rounds each to bf16,
#: and a batched matmul (vmap) sums otherwise than the loop's: about one bf16 ulp (2**-8) apart (on the CPU: 2.7e-3,
#: int8's compiled gradient; 5.1e-3, unquantized vmap)
BF16_REL = 1e-2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: loaded(m, write_checkpoint(m, root / m)).to("cuda", torch.bfloat16) for m in METHODS}


def _x(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, HIDDEN, generator=g).to("cuda", torch.bfloat16)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _out_and_grad(run, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    out = run(x)
    out.float().square().sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("method", METHODS)
def test_export_with_a_dynamic_token_count_gives_eagers_outputs_and_gradients(method, models):
    """One program for every token count: the fp8 and int8 routes on M run inside their ops, not as guards."""
    model = models[method]
    tokens = torch.export.Dim("tokens", min=1, max=8192)
    with torch.no_grad():
        program = torch.export.export(model, (_x(4),), dynamic_shapes={"x": {0: tokens}}).module()
    for rows in ROWS:
        x = _x(rows, seed=rows)
        (out, grad), (want, want_grad) = _out_and_grad(program, x), _out_and_grad(model, x)
        assert _rel(out, want) < REL, f"{method}: {rows} tokens: output off by {_rel(out, want):.2e}"
        assert _rel(grad, want_grad) < REL, f"{method}: {rows} tokens: gradient off by {_rel(grad, want_grad):.2e}"


@pytest.mark.parametrize("grad_mode", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("method", METHODS)
def test_compile_with_a_dynamic_token_count_gives_eagers_outputs(method, grad_mode, models):
    model = models[method]
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, fullgraph=True)
    for rows in ROWS:
        x = _x(rows, seed=rows)
        if grad_mode:
            (out, grad), (want, want_grad) = _out_and_grad(compiled, x), _out_and_grad(model, x)
            assert _rel(grad, want_grad) < BF16_REL, \
                f"{method}: {rows} tokens: gradient off by {_rel(grad, want_grad):.2e}"
        else:
            with torch.no_grad():
                out, want = compiled(x), model(x)
        assert _rel(out, want) < BF16_REL, f"{method}: {rows} tokens: output off by {_rel(out, want):.2e}"


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_the_loop(method, models):
    """(On CPU int8's bitsandbytes ops have no batching rule — torch's error, tests/test_torch_func.py; on a GPU int8
    runs our Triton kernels.)"""
    model = models[method]
    x = torch.randn(3, 5, HIDDEN, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    with torch.no_grad():
        looped = torch.stack([model(row) for row in x])
        batched = torch.func.vmap(model)(x)
    assert _rel(batched, looped) < BF16_REL, f"{method}: vmap off the loop by {_rel(batched, looped):.2e}"


@pytest.mark.parametrize("method", METHODS)
def test_func_grad_per_sample_gradients_and_jvp(method, models):
    """torch.func.grad and vmap(grad) (per-sample gradients) give autograd's gradients; jvp's tangent agrees with
    vjp's cotangent (<u, J v> = <J^T u, v>). On CUDA the layers' ops go through Functions here: torch's custom-op
    autograd refuses torch.func's grad, and the ops have no forward derivative."""
    model = models[method]
    x = torch.randn(3, 2, HIDDEN, generator=torch.Generator().manual_seed(4)).to("cuda", torch.bfloat16)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return model(t).float().square().sum()

    want = torch.stack([_out_and_grad(model, r)[1] for r in x])
    got = torch.func.grad(loss)(x[0])
    assert _rel(got, want[0]) < BF16_REL, f"{method}: torch.func.grad off by {_rel(got, want[0]):.2e}"
    per_sample = torch.func.vmap(torch.func.grad(loss))(x)
    assert _rel(per_sample, want) < BF16_REL, f"{method}: per-sample gradients off by {_rel(per_sample, want):.2e}"
    v = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(5)).to("cuda", torch.bfloat16)
    out, jv = torch.func.jvp(model, (x[0],), (v,))
    u = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).to("cuda", torch.bfloat16)
    (jtu,) = torch.func.vjp(model, x[0])[1](u)
    lhs, rhs = float((u.float() * jv.float()).sum()), float((jtu.float() * v.float()).sum())
    assert abs(lhs - rhs) <= BF16_REL * max(abs(rhs), 1.0), f"{method}: <u, Jv> = {lhs}, <J^T u, v> = {rhs}"
