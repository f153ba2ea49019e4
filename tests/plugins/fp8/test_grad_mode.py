"""fp8 in grad mode: torch.compile traces a backward (AOTAutograd), and ``torch._scaled_mm`` has no derivative; the
method's autograd function passes the gradient straight through the activation quantization to the de-quantized
weight."""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import fp8_layer

CONFIGS = {"tensor": {"quant_method": "fp8"}, "channel": {"quant_method": "fp8", "weight_scale_strategy": "channel"},
           "block": {"quant_method": "fp8", "weight_block_size": [16, 16]}, "online": {}}


@pytest.mark.parametrize("name", CONFIGS)
def test_compile_in_grad_mode_matches_eager(name):
    g = torch.Generator().manual_seed(0)
    layer = fp8_layer(torch.randn(64, 64, generator=g), CONFIGS[name], bias=torch.randn(64, generator=g))
    x = torch.randn(5, 64, generator=g).to(torch.bfloat16).requires_grad_()
    eager = layer.quant_method.apply(layer, x, layer.bias)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True, backend="aot_eager")
    out = fn(x)
    assert out.requires_grad and torch.equal(out.detach(), eager.detach())


@pytest.mark.parametrize("name", CONFIGS)
def test_backward_goes_through_the_dequantized_weight(name):
    g = torch.Generator().manual_seed(1)
    layer = fp8_layer(torch.randn(64, 64, generator=g), CONFIGS[name], dtype=torch.float32)
    x = torch.randn(5, 64, generator=g, requires_grad=True)
    grad = torch.randn(5, 64, generator=g)
    layer.quant_method.apply(layer, x, None).backward(grad)
    expected = grad @ layer.quant_method.dequantize_weight(layer)
    assert torch.allclose(x.grad, expected, rtol=1e-5, atol=1e-5)
