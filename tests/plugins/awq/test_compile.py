"""AWQ's GPU dispatcher under ``torch.compile(fullgraph=True)``: one custom op (``fvq_awq::linear``).

On CPU the op runs the Triton kernels under the interpreter (opcheck, and a compiled call against eager); on a GPU
the layer's ``apply`` itself is compiled with ``inductor`` (the CPU ``apply`` is plain torch, covered by the
conformance suite's compile check).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from fvq_awq import ops  # noqa: E402

from fastvideo_quant.testing.conformance import checkpoint as ck  # noqa: E402
from fastvideo_quant.testing.conformance.subject import Subject  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _loaded_layer(dtype: torch.dtype, bias: bool = True) -> torch.nn.Module:
    """A loaded AWQ ColumnParallelLinear (256 -> 128, group 128) built the way the conformance suite builds it."""
    subject = Subject(method="awq")
    return ck.build_loaded(subject, "column", ck.make_checkpoint(subject, "column"), bias=bias, dtype=dtype).to(DEV)


@pytest.mark.parametrize("m", [1, 20])  # GEMV, then the fused GEMM / de-quantize routes
def test_custom_op_passes_opcheck_and_compiles_to_one_graph(m):
    dtype = torch.float16 if DEV == "cuda" else torch.float32
    layer = _loaded_layer(dtype)
    lay, w = layer.awq_layout, layer.quant_method.dequantize_weight(layer)
    x = torch.randn(m, lay.in_features, generator=torch.Generator().manual_seed(m)).to(DEV, dtype)
    bias = layer.bias
    args = (x, layer.qweight_k, layer.zeros_k, layer.scales_k, bias, lay.in_features, lay.out_features, lay.group,
            lay.bk8)
    torch.library.opcheck(ops.linear, args)
    eager = ops.linear(*args)
    torch._dynamo.reset()
    out = torch.compile(lambda t: ops.linear(t, *args[1:]), fullgraph=True,
                        backend="inductor" if DEV == "cuda" else "aot_eager")(x)
    assert out.shape == (m, lay.out_features) and out.dtype == dtype
    assert torch.allclose(out.float(), eager.float(), rtol=1e-3, atol=1e-3)
    ref = x.float() @ w.T + bias.float()
    assert ((eager.float() - ref).norm() / ref.norm()).item() < 5e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU apply is plain torch)")
def test_compiled_cuda_apply_goes_through_the_op(monkeypatch):
    layer = _loaded_layer(torch.float16)
    x = torch.randn(16, layer.awq_layout.in_features, device="cuda", dtype=torch.float16)
    calls = []
    real = ops.linear
    monkeypatch.setattr(ops, "linear", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    out = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True)(x)
    assert calls and torch.allclose(out, layer.quant_method.apply(layer, x, layer.bias), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("m", [1, 20])
def test_the_op_with_an_input_order_passes_opcheck_compiles_and_scatters_its_gradient(m):
    """Activation ordering (``order``, ``x_features``; ``fvq_awq.act_order``): the op gathers ``x[..., order]`` itself
    — padding kernel inputs read input 0 — in eager and compiled calls alike, and its backward adds the gradient back
    to the inputs each kernel input read."""
    from fvq_awq.format import pack_awq
    from fvq_awq.layout import dequantize_kernel, repack_to_kernel

    dtype = torch.float16 if DEV == "cuda" else torch.float32
    k, k_kernel, n = 300, 384, 64
    gen = torch.Generator().manual_seed(m)
    wk, zk, sk, lay = repack_to_kernel(pack_awq(torch.randint(0, 16, (k_kernel, n), generator=gen)),
                                       pack_awq(torch.randint(0, 16, (k_kernel // 128, n), generator=gen)),
                                       (torch.rand(k_kernel // 128, n, generator=gen) * 0.02 + 1e-3).half(), 128)
    wk, zk, sk = wk.to(DEV), zk.to(DEV), sk.to(DEV)
    w = dequantize_kernel(wk, zk, sk, lay)
    order = torch.cat([torch.randperm(k, generator=gen), torch.zeros(k_kernel - k, dtype=torch.int64)]).to(DEV)
    x = torch.randn(m, k, generator=gen).to(DEV, dtype)
    args = (x, wk, zk, sk, None, lay.in_features, lay.out_features, lay.group, lay.bk8, None, 0, order, k)
    torch.library.opcheck(ops.linear, args)
    eager = ops.linear(*args)
    ref = x.float()[:, order] @ w.T
    assert eager.shape == (m, n) and ((eager.float() - ref).norm() / ref.norm()).item() < 5e-3
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: ops.linear(t, *args[1:]), fullgraph=True,
                             backend="inductor" if DEV == "cuda" else "aot_eager")
    assert torch.allclose(compiled(x).float(), eager.float(), rtol=1e-3, atol=1e-3)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(m, n, generator=gen).to(DEV, dtype)
    ops.linear(xg, *args[1:]).backward(grad)
    expected = torch.zeros(m, k, device=DEV).index_add_(1, order, grad.float() @ w)
    assert ((xg.grad.float() - expected).norm() / expected.norm()).item() < 5e-3


def test_the_op_under_torch_func_vmap_grad_and_jvp():
    """The eager CUDA ``apply`` calls the op under ``vmap`` (its batching rule: one call on all the rows; a Triton
    launch of a batched tensor fails), ``CudaLinearFunction`` under ``torch.func.grad`` and per-sample gradients
    (torch's custom-op autograd refuses them: "must override the setup_context staticmethod") and
    ``CudaLinearDualFunction`` in forward-mode AD (the op has no forward derivative). Here on the op's kernels (the
    interpreter on CPU); tests/test_cuda_transforms.py runs the layers so on a GPU."""
    layer = _loaded_layer(torch.float32)
    lay, w = layer.awq_layout, layer.quant_method.dequantize_weight(layer)
    rest = (layer.qweight_k, layer.zeros_k, layer.scales_k, layer.bias, lay.in_features, lay.out_features, lay.group,
            lay.bk8, None, 0, None, 0)  # (every argument, as apply passes them: the Functions take no defaults)
    x = torch.randn(3, 2, lay.in_features, generator=torch.Generator().manual_seed(4)).to(DEV)

    def through_op(t: torch.Tensor) -> torch.Tensor:
        return ops.linear(t, *rest)

    with torch.no_grad():
        looped = torch.stack([through_op(r) for r in x])
        torch.testing.assert_close(torch.func.vmap(through_op)(x), looped, rtol=1e-5, atol=1e-5)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return ops.CudaLinearFunction.apply(t, *rest).square().sum()

    want = []
    for r in x:
        t = r.clone().requires_grad_()
        through_op(t).square().sum().backward()  # (the op's own autograd: the reference)
        want.append(t.grad)
    torch.testing.assert_close(torch.func.grad(loss)(x[0]), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(x), torch.stack(want), rtol=1e-5, atol=1e-5)
    tangent = torch.randn(2, lay.in_features, generator=torch.Generator().manual_seed(5)).to(DEV)
    out, jvp_out = torch.func.jvp(lambda t: ops.CudaLinearDualFunction.apply(t, *rest), (x[0],), (tangent,))
    torch.testing.assert_close(out, through_op(x[0]).detach(), rtol=0, atol=0)
    torch.testing.assert_close(jvp_out, tangent @ w.T, rtol=1e-4, atol=1e-4)
