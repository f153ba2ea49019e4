"""A layer processed by a direct call of its method's process_weights_after_loading (vLLM's loader loop) is recorded
as processed for every method, not only the built-ins: a later model-wide process skips it, a later load is refused,
and its state_dict says it is in the kernel format."""

from __future__ import annotations

import pytest
import torch
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.errors import ModelStateError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint, process_weights_after_loading
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.selection import resolve_quant_config


class TransposingMethod(toy_method.ToyLinearMethod):
    """A third-party method whose processing must run once: it transposes the weight into the kernel layout."""

    calls = 0

    def process_weights_after_loading(self, layer):
        TransposingMethod.calls += 1
        layer.weight_t = torch.nn.Parameter(layer.weight.detach().t().contiguous(), requires_grad=False)

    def apply(self, layer, x, bias=None):
        w = layer.weight_t.t().float() * layer.weight_scale[:, None]
        return torch.nn.functional.linear(x, w.to(x.dtype), bias)


class KernelLayoutMethod(TransposingMethod):
    """A subclass extending its parent's processing through super()."""

    def process_weights_after_loading(self, layer):
        super().process_weights_after_loading(layer)
        layer.extra = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


class TransposeMixin:
    """Processing kept in a mixin that is no method class, listed first (``class M(TransposeMixin, ToyLinearMethod)``):
    only a method class's own ``process_weights_after_loading`` was recorded, so a direct call left the layer
    unprocessed and a second call transposed again."""

    def process_weights_after_loading(self, layer):
        TransposingMethod.calls += 1
        layer.weight_t = torch.nn.Parameter(layer.weight.detach().t().contiguous(), requires_grad=False)


class MixinMethod(TransposeMixin, toy_method.ToyLinearMethod):
    apply = TransposingMethod.apply


class Config(toy_method.ToyConfig):
    method_cls = TransposingMethod

    @classmethod
    def get_name(cls) -> str:
        return "toy_transposing"

    def get_quant_method(self, layer, prefix):
        return self.method_cls()


class SubConfig(Config):
    method_cls = KernelLayoutMethod

    @classmethod
    def get_name(cls) -> str:
        return "toy_kernel_layout"


class MixinConfig(Config):
    method_cls = MixinMethod

    @classmethod
    def get_name(cls) -> str:
        return "toy_mixin_processing"


class Plugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(Config, TransposingMethod, weight_loader_v2=True)
        register(SubConfig, KernelLayoutMethod, weight_loader_v2=True)
        register(MixinConfig, MixinMethod, weight_loader_v2=True)


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugins.register_plugin(Plugin(), "toy_transposing")
    yield
    plugins.unregister_plugin("toy_transposing")


def _model(method: str) -> torch.nn.Module:
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(32, 16, bias=False, quant_config=resolve_quant_config(method), prefix="proj")
    with torch.no_grad():
        model.proj.weight.copy_(torch.randint(-127, 128, (16, 32), dtype=torch.int8))
        model.proj.weight_scale.fill_(0.01)
    return model


@pytest.mark.parametrize("method", ["toy_transposing", "toy_kernel_layout", "toy_mixin_processing"])
def test_a_direct_call_is_recorded(tmp_path, method) -> None:
    model = _model(method)
    TransposingMethod.calls = 0
    for module in model.modules():  # vLLM's loader loop
        if hasattr(module, "quant_method"):
            module.quant_method.process_weights_after_loading(module)
    assert TransposingMethod.calls == 1
    assert model.proj._fvq_weights_processed is True
    process_weights_after_loading(model)  # a model-wide call does not process the layer again
    assert TransposingMethod.calls == 1
    assert model.proj.state_dict()["_extra_state"]["processed"] is True
    with pytest.raises(ModelStateError, match="process_weights_after_loading"):
        load_checkpoint(model, tmp_path)
    x = torch.randn(3, 32)
    ref = x @ (model.proj.weight.float() * 0.01).t()
    torch.testing.assert_close(model.proj(x)[0], ref)


def test_a_failed_direct_call_is_not_recorded() -> None:
    model = _model("toy_transposing")
    model.proj.weight = None  # the method's processing raises on it
    with pytest.raises(AttributeError):
        model.proj.quant_method.process_weights_after_loading(model.proj)
    assert not getattr(model.proj, "_fvq_weights_processed", False)


@pytest.mark.parametrize("method", ["toy_transposing", "toy_kernel_layout", "toy_mixin_processing"])
def test_a_second_direct_call_is_refused_by_name(method) -> None:
    """The kernel format is not the checkpoint format: processing it again raised whatever the method's conversion
    raised on it (a bare RuntimeError / AttributeError for the built-ins)."""
    model = _model(method)
    model.proj.quant_method.process_weights_after_loading(model.proj)
    before = model.proj.weight_t.clone()
    with pytest.raises(ModelStateError, match=r"process_weights_after_loading: layer 'proj' is already processed"):
        model.proj.quant_method.process_weights_after_loading(model.proj)
    assert TransposingMethod.calls >= 1 and torch.equal(model.proj.weight_t, before)


@pytest.mark.parametrize("method", ["fp8", "int8", "awq"])
def test_a_second_direct_call_of_a_built_in_method_is_refused(tmp_path, method) -> None:
    from module_state_helpers import METHODS, config, write_checkpoint

    from fastvideo_quant.layers.linear import QKVParallelLinear

    key = {"fp8": "fp8-tensor", "int8": "int8", "awq": "awq"}[method]
    layer = QKVParallelLinear(64, 16, 4, 2, quant_config=config(key), prefix="qkv_proj")
    assert key in METHODS
    model = torch.nn.Module()
    model.qkv_proj = layer
    ck = write_checkpoint(key, tmp_path / key)
    from safetensors.torch import load_file, save_file

    parts = ("q_proj", "k_proj", "v_proj")
    tensors = {k: v for k, v in load_file(str(ck / "model.safetensors")).items() if k.split(".")[0] in parts}
    save_file(tensors, str(ck / "model.safetensors"))
    load_checkpoint(model, ck)
    with pytest.raises(ModelStateError, match="layer 'qkv_proj' is already processed"):
        layer.quant_method.process_weights_after_loading(layer)
