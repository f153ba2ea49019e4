"""docs/guide/loading.md ("Gradients"): parameters are created frozen, as in vLLM, and an unquantized layer trains once
its weight is turned on by hand; a quantized layer's codes and scales get no gradient, and one turned on is refused at
the next grad-mode forward."""

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint

from fastvideo_quant.errors import ModelStateError
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


# --- a quantized layer's codes and scales get no gradient: one that requires grad is refused at the forward ---------

QUANTIZED = [m for m in METHODS if m != "unquantized"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: loaded(m, write_checkpoint(m, root / m)) for m in METHODS}


def _trainable(model: torch.nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _frozen_again(model: torch.nn.Module, before: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(before[n])


@pytest.mark.parametrize("method", [m for m in QUANTIZED if m.startswith("fp8")])
def test_model_requires_grad_on_an_fp8_model_is_refused_at_the_forward(method, models):
    """torch lets a float8 tensor require grad, so model.requires_grad_(True) flipped the fp8 weights and scales
    without a word; their .grad stayed None after backward and an optimizer skipped them."""
    model = models[method]
    before = _trainable(model)
    model.requires_grad_(True)
    try:
        with pytest.raises(ModelStateError) as err:
            model(torch.randn(3, HIDDEN))
        msg = str(err.value)
        assert "fp8 layer 'qkv_proj'" in msg and "parameter 'weight'" in msg and "float8_e4m3fn" in msg
        assert "requires_grad_(False)" in msg
        with torch.no_grad():  # outside grad mode nothing records, so nothing is refused
            model(torch.randn(3, HIDDEN))
    finally:
        _frozen_again(model, before)


@pytest.mark.parametrize("method", QUANTIZED)
def test_a_quantized_layers_scale_that_requires_grad_is_named(method, models):
    """The scales are float32 parameters (int8's weight_scale and SCB, fp8's weight_scale): turning one on by hand
    was as silent. AWQ keeps its kernel tensors as buffers, which do not train, so there is nothing to refuse."""
    model = models[method]
    params = dict(model.qkv_proj.named_parameters())
    scale = next((n for n in ("weight_scale", "weight_scale_inv", "SCB") if n in params), None)
    if scale is None:
        assert method == "awq" and set(params) <= {"bias"}
        return
    before = _trainable(model)
    params[scale].requires_grad_(True)
    try:
        x = torch.randn(3, HIDDEN, requires_grad=True)
        with pytest.raises(ModelStateError, match=rf"layer 'qkv_proj': parameter '{scale}' \(torch.float32"):
            model(x)
        params[scale].requires_grad_(False)
        model(x).sum().backward()  # frozen again, the same model trains its input's gradient
        assert x.grad is not None
    finally:
        _frozen_again(model, before)


@pytest.mark.parametrize("method", QUANTIZED)
def test_a_quantized_layers_bias_still_trains(method, models):
    model = models[method]
    before = _trainable(model)
    model.qkv_proj.bias.requires_grad_(True)
    try:
        model(torch.randn(3, HIDDEN)).square().sum().backward()
        assert model.qkv_proj.bias.grad is not None and model.qkv_proj.bias.grad.abs().sum() > 0
    finally:
        model.qkv_proj.bias.grad = None
        _frozen_again(model, before)


@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_an_awq_kernel_buffer_that_requires_grad_is_named(x_requires_grad, models):
    """AWQ keeps its codes and scales as buffers. scales_k turned on by hand got a real gradient on the CPU path when
    the input did not require grad (autograd recorded the de-quantization) and None when it did (the straight-through
    Function): an optimizer updated it or skipped it, by path."""
    model = models["awq"]
    buf = model.qkv_proj.scales_k
    buf.requires_grad_(True)
    try:
        x = torch.randn(3, HIDDEN, requires_grad=x_requires_grad)
        with pytest.raises(ModelStateError, match=r"AWQ layer 'qkv_proj': buffer 'scales_k' \(torch.float16, shape"):
            model(x)
    finally:
        buf.requires_grad_(False)
    model(torch.randn(3, HIDDEN))  # frozen again: runs


@pytest.mark.parametrize("method", ["fp8-tensor", "fp8-block", "awq"])
def test_torch_func_grad_over_a_kernel_buffer_is_refused(method, models):
    """torch.func.grad over functional_call with respect to a kernel buffer (fp8's weight_scale_scalar gave all zeros,
    AWQ's scales_k a gradient the method does not define): refused, naming it. (fp8-tensor's fused qkv_proj holds
    per-part scales, so its one-scale buffer is o_proj's.)"""
    model = models[method]
    name = {"fp8-tensor": "o_proj.weight_scale_scalar", "fp8-block": "o_proj.weight_scale_cols",
            "awq": "o_proj.scales_k"}[method]
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    x = torch.randn(3, HIDDEN)

    def loss(t):
        return torch.func.functional_call(model, {**tensors, name: t}, (x,)).sum()

    with pytest.raises(ModelStateError, match=rf"buffer '{name.split('.')[1]}'"):
        torch.func.grad(loss)(tensors[name])


@pytest.mark.parametrize("method", ["int8", "fp8-tensor", "awq"])
def test_a_compiled_model_refuses_a_quantized_tensor_that_requires_grad(method, models):
    """fp8 and AWQ ran the refusal in eager only: compiled, the float8 weight's or scales_k's .grad stayed None
    without a word. (With fullgraph=True dynamo wraps the error in its own, which carries this message.)"""
    model = models[method]
    layer = model.qkv_proj
    tensor = layer.scales_k if method == "awq" else layer.weight_scale
    compiled = torch.compile(model, backend="aot_eager")
    compiled(torch.randn(3, HIDDEN, requires_grad=True)).sum().backward()  # nothing turned on: trains the input
    tensor.requires_grad_(True)
    try:
        with pytest.raises(ModelStateError, match=r"layer 'qkv_proj': (parameter 'weight_scale'|buffer 'scales_k')"):
            compiled(torch.randn(3, HIDDEN, requires_grad=True))
    finally:
        tensor.requires_grad_(False)
        torch._dynamo.reset()
