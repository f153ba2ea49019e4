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
