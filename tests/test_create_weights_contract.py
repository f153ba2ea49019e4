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
from fastvideo_quant.parameter import ChannelQuantScaleParameter
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


class SwappedDims(toy_method.ToyLinearMethod):
    """vLLM porting slip: the weight created [out, in] but declared input_dim=0, output_dim=1."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        from fastvideo_quant.parameter import ModelWeightParameter

        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        layer.weight = ModelWeightParameter(data=layer.weight.data, input_dim=0, output_dim=1,  # bug
                                            weight_loader=extra["weight_loader"])


class ScaleFromInputSize(toy_method.ToyLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        layer.weight_scale = ChannelQuantScaleParameter(data=torch.empty(input_size_per_partition), output_dim=0,  # bug
                                                        weight_loader=extra["weight_loader"])


#: Not square (a square layer's swapped dims have the right sizes): 48 in.
WIDE = {
    "replicated": lambda q: ReplicatedLinear(48, 16, bias=False, quant_config=q, prefix="m.r"),
    "column": lambda q: ColumnParallelLinear(48, 16, bias=False, quant_config=q, prefix="m.c"),
    "merged": lambda q: MergedColumnParallelLinear(48, [16, 16], bias=True, quant_config=q, prefix="m.gate_up_proj"),
    "qkv": lambda q: QKVParallelLinear(48, 8, 2, 1, bias=False, quant_config=q, prefix="m.qkv_proj"),
    "row": lambda q: RowParallelLinear(48, 16, bias=False, quant_config=q, prefix="m.o"),
}


@pytest.mark.parametrize("kind", WIDE)
def test_a_parameter_sized_against_its_dims_names_them_at_build(registered, kind) -> None:
    """Before, the layer built and the load blamed the checkpoint ('its size fits shard(s) q: the mapping is
    positional'), or, for a square layer at TP=1, loaded."""
    if kind in ("merged", "qkv"):  # (LAYERS' are 32 in, 32 out: square, so swapped dims cannot be told)
        LAYERS[kind](registered(SwappedDims, True, "toy-swapped-square")())
    with pytest.raises(PluginError) as info:
        WIDE[kind](registered(SwappedDims, True, "toy-swapped")())
    msg = str(info.value)
    assert info.value.contract == "create_weights", msg
    assert msg.startswith("method 'toy-swapped' of plugin 'toy-swapped' (in-process): SwappedDims.create_weights "
                          "registered 'weight' (ModelWeightParameter, shape ("), msg
    assert "output_dim=1, input_dim=0) on " in msg and "along output_dim=1 it holds 48, expected " in msg, msg
    assert f"on {type(WIDE[kind](None)).__name__} " in msg, msg
    assert "a weight [out, in] has output_dim=0, input_dim=1" in msg, msg

    with pytest.raises(PluginError, match=r"registered 'weight_scale' \(ChannelQuantScaleParameter, shape \(48,\), "
                                          r"output_dim=0\) .*along output_dim=0 it holds 48, expected \d+ \(the layer's "
                                          r"output partition sizes \[[\d, ]+\] add up to \d+\)"):
        WIDE[kind](registered(ScaleFromInputSize, True, "toy-scale-in")())


@pytest.mark.parametrize("kwargs, error", [
    ({"output_dim": 5, "input_dim": 1}, r"ModelWeightParameter: output_dim=5 is not a dim of its data, shape \(4, 8\) "
                                        r"\(2 dims: output_dim must be 0\.\.1\)"),
    ({"output_dim": 0, "input_dim": 0}, r"ModelWeightParameter: output_dim and input_dim are both 0 \(data shape "
                                        r"\(4, 8\)\); .*output_dim=0, input_dim=1\)"),
    ({"output_dim": -1, "input_dim": 0}, r"output_dim=-1 is not a dim of its data"),
])
def test_parameter_classes_refuse_dims_their_data_cannot_have(kwargs, error) -> None:
    from fastvideo_quant.parameter import ModelWeightParameter

    with pytest.raises(ValueError, match=error):
        ModelWeightParameter(data=torch.empty(4, 8), weight_loader=lambda *a: None, **kwargs)
    with pytest.raises(TypeError, match=r"ModelWeightParameter: output_dim must be an int \(a dim of the data\), found "
                                        r"str '0'"):
        ModelWeightParameter(data=torch.empty(4, 8), output_dim="0", input_dim=1, weight_loader=lambda *a: None)


def test_channel_and_packed_parameters_refuse_impossible_dims() -> None:
    from fastvideo_quant.parameter import PackedvLLMParameter

    with pytest.raises(ValueError, match=r"ChannelQuantScaleParameter: output_dim=1 is not a dim of its data, shape "
                                         r"\(16,\) \(1 dims"):
        ChannelQuantScaleParameter(data=torch.empty(16), output_dim=1, weight_loader=lambda *a: None)
    with pytest.raises(ValueError, match=r"PackedvLLMParameter: packed_dim=2 is not a dim of its data"):
        PackedvLLMParameter(data=torch.empty(4, 2, dtype=torch.int32), input_dim=0, output_dim=1, packed_dim=2,
                            packed_factor=8, weight_loader=lambda *a: None)
    with pytest.raises(ValueError, match=r"packed_factor must be an int >= 1 .*found 0"):
        PackedvLLMParameter(data=torch.empty(4, 2, dtype=torch.int32), input_dim=0, output_dim=1, packed_dim=1,
                            packed_factor=0, weight_loader=lambda *a: None)
    ok = PackedvLLMParameter(data=torch.empty(4, 2, dtype=torch.int32), input_dim=0, output_dim=1, packed_dim=1,
                             packed_factor=8, weight_loader=lambda *a: None)
    assert (ok.output_dim, ok.input_dim, ok.packed_dim, ok.packed_factor) == (1, 0, 1, 8)


class ImpossibleDim(toy_method.ToyLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        layer.weight_scale = ChannelQuantScaleParameter(data=torch.empty(sum(output_partition_sizes)), output_dim=1,  # bug
                                                        weight_loader=extra["weight_loader"])


def test_an_exception_inside_create_weights_names_the_plugin_and_the_layer(registered) -> None:
    """A parameter class refusing a dim raises inside the plugin's create_weights: a bare ValueError a model author
    could not place; now the plugin's PluginError (contract create_weights) with the layer's sizes."""
    with pytest.raises(PluginError) as info:
        WIDE["qkv"](registered(ImpossibleDim, True, "toy-impossible")())
    msg = str(info.value)
    assert info.value.contract == "create_weights" and isinstance(info.value.__cause__, ValueError), msg
    assert msg.startswith("method 'toy-impossible' of plugin 'toy-impossible' (in-process): ImpossibleDim.create_weights "
                          "raised ValueError: ChannelQuantScaleParameter: output_dim=1 is not a dim of its data"), msg
    assert "(building QKVParallelLinear 'm.qkv_proj': input_size_per_partition=48, output_partition_sizes=[16, 8, 8], " \
           "TP rank 0 of 1)" in msg, msg
