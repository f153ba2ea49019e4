"""Layers call ``create_weights`` the one way the contract says (by keyword, every layer kind) and check what comes
back: a signature that cannot take the call, or plain parameters from a ``weight_loader_v2=True`` method, is a
PluginError naming the method class and its plugin at construction (were a TypeError, or an AttributeError such as
``'Parameter' object has no attribute 'load_qkv_weight'`` on the first load)."""

from __future__ import annotations

import pytest
import torch
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.errors import PluginError
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.plugins import hookimpl

LAYERS = {
    "replicated": lambda q: ReplicatedLinear(32, 16, bias=False, quant_config=q, prefix="m.r"),
    "column": lambda q: ColumnParallelLinear(32, 16, bias=False, quant_config=q, prefix="m.c"),
    "merged": lambda q: MergedColumnParallelLinear(32, [16, 16], bias=False, quant_config=q, prefix="m.gate_up_proj"),
    "qkv": lambda q: QKVParallelLinear(32, 8, 2, 1, bias=False, quant_config=q, prefix="m.qkv_proj"),
    "row": lambda q: RowParallelLinear(32, 16, bias=False, quant_config=q, prefix="m.o"),
}


def _register(method_cls, v2: bool, name: str):
    class Config(toy_method.ToyConfig):
        @classmethod
        def get_name(cls) -> str:
            return name

        def get_quant_method(self, layer, prefix):
            return method_cls()

    class Plugin:
        @hookimpl
        def register_quantization_methods(self, register) -> None:
            register(Config, method_cls, weight_loader_v2=v2)

    plugins.register_plugin(Plugin(), name=name)
    return Config


@pytest.fixture
def registered():
    names = []

    def register(method_cls, v2, name):
        names.append(name)
        return _register(method_cls, v2, name)

    yield register
    for name in names:
        plugins.unregister_plugin(name)


class KeywordOnly(toy_method.ToyLinearMethod):
    """Takes the contract's arguments by keyword only: works for every layer kind (ReplicatedLinear passed them by
    position)."""

    def create_weights(self, layer, *, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)


class RenamedArgs(toy_method.ToyLinearMethod):
    def create_weights(self, layer, in_per_part, out_parts, input_size, output_size, params_dtype, **extra):  # bug
        super().create_weights(layer, in_per_part, out_parts, input_size, output_size, params_dtype, **extra)


class PlainParameters(toy_method.ToyLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        out = sum(output_partition_sizes)
        layer.register_parameter("weight_scale", torch.nn.Parameter(torch.ones(out), requires_grad=False))  # bug


@pytest.mark.parametrize("kind", LAYERS)
def test_keyword_arguments_reach_every_layer_kind(registered, kind) -> None:
    config = registered(KeywordOnly, True, "toy-kwonly")()
    layer = LAYERS[kind](config)
    assert layer.weight.shape[1] == layer.input_size // layer.tp_size


@pytest.mark.parametrize("kind", LAYERS)
def test_a_signature_the_layers_cannot_call_names_the_plugin(registered, kind) -> None:
    config = registered(RenamedArgs, True, "toy-renamed")()
    with pytest.raises(PluginError) as info:
        LAYERS[kind](config)
    msg = str(info.value)
    assert "method 'toy-renamed' of plugin 'toy-renamed' (in-process)" in msg, msg
    assert "RenamedArgs.create_weights(layer, in_per_part, out_parts," in msg and "cannot be called" in msg, msg
    assert "expected create_weights(self, layer, input_size_per_partition, output_partition_sizes" in msg, msg


@pytest.mark.parametrize("kind", LAYERS)
def test_plain_parameters_from_a_v2_method_name_the_parameter(registered, kind) -> None:
    config = registered(PlainParameters, True, "toy-plain")()
    with pytest.raises(PluginError) as info:
        LAYERS[kind](config)
    msg = str(info.value)
    assert "method 'toy-plain' of plugin 'toy-plain'" in msg and "weight_loader_v2=True" in msg, msg
    assert "plain parameters ['weight_scale']" in msg and "fastvideo_quant.parameter" in msg, msg
    # Registered as v1, the same method builds (its parameters are loaded by the layer's own weight_loader).
    LAYERS[kind](registered(type("PlainParametersV1", (PlainParameters,), {}), False, "toy-plain-v1")())
