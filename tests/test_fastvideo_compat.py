"""What a method or config ported from FastVideo (or vLLM) keeps. Parameter classes take their constructors and
methods, so a ported ``create_weights`` runs: ``BlockQuantScaleParameter`` without ``block_size`` (the layer reads the config's
``weight_block_size``, as their layers do), ``adjust_shard_indexes_for_packing`` on ``PackedColumnParameter`` too
(AWQ's ``qzeros``), and a ``Fraction`` packing factor (3-bit values, ``Fraction(32, 3)`` a word). Before, each was a
TypeError or AttributeError in the ported code, or a ValueError refusing the Fraction. And an unregistered config
written as FastVideo's, ``get_name`` / ``get_supported_act_dtypes`` instance methods, builds its layers (was a bare
``TypeError: get_name() missing 1 required positional argument: 'self'``)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.errors import MethodUnavailableError, PluginError, WeightLoadError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, ReplicatedLinear
from fastvideo_quant.parameter import (
    BlockQuantScaleParameter,
    ModelWeightParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
)
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import QuantizationConfig


class BlockScaled(toy_method.ToyLinearMethod):
    """vLLM's fp8 block layout, its scale created as vLLM creates it: no block_size."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        out, loader = sum(output_partition_sizes), extra["weight_loader"]
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(out, input_size_per_partition), input_dim=1, output_dim=0, weight_loader=loader))
        layer.register_parameter("weight_scale_inv", BlockQuantScaleParameter(
            data=torch.empty(-(-out // 16), -(-input_size_per_partition // 16)), input_dim=1, output_dim=0,
            weight_loader=loader))


def _config(name: str, block_size):
    class Config(toy_method.ToyConfig):
        weight_block_size = block_size

        @classmethod
        def get_name(cls) -> str:
            return name

        def get_quant_method(self, layer, prefix):
            return BlockScaled()

    class Plugin:
        @hookimpl
        def register_quantization_methods(self, register) -> None:
            register(Config, BlockScaled, weight_loader_v2=True)

    plugins.register_plugin(Plugin(), name=name)
    return Config()


@pytest.fixture
def configs():
    names = []

    def make(name, block_size):
        names.append(name)
        return _config(name, block_size)

    yield make
    for name in names:
        plugins.unregister_plugin(name)


def test_block_scales_without_block_size_take_the_configs(configs) -> None:
    layer = MergedColumnParallelLinear(32, [32, 16], bias=False, quant_config=configs("toy-block", [16, 16]),
                                       prefix="m.gate_up_proj")
    scale = layer.weight_scale_inv
    assert scale.block_size == (16, 16)
    scale.weight_loader(scale, torch.full((2, 2), 5.0), 0)
    scale.weight_loader(scale, torch.full((1, 2), 7.0), 1)  # part 1 starts at row 32: block row 2
    assert scale.data.tolist() == [[5.0, 5.0], [5.0, 5.0], [7.0, 7.0]]


def test_block_scales_without_any_block_size_name_both_fixes(configs) -> None:
    with pytest.raises(PluginError, match=r"registered block scales 'weight_scale_inv' on MergedColumnParallelLinear "
                                          r"'m.gate_up_proj' without block_size, and its config Config has no "
                                          r"weight_block_size to take it from; pass BlockQuantScaleParameter\("
                                          r"block_size=\(bn, bk\), \.\.\.\), or give the config weight_block_size"):
        MergedColumnParallelLinear(32, [32, 16], bias=False, quant_config=configs("toy-noblock", None),
                                   prefix="m.gate_up_proj")
    with pytest.raises(PluginError, match=r"Config.weight_block_size: block_size must be two positive ints \(bn, "
                                          r"bk\), found \[16\]"):
        MergedColumnParallelLinear(32, [32, 16], bias=False, quant_config=configs("toy-badblock", [16]),
                                   prefix="m.gate_up_proj")


def test_block_size_is_checked_when_given() -> None:
    with pytest.raises(ValueError, match=r"BlockQuantScaleParameter: block_size must be two positive ints \(bn, bk\), "
                                         r"found \(128, 0\)"):
        BlockQuantScaleParameter(block_size=(128, 0), data=torch.empty(1, 1), output_dim=0, input_dim=1,
                                 weight_loader=lambda *a: None)
    loose = BlockQuantScaleParameter(data=torch.empty(2, 1), output_dim=0, input_dim=1, weight_loader=lambda *a: None)
    with pytest.raises(WeightLoadError, match=r"no block_size, so rows cannot be converted to block rows"):
        loose.shard_units(0, 16)


def test_packed_column_parameter_adjusts_shard_indexes_as_vllms() -> None:
    zeros = PackedColumnParameter(packed_factor=8, packed_dim=1, data=torch.empty(4, 12, dtype=torch.int32),
                                  output_dim=1, weight_loader=lambda *a: None)
    assert zeros.adjust_shard_indexes_for_packing(shard_size=32, shard_offset=64) == (4, 8)
    weight = PackedvLLMParameter(packed_factor=8, packed_dim=0, data=torch.empty(4, 96, dtype=torch.int32),
                                 output_dim=1, input_dim=0, weight_loader=lambda *a: None)
    assert weight.adjust_shard_indexes_for_packing(shard_size=32, shard_offset=64) == (32, 64)  # packed along input


def test_a_fraction_packing_factor_converts_whole_words_only() -> None:
    three_bit = PackedvLLMParameter(packed_factor=Fraction(32, 3), packed_dim=0, output_dim=0, input_dim=1,
                                    data=torch.empty(18, 4, dtype=torch.int32), weight_loader=lambda *a: None)
    assert three_bit.pack_factor == Fraction(32, 3)
    assert three_bit.shard_units(96, 96) == (9, 9)
    assert three_bit.adjust_shard_indexes_for_packing(shard_size=96, shard_offset=0) == (9, 0)
    with pytest.raises(WeightLoadError, match=r"PackedvLLMParameter: a shard of 96 values at offset 10 is not whole "
                                              r"stored elements of 32/3 values \(packed_factor\)"):
        three_bit.shard_units(10, 96)
    with pytest.raises(ValueError, match=r"packed_factor must be an int or a Fraction >= 1 .* found Fraction\(1, 2\)"):
        PackedvLLMParameter(packed_factor=Fraction(1, 2), packed_dim=0, output_dim=0, input_dim=1,
                            data=torch.empty(2, 4), weight_loader=lambda *a: None)


class FastVideoStyleConfig(QuantizationConfig):
    """As FastVideo declares a config: name and dtypes on the instance; unregistered, passed to the layers."""

    def get_name(self) -> str:
        return "fv-style"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @classmethod
    def cpu_support(cls) -> str:
        return "F.linear on the row-int8 weight"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config):
        return cls()

    def get_quant_method(self, layer, prefix):
        return toy_method.ToyLinearMethod()


def test_an_unregistered_config_with_instance_methods_builds_and_refuses_by_name() -> None:
    layer = ReplicatedLinear(16, 8, bias=False, quant_config=FastVideoStyleConfig(), prefix="blocks.0.to_q")
    layer.weight.data.copy_(torch.randint(-127, 128, (8, 16), dtype=torch.int8))
    layer.weight_scale.data.fill_(0.5)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x)[0], F.linear(x, layer.weight.float() * 0.5))
    with pytest.raises(MethodUnavailableError, match=r"layer 'blocks.0.o': quantization method 'fv-style' supports activation "
                                         r"dtypes \['torch.float32'\], but the model's dtype is torch.bfloat16"):
        ReplicatedLinear(16, 8, bias=False, params_dtype=torch.bfloat16, quant_config=FastVideoStyleConfig(),
                         prefix="blocks.0.o")
