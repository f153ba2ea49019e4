"""int8 in grad mode: neither the Triton kernels nor bitsandbytes' ops have a derivative; the method's autograd
function passes the gradient straight through the activation quantization to the de-quantized weight."""

from __future__ import annotations

import pytest
import torch
from int8_helpers import TRITON, config
from test_apply import DEV, _layer


@pytest.mark.parametrize("backend", ["bitsandbytes", TRITON])
def test_backward_goes_through_the_dequantized_weight(backend):
    layer = _layer(config(fvq_backend=backend), torch.float32, bias=True).to(DEV)  # (Triton runs CUDA tensors there)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, layer.weight.shape[1], generator=g).to(DEV).requires_grad_()
    grad = torch.randn(5, layer.weight.shape[0], generator=g).to(DEV)
    layer.quant_method.apply(layer, x, layer.bias).backward(grad)
    expected = grad @ layer.quant_method.dequantize_weight(layer)
    assert torch.allclose(x.grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["bitsandbytes", TRITON])
def test_compile_in_grad_mode_matches_eager(backend):
    layer = _layer(config(fvq_backend=backend), torch.float32, bias=True).to(DEV)
    x = torch.randn(5, layer.weight.shape[1], generator=torch.Generator().manual_seed(2)).to(DEV).requires_grad_()
    eager = layer.quant_method.apply(layer, x, layer.bias)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True, backend="aot_eager")
    out = fn(x)
    assert out.requires_grad and torch.allclose(out.detach(), eager.detach(), rtol=1e-4, atol=1e-4)
