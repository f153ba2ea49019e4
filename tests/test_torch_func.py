"""torch.func over loaded layers: ``grad`` and ``vjp`` (per-sample gradients, functional training) give autograd's
input gradient for every method; ``vmap`` gives the loop's outputs (int8's bitsandbytes ops have no batching rule:
it failed with torch's error until fp8 and int8 layers became one op with a batching rule under vmap)."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint


@pytest.fixture
def no_vmap_fallback():
    """vmap with torch's per-item fallback loop off: an op without a batching rule is an error, not a slow loop with a
    "performance drop" warning (fp8's activation quantization ops ran so, the block path failed outright)."""
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(enabled)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: loaded(m, write_checkpoint(m, root / m)) for m in METHODS}


def _x() -> torch.Tensor:
    return torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", METHODS)
def test_func_grad_and_vjp_equal_autograd(method, models):
    model = models[method]
    x = _x().requires_grad_(True)
    model(x).square().sum().backward()
    assert torch.equal(torch.func.grad(lambda t: model(t).square().sum())(_x()), x.grad)
    out, vjp = torch.func.vjp(model, _x())
    (grad,) = vjp(2 * out)
    assert torch.equal(grad, x.grad)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_the_loop(method, rows, models, no_vmap_fallback):
    model = models[method]
    x = torch.randn(5, rows, HIDDEN, generator=torch.Generator().manual_seed(3))
    looped = torch.stack([model(row) for row in x])
    # (a batched matmul's float32 sums may round otherwise than the loop's)
    torch.testing.assert_close(torch.func.vmap(model)(x), looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m.startswith("fp8")])
def test_vmap_through_fp8s_weight_upcast_in_row_chunks(method, models, no_vmap_fallback, monkeypatch):
    """The CPU fp8 product upcasts a large weight a few rows at a time into an output it allocated: an unbatched one
    failed under vmap (an in-place write of the batched product)."""
    import fvq_fp8.kernels.gemm as gemm

    monkeypatch.setattr(gemm, "CPU_CHUNK_NUMEL", 8 * HIDDEN)
    model = models[method]
    x = torch.randn(4, 2, HIDDEN, generator=torch.Generator().manual_seed(5))
    looped = torch.stack([model(row) for row in x])
    torch.testing.assert_close(torch.func.vmap(model)(x), looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m.startswith(("int8", "fp8"))])
def test_vmap_is_one_call_on_all_the_rows(method, models, no_vmap_fallback):
    """Under vmap an fp8 or int8 layer is its one op, whose batching rule folds the batch into the rows: one kernel
    call per layer for the whole batch (the eager CUDA paths would hand a batched tensor to a kernel launch, and
    bitsandbytes' ops have no batching rule — int8 failed with torch's error)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    op = getattr(torch.ops, f"fvq_{method.split('-')[0]}").quantized_linear.default
    rows_seen = []

    class Calls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is op:
                rows_seen.append(args[0].shape[0])
            return func(*args, **(kwargs or {}))

    x = torch.randn(5, 3, HIDDEN, generator=torch.Generator().manual_seed(3))
    looped = torch.stack([models[method](row) for row in x])
    with Calls():
        batched = torch.func.vmap(models[method])(x)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    assert rows_seen == [15, 15, 15], rows_seen


@pytest.mark.parametrize("method", ["int8", "fp8-tensor", "fp8-block"])
def test_vmap_over_the_bias_and_the_input_equals_the_loop(method, models, no_vmap_fallback):
    """A bias per item (functional_call with stacked biases): the op's batching rule adds each item's after the
    batch's one call; an unbatched input is expanded over the batch."""
    model = models[method]
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    biases = torch.randn(3, *params["qkv_proj.bias"].shape, generator=torch.Generator().manual_seed(8))

    def run(bias: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**params, "qkv_proj.bias": bias}, (t,))

    xs = torch.randn(3, 2, HIDDEN, generator=torch.Generator().manual_seed(9))
    looped = torch.stack([run(b, t) for b, t in zip(biases, xs, strict=True)])
    torch.testing.assert_close(torch.func.vmap(run)(biases, xs), looped, rtol=1e-5, atol=1e-5)
    looped = torch.stack([run(b, xs[0]) for b in biases])
    torch.testing.assert_close(torch.func.vmap(run, in_dims=(0, None))(biases, xs[0]), looped, rtol=1e-5, atol=1e-5)


def test_vmap_over_a_layers_weights_is_a_clear_error(models):
    """Model ensembling (functional_call with stacked parameters) batches the quantized tensors: the op's batching
    rule cannot fold that into rows, and says so."""
    model = models["fp8-tensor"]
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    stacked = {k: torch.stack([v, v]) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"fvq_fp8::quantized_linear under torch.func.vmap: .* is batched"):
        torch.func.vmap(lambda p, t: torch.func.functional_call(model, p, (t,)))(stacked, _x().expand(2, 5, HIDDEN))


