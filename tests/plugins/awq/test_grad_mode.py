"""AWQ's GPU op in grad mode: ``fvq_awq::linear`` has an autograd formula (the gradient goes through the de-quantized
weight, as the CPU path's ``F.linear`` computes it), so a backward and ``torch.compile`` in grad mode work. On CPU the
op runs the Triton kernels under the interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from fvq_awq import ops  # noqa: E402

from fastvideo_quant.testing.conformance import checkpoint as ck  # noqa: E402
from fastvideo_quant.testing.conformance.subject import Subject  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _loaded_layer(dtype: torch.dtype) -> torch.nn.Module:
    subject = Subject(method="awq")
    return ck.build_loaded(subject, "column", ck.make_checkpoint(subject, "column"), bias=True, dtype=dtype).to(DEV)


def _args(layer, x):
    lay = layer.awq_layout
    return (x, layer.qweight_k, layer.zeros_k, layer.scales_k, layer.bias, lay.in_features, lay.out_features, lay.group,
            lay.bk8)


def test_backward_goes_through_the_dequantized_weight():
    layer = _loaded_layer(torch.float32)
    layer.bias.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, layer.awq_layout.in_features, generator=g).to(DEV).requires_grad_()
    grad = torch.randn(4, layer.awq_layout.out_features, generator=g).to(DEV)
    ops.linear(*_args(layer, x)).backward(grad)
    assert torch.allclose(x.grad, grad @ layer.quant_method.dequantize_weight(layer), rtol=1e-4, atol=1e-4)
    assert torch.allclose(layer.bias.grad, grad.sum(0))


def test_compile_in_grad_mode_matches_eager():
    layer = _loaded_layer(torch.float32)
    x = torch.randn(4, layer.awq_layout.in_features, generator=torch.Generator().manual_seed(4)).to(DEV)
    x.requires_grad_()
    eager = ops.linear(*_args(layer, x))
    torch._dynamo.reset()
    out = torch.compile(lambda t: ops.linear(*_args(layer, t)), fullgraph=True, backend="aot_eager")(x)
    assert out.requires_grad and torch.allclose(out.detach(), eager.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_path_saves_the_int4_tensors_not_a_float_weight(dtype):
    """The CPU path in grad mode (a LoRA over the layer): its backward keeps the kernel tensors and de-quantizes again;
    recorded through F.linear it had kept the float32 [out, in] weight alive until backward."""
    layer = _loaded_layer(dtype).cpu()
    layer.bias.requires_grad_(True)
    out_features, in_features = layer.awq_layout.out_features, layer.awq_layout.in_features
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, in_features, generator=g).to(dtype).requires_grad_()
    saved = []

    def keep(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = layer.quant_method.apply(layer, x, layer.bias)
    float_weights = [(shape, d) for shape, d in saved if d == torch.float32 and sorted(shape) == sorted(
        (out_features, in_features))]  # (F.linear saves it as W.t())
    assert not float_weights, saved
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    w = layer.quant_method.dequantize_weight(layer)
    torch.testing.assert_close(x.grad.float(), (grad.float() @ w), rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-2 if dtype != torch.float32 else 1e-5)
    torch.testing.assert_close(layer.bias.grad.float(), grad.float().sum((0, 1)), rtol=1e-2, atol=1e-2)
