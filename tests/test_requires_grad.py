"""docs/guide/loading.md ("Gradients"): parameters are created frozen, as in vLLM, and an unquantized layer trains once
its weight is turned on by hand."""

import torch

from fastvideo_quant.layers.linear import ReplicatedLinear


def test_parameters_are_created_frozen():
    layer = ReplicatedLinear(8, 4, bias=True)
    assert {n: p.requires_grad for n, p in layer.named_parameters()} == {"weight": False, "bias": False}


def test_unquantized_layer_trains_once_turned_on():
    torch.manual_seed(0)
    layer = ReplicatedLinear(8, 4, bias=True)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.zero_()
    layer.weight.requires_grad_(True)
    x = torch.randn(3, 8)
    out, _ = layer(x)
    out.square().sum().backward()
    expected = (2 * out.detach()).t() @ x  # d/dW sum((xW^T + b)^2)
    torch.testing.assert_close(layer.weight.grad, expected)
    assert layer.bias.grad is None