#: Each method's main kernel-format tensor of ``qkv_proj`` (128 x 64: a transposed copy has another shape)
KERNEL_TENSOR = {m: "qkv_proj.qweight_k" if m == "awq" else "qkv_proj.weight" for m in METHODS if m != "unquantized"}
REPLACEMENTS = {
    "a float copy": lambda t: t.float(),
    "a bfloat16 copy": lambda t: t.to(torch.bfloat16),
    "half its rows": lambda t: t[: t.shape[0] // 2].clone(),
    "transposed": lambda t: t.t().contiguous(),
}


@pytest.mark.parametrize("how", REPLACEMENTS)
@pytest.mark.parametrize("method", list(KERNEL_TENSOR))
def test_a_kernel_tensor_replaced_with_the_wrong_dtype_or_shape_is_named(method, how, models):
    """functional_call (or an assignment) with a tensor apply cannot read: AWQ returned garbage, int8 failed in
    torch ("int_mm_out_cpu: Expected mat2 dtype to be of type int8"), both with a broadcast error for half the rows,
    fp8 blamed the input for a transposed weight."""
    from fastvideo_quant.errors import ModelStateError

    model = models[method]
    name = KERNEL_TENSOR[method]
    tensor = dict(model.named_buffers()).get(name, dict(model.named_parameters()).get(name))
    replaced = REPLACEMENTS[how](tensor.detach())
    with pytest.raises(ModelStateError, match=r"'?qkv_proj'?: .*replaced or cast by hand"):
        torch.func.functional_call(model, {name: replaced}, (_x(),))


def _straight_through_jvp(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The tangent of ``model`` at ``x`` along ``t`` that reverse mode gives: the Jacobian (autograd's, through each
    method's backward) times ``t``."""
    jac = torch.autograd.functional.jacobian(model, x)  # [rows, out, rows, in]
    return torch.einsum("aibj,bj->ai", jac, t)


@pytest.mark.parametrize("method", METHODS)
def test_forward_mode_tangent_equals_reverse_modes(method, models):
    """torch.func.jvp and torch.autograd.forward_ad through a quantized layer: int8 and fp8 gave a zero tangent, or
    for fp8 block scales one from the activation scales only (off by more than the tangent itself), and
    forward_ad's ``unpack_dual(out).tangent`` was None for fp8 tensor and channel scales — no error, while
    reverse mode (grad, vjp, backward) passes the gradient straight through to the de-quantized weight."""
    import torch.autograd.forward_ad as fwAD

    model = models[method]
    x = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(1))
    t = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(2))
    want = _straight_through_jvp(model, x, t)
    out, tangent = torch.func.jvp(model, (x,), (t,))
    assert torch.equal(out, model(x))
    torch.testing.assert_close(tangent, want, rtol=1e-4, atol=1e-5)
    with fwAD.dual_level():
        dual_out = model(fwAD.make_dual(x, t))
        tangent = fwAD.unpack_dual(dual_out).tangent
    assert tangent is not None, f"{method}: forward_ad gave no tangent"
    torch.testing.assert_close(tangent, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_gradients_jacfwd_and_hessian_through_vmap(method, models, no_vmap_fallback):
    """vmap over the methods' autograd Functions — ``vmap(grad(f))`` (per-sample gradients), ``jacfwd`` (vmap over
    jvp), ``hessian`` — failed for fp8 and AWQ with "You tried to vmap over _Fp8LinearFunction, but it does not have
    vmap support" (``_CpuLinearFunction`` for AWQ), though vmap of their forward and grad each worked."""
    model = models[method]
    x = torch.randn(4, 2, HIDDEN, generator=torch.Generator().manual_seed(6))

    def loss(t: torch.Tensor) -> torch.Tensor:
        return model(t).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss))(x)
    # (a batched matmul's float32 sums may round otherwise than the loop's)
    torch.testing.assert_close(per_sample, torch.stack([torch.func.grad(loss)(row) for row in x]), rtol=1e-4,
                               atol=1e-5)
    one = x[0, :1]
    torch.testing.assert_close(torch.func.jacfwd(model)(one), torch.func.jacrev(model)(one), rtol=1e-4, atol=1e-5)
    # (each layer is linear in its input where the gradient goes straight through: the Hessian of the squared sum is
    # 2 J^T J)
    jac = torch.func.jacrev(model)(one).reshape(-1, HIDDEN)
    torch.testing.assert_close(torch.func.hessian(loss)(one).reshape(HIDDEN, HIDDEN), 2 * jac.T @ jac, rtol=1e-4,
                               atol=1e-4)
