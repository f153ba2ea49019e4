"""``weights_processed(layer)``: the public answer to "are this layer's weights processed?", which a method's
``apply`` asks before raising ``not_processed_error(layer)`` (docs/plugins.md, the linear method's step 5)."""

from __future__ import annotations

import pytest
import torch
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.errors import NotProcessedError
from fastvideo_quant.layers.base import not_processed_error, weights_processed
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.selection import resolve_quant_config


class GuardedMethod(toy_method.ToyLinearMethod):
    """A third-party method written as docs/plugins.md says: no processed flag of its own."""

    def process_weights_after_loading(self, layer):
        assert not weights_processed(layer)  # recorded when this returns, not before
        layer.weight_t = torch.nn.Parameter(layer.weight.detach().t().contiguous(), requires_grad=False)

    def apply(self, layer, x, bias=None):
        if not weights_processed(layer):
            raise not_processed_error(layer)
        return torch.nn.functional.linear(x, (layer.weight_t.t().float() * layer.weight_scale[:, None]).to(x.dtype),
                                          bias)


class GuardedConfig(toy_method.ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy_guarded"

    def get_quant_method(self, layer, prefix):
        return GuardedMethod()


class Plugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(GuardedConfig, GuardedMethod, weight_loader_v2=True)


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugins.register_plugin(Plugin(), "toy_guarded")
    yield
    plugins.unregister_plugin("toy_guarded")


def _model(method: str) -> torch.nn.Module:
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(32, 16, bias=False, params_dtype=torch.float32,
                                  quant_config=resolve_quant_config(method), prefix="proj")
    return model


def _fill(model: torch.nn.Module, method: str) -> None:
    with torch.no_grad():
        if method == "toy_guarded":
            model.proj.weight.copy_(torch.randint(-127, 128, (16, 32), dtype=torch.int8))
            model.proj.weight_scale.fill_(0.01)
        else:  # quantized on load from the float weight
            model.proj.weight.copy_(torch.randn(16, 32))


@pytest.mark.parametrize("method", ["toy_guarded", "fp8", "int8"])
def test_false_until_processed_true_after_and_false_again_after_a_rebuild(method: str) -> None:
    if method == "int8":
        pytest.importorskip("bitsandbytes")
    model = _model(method)
    x = torch.randn(3, 32)
    assert weights_processed(model.proj) is False
    with pytest.raises(NotProcessedError, match=r"layer 'proj' \(ReplicatedLinear\): forward before its weights"):
        model.proj(x)
    _fill(model, method)
    process_weights_after_loading(model)
    assert weights_processed(model.proj) is True
    model.proj(x)  # runs
    model.to("meta").to_empty(device="cpu")  # its tensors were discarded: a fresh build
    assert weights_processed(model.proj) is False
    with pytest.raises(NotProcessedError, match=r"layer 'proj'"):
        model.proj(x)


def test_a_direct_call_that_raises_is_not_processed() -> None:
    model = _model("toy_guarded")
    model.proj.weight = None  # the method's processing raises on it
    with pytest.raises(AttributeError):
        model.proj.quant_method.process_weights_after_loading(model.proj)
    assert weights_processed(model.proj) is False


def test_any_module() -> None:
    """A module no method ever processed (no record at all) is not processed."""
    assert weights_processed(torch.nn.Linear(2, 2)) is False
