"""A 0-row input in grad mode (an empty micro-batch, an empty token set in a training step) stays in the autograd
graph, as ``F.linear``'s output does: int8 and fp8 returned a new empty tensor, and backward failed with "element 0 of
tensors does not require grad" naming neither the layer nor the cause."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading
from fastvideo_quant.quantization.selection import resolve_quant_config


def _layer(method: str | None) -> ReplicatedLinear:
    if method == "int8":
        pytest.importorskip("bitsandbytes")
    config = None if method is None else resolve_quant_config(method)
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 32, bias=True, params_dtype=torch.bfloat16, quant_config=config, prefix="proj")
    with torch.no_grad():
        model.proj.weight.copy_(torch.randn(32, 64))
        model.proj.bias.copy_(torch.randn(32))
    process_weights_after_loading(model)
    return model.proj


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (0, 3, 5, 64)])
@pytest.mark.parametrize("method", [None, "fp8", "int8"])
def test_no_rows_backward_like_f_linear(method: str | None, shape: tuple[int, ...]) -> None:
    layer = _layer(method)
    layer.bias.requires_grad_(True)
    x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
    out, _ = layer(x)
    assert out.shape == (*shape[:-1], 32) and out.dtype == torch.bfloat16
    assert out.requires_grad
    out.float().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert layer.bias.grad is not None and torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_no_rows_without_grad_is_a_plain_tensor(method: str) -> None:
    layer = _layer(method)
    with torch.no_grad():
        out, _ = layer(torch.randn(0, 64, dtype=torch.bfloat16))
    assert out.shape == (0, 32) and out.grad_fn is None
    out, _ = layer(torch.randn(0, 64, dtype=torch.bfloat16))  # (grad mode, nothing requires grad)
    assert out.grad_fn is None
