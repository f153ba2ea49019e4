"""Layers call ``create_weights`` the one way the contract says (by keyword, every layer kind) and check what comes
back (and that ``apply`` can take the layers' call ``apply(layer, x, bias)``): a signature that cannot take the call,
or plain parameters from a ``weight_loader_v2=True`` method, is a
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


class ApplyWithoutBias(toy_method.ToyLinearMethod):
    def apply(self, layer, x):  # bug: the layers call apply(layer, x, bias)
        return super().apply(layer, x)


class ApplyTakingMore(toy_method.ToyLinearMethod):
    def apply(self, layer, x, bias, scale):  # bug: an argument the layers never pass
        return super().apply(layer, x, bias) * scale


class ApplyCatchAll(toy_method.ToyLinearMethod):
    def apply(self, layer, *args, **kwargs):  # takes the call
        return super().apply(layer, *args, **kwargs)


@pytest.mark.parametrize("kind", LAYERS)
def test_an_apply_the_layers_cannot_call_is_refused_at_build(registered, kind) -> None:
    """``def apply(self, layer, x)``: the layer built and loaded, and the first forward raised a bare TypeError
    ('takes 3 positional arguments but 4 were given') naming neither the plugin nor the signature to write."""
    config = registered(ApplyWithoutBias, True, "toy-apply-no-bias")()
    with pytest.raises(PluginError) as info:
        LAYERS[kind](config)
    msg = str(info.value)
    assert info.value.contract == "apply: signature", msg
    assert msg.startswith(f"method 'toy-apply-no-bias' of plugin 'toy-apply-no-bias' (in-process): ApplyWithoutBias.apply "
                          f"at {__file__}:"), msg
    assert (" has the signature apply(self, layer, x), but " in msg and " calls apply(layer, x, bias) (bias None where "
            "the layer adds none), so every forward would fail with TypeError: too many positional arguments; expected "
            "apply(self, layer, x, bias=None)") in msg, msg


def test_an_apply_taking_more_than_the_call_is_refused_and_a_catch_all_is_not(registered) -> None:
    with pytest.raises(PluginError, match=r"ApplyTakingMore\.apply at .* has the signature apply\(self, layer, x, bias, "
                                          r"scale\), .*TypeError: missing a required argument: 'scale'"):
        LAYERS["replicated"](registered(ApplyTakingMore, True, "toy-apply-more")())
    LAYERS["replicated"](registered(ApplyCatchAll, True, "toy-apply-catch-all")())


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
    with pytest.raises(ValueError, match=r"packed_factor must be an int or a Fraction >= 1 .*found 0"):
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


class MisalignedBlocks(toy_method.ToyLinearMethod):
    """Block scales [ceil(out / 64), ceil(in / 64)] on the core's BlockQuantScaleParameter, for any part sizes."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        from fastvideo_quant.parameter import BlockQuantScaleParameter

        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)
        out = sum(output_partition_sizes)
        del layer.weight_scale
        layer.weight_scale = BlockQuantScaleParameter(
            data=torch.empty(-(-out // 64), -(-input_size_per_partition // 64)), block_size=(64, 64), input_dim=1,
            output_dim=0, weight_loader=extra["weight_loader"])


def test_block_scales_of_fused_parts_that_are_not_whole_blocks_are_refused_at_build(registered) -> None:
    """q, k, v of 64, 32, 32 rows in blocks of 64: k's and v's scales were one block row, v's loaded over k's with no
    error (4.5% output error); now the layer says so when built. The last part may end in a partial block."""
    config = registered(MisalignedBlocks, True, "toy-blocks")()
    with pytest.raises(PluginError) as info:
        QKVParallelLinear(128, 32, 2, 1, bias=False, quant_config=config, prefix="m.qkv_proj")
    msg = str(info.value)
    assert info.value.contract == "create_weights", msg
    assert ("registered block scales 'weight_scale' (shape (2, 2), block_size (64, 64)) on QKVParallelLinear "
            "'m.qkv_proj' (TP rank 0 of 1), which BlockQuantScaleParameter cannot shard: output parts [64, 32, 32] are "
            "not all whole blocks of bn=64 rows (every part but the last must be)") in msg, msg
    MergedColumnParallelLinear(128, [64, 32], bias=False, quant_config=config, prefix="m.ok")  # (last part partial)


def test_a_block_shard_off_a_block_row_is_refused_when_loaded() -> None:
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.parameter import BlockQuantScaleParameter

    param = BlockQuantScaleParameter(data=torch.zeros(2, 1), block_size=(64, 64), input_dim=1, output_dim=0,
                                     weight_loader=lambda *a: None)
    assert param.shard_units(64, 64) == (1, 1)
    with pytest.raises(WeightLoadError, match=r"the shard at output row 96 \(size 32\) does not start on a block of "
                                              r"bn=64 rows, so its scales would share a block row with the shard before"):
        param.shard_units(96, 32)


def test_block_scales_cut_by_a_rank_boundary_are_refused_on_real_ranks() -> None:
    """RowParallelLinear(384, ...) in blocks of 256 inputs at TP=2: each rank holds 192 inputs in one block column,
    and rank 1 loaded block column 1 for inputs 192..255, which belong to block 0 (no error). Column parts of 24 or 16
    rows a rank in blocks of 16: the same along the output."""
    import tp_workers as W

    from fastvideo_quant.testing.distributed import run_distributed

    for result in run_distributed(W.block_grid_errors, 2):
        assert result["row 512 (256 a rank)"] is None, result
        assert "this rank's 192 input features are not whole blocks of bk=256" in result[
            "row 384 (192 a rank: a block of 256 cut)"], result
        assert "output parts [24] are not all whole blocks of bn=16 rows on this rank" in result[
            "column 48 (24 a rank)"], result
        assert result["merged [32, 64] (16, 32 a rank)"] is None, result


def test_v1_dims_out_of_range_packing_without_a_factor_and_unsharded_inputs_are_refused(registered) -> None:
    class V1(toy_method.ToyLinearMethod):
        attrs: dict = {}

        def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                           params_dtype, **extra):
            rows = sum(output_partition_sizes)
            cols = self.attrs.pop("cols", input_size_per_partition)
            weight = torch.nn.Parameter(torch.empty(rows, cols, dtype=torch.int8), requires_grad=False)
            for k, v in {"output_dim": 0, "input_dim": 1, "weight_loader": extra["weight_loader"], **self.attrs}.items():
                setattr(weight, k, v)
            layer.register_parameter("weight", weight)

    for i, (attrs, error) in enumerate([
        ({"output_dim": 2}, r"'weight' \(Parameter, shape \(16, 48\)\) on ReplicatedLinear 'm.r' with output_dim=2, "
                            r"which is not a dim of it \(0\.\.1\)"),
        ({"packed_dim": 1}, r"'weight' on ReplicatedLinear 'm.r' with packed_dim=1 but no packing factor: set "
                            r"packed_factor \(the parameter classes' keyword\) or pack_factor"),
        ({"cols": 96}, r"along input_dim=1 it holds 96, expected at most 48 \(this rank's input size 48; fewer for "
                       r"groups of input features\)"),
    ]):
        V1.attrs = dict(attrs)
        with pytest.raises(PluginError, match=error):
            WIDE["replicated"](registered(type("V1", (V1,), {}), False, f"toy-v1-{i}")())
    V1.attrs = {"cols": 24, "packed_dim": 1, "pack_factor": 2}  # (two values an int8 along the input: fits)
    WIDE["replicated"](registered(type("V1", (V1,), {}), False, "toy-v1-packed")())


def test_a_checkpoint_tensor_that_does_not_split_over_row_ranks_says_why() -> None:
    import tp_workers as W

    from fastvideo_quant.testing.distributed import run_distributed

    for one_group, unsharded in run_distributed(W.row_split_messages, 2):
        assert one_group.startswith("GroupQuantScaleParameter: expected size 2 along dim 1 of the checkpoint tensor, "
                                    "found shape (128, 1) (1 along input_dim cannot be split over 2 ranks: what all "
                                    "input features share"), one_group
        assert "make it a ChannelQuantScaleParameter (output_dim only)" in one_group, one_group
        assert unsharded.endswith("(each of the 2 ranks holds 4 along input_dim, so the checkpoint's 4 would be 2 a "
                                  "rank: either the checkpoint holds one rank's share — load the unsharded tensors, "
                                  "each rank takes its part — or the parameter was sized from input_size: size it "
                                  "from input_size_per_partition, this rank's input features)"), unsharded


class AlignmentRefusal(toy_method.ToyLinearMethod):
    """vLLM's style: its own ValueError for sizes it cannot take, naming no layer."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        if input_size_per_partition % 64:
            raise ValueError("The input size is not aligned with the quantized weight shape. This can be caused by "
                             "too large tensor parallel size.")
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra)


def test_a_plugins_own_value_error_names_the_layer_it_was_building(registered) -> None:
    """In a model of many layers, "The input size is not aligned ..." named none (a vLLM method porter's review): the
    same exception type and words, with the layer, its per-rank sizes and TP rank."""
    config = registered(AlignmentRefusal, True, "test-alignment-refusal")
    with pytest.raises(ValueError) as err:
        RowParallelLinear(200, 128, bias=False, quant_config=config.from_config({}), prefix="blk.o_proj")
    assert type(err.value) is ValueError and str(err.value) == (
        "The input size is not aligned with the quantized weight shape. This can be caused by too large tensor "
        "parallel size. (raised by AlignmentRefusal.create_weights building RowParallelLinear 'blk.o_proj': "
        "input_size_per_partition=200, output_partition_sizes=[128], TP rank 0 of 1)"), str(err.value)
    assert "create_weights" in err.traceback[-1].name  # (its traceback still ends in the plugin's code)
