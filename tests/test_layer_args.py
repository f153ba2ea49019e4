"""Layer constructor arguments: bad sizes and head counts are errors naming the layer and the values, at TP=1 and
on real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import tp_workers as W

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.testing.distributed import run_distributed


@pytest.mark.parametrize("build, message", [
    (lambda: QKVParallelLinear(256, 64, 0, prefix="a.qkv"), r"'a.qkv': total_num_heads must be a positive int, found 0"),
    (lambda: QKVParallelLinear(256, 0, 4, prefix="a.qkv"), r"'a.qkv': head_size must be a positive int, found 0"),
    (lambda: QKVParallelLinear(256, 64, 4, 0, prefix="a.qkv"), r"'a.qkv': total_num_kv_heads must be a positive int, found 0"),
    (lambda: QKVParallelLinear(256, 64, 2, 4, prefix="a.qkv"),
     r"'a.qkv': total_num_heads=2 is not a multiple of total_num_kv_heads=4; .* KV head counts that fit 2 query heads: \[1, 2\]"),
    (lambda: QKVParallelLinear(256, 64, 4, 3, prefix="a.qkv"),
     r"'a.qkv': total_num_heads=4 is not a multiple of total_num_kv_heads=3; .*\[1, 2, 4\]"),
    (lambda: QKVParallelLinear(256, 64, 4.0, prefix="a.qkv"), r"total_num_heads must be a positive int, found 4.0"),
    (lambda: MergedColumnParallelLinear(256, [], prefix="a.gu"),
     r"MergedColumnParallelLinear 'a.gu': output_sizes must be a non-empty list of positive ints .*found \[\]"),
    (lambda: MergedColumnParallelLinear(256, [64, 0], prefix="a.gu"),
     r"'a.gu': output_sizes\[1\] must be a positive int, found 0"),
    (lambda: ColumnParallelLinear(256, 0, prefix="a.c"),
     r"ColumnParallelLinear 'a.c': output_size must be a positive int, found 0"),
    (lambda: ColumnParallelLinear(-1, 4, prefix="a.c"),
     r"ColumnParallelLinear 'a.c': input_size must be a positive int, found -1"),
    (lambda: ColumnParallelLinear(8, 8, output_sizes=[4, 2], prefix="a.c"),
     r"'a.c': output_sizes \[4, 2\] sum to 6, but output_size is 8"),
    (lambda: RowParallelLinear(0, 8, prefix="a.r"), r"RowParallelLinear 'a.r': input_size must be a positive int, found 0"),
    (lambda: ReplicatedLinear(8, True, prefix="a.l"), r"ReplicatedLinear 'a.l': output_size must be a positive int, found True"),
    (lambda: ReplicatedLinear(8, 8, quant_config="fp8", prefix="a.l"),
     r"ReplicatedLinear 'a.l': quant_config must be a QuantizationConfig or None, found str 'fp8'; build one with "
     r"resolve_quant_config\('fp8'\)"),
    (lambda: ReplicatedLinear(8, 8, quant_config=__import__("fvq_fp8.config").config.Fp8Config, prefix="a.l"),
     r"ReplicatedLinear 'a.l': quant_config is the class Fp8Config, not an instance of it; pass "
     r"Fp8Config\.from_config\(\{\.\.\.\}\)"),
    (lambda: RowParallelLinear(8, 8, quant_config={"quant_method": "fp8"}, prefix="a.r"),
     r"RowParallelLinear 'a.r': quant_config must be .* found dict .*resolve_quant_config\(hf_config="),
    (lambda: ReplicatedLinear("8", 8, prefix="a.l"), r"ReplicatedLinear 'a.l': input_size must be a positive int, found '8'"),
])
def test_bad_constructor_arguments_name_the_layer_and_value(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_valid_head_layouts_at_tp1() -> None:
    for heads, kv in [(4, None), (4, 4), (4, 2), (4, 1), (6, 3)]:
        layer = QKVParallelLinear(32, 8, heads, kv, prefix="a.qkv")
        kv = kv or heads
        assert (layer.num_heads, layer.num_kv_heads, layer.num_kv_head_replicas) == (heads, kv, 1)
        assert layer.output_size == (heads + 2 * kv) * 8


K = 32
CASES = {
    2: [("QKVParallelLinear", (K, 8, 6, 3)), ("QKVParallelLinear", (K, 8, 4, 4)), ("QKVParallelLinear", (K, 8, 2, 1)),
        ("MergedColumnParallelLinear", (K, [4, 6, 3])), ("ColumnParallelLinear", (K, 8, True, False, False, None, None, [5, 3]))],
    4: [("QKVParallelLinear", (K, 8, 12, 6)), ("QKVParallelLinear", (K, 8, 8, 2)), ("QKVParallelLinear", (K, 8, 4, 1)),
        ("QKVParallelLinear", (K, 8, 6, 6))],
}
EXPECTED = {
    2: [r"ShardingError: QKVParallelLinear 'blk\..*' total_num_heads=6, total_num_kv_heads=3: cannot be split over "
        r"tensor-parallel size 2\. The query heads must divide evenly over the ranks, and the KV heads must too or be "
        r"replicated \(the TP size a multiple of the KV heads\)\. TP sizes that work: \[1, 3, 6\]",
        None, None,
        r"ShardingError: MergedColumnParallelLinear 'blk\..*': output_sizes\[2\]=3 not divisible by the tensor-parallel "
        r"size 2; .* TP sizes that divide all of \[4, 6, 3\]: \[1\]",
        r"ShardingError: ColumnParallelLinear 'blk\..*': output_sizes\[0\]=5, output_sizes\[1\]=3 not divisible by the "
        r"tensor-parallel size 2"],
    4: [r"ShardingError: .*total_num_heads=12, total_num_kv_heads=6: cannot be split over tensor-parallel size 4\..* "
        r"TP sizes that work: \[1, 2, 3, 6, 12\]",
        None, None,
        r"ShardingError: .*total_num_heads=6, total_num_kv_heads=6: cannot be split over tensor-parallel size 4\..* "
        r"TP sizes that work: \[1, 2, 3, 6\]"],
}


@pytest.mark.parametrize("world", [2, 4])
def test_head_and_part_sizes_that_do_not_split_over_tp_name_the_sizes_that_work(world: int) -> None:
    """On real gloo ranks: query heads must divide over TP, KV heads divide or be replicated; fused parts divide."""
    import re

    for rank_result in run_distributed(W.construction_errors, world, CASES[world]):
        for (name, args), expected in zip(CASES[world], EXPECTED[world]):
            found = rank_result[f"{name}{args}"]
            if expected is None:
                assert found is None, f"{name}{args} at TP={world}: {found}"
            else:
                assert found is not None and re.search(expected, found), f"{name}{args} at TP={world}: {found}"


def test_a_config_returning_no_method_for_a_linear_layer_says_what_to_return():
    """FastVideo's layers take get_quant_method's None as unquantized; ours refuse it (a None by mistake would leave
    layers unquantized unseen), saying what to return instead."""
    from fvq_unquantized.method import UnquantizedConfig

    class NoneForLinear(UnquantizedConfig):
        def get_quant_method(self, layer, prefix):
            return None

    with pytest.raises(ConfigError, match=r"layer 'a.l' \(ReplicatedLinear\): quantization method 'unquantized' returned "
                                          r"no method for it \(get_quant_method returned None\)\. A linear layer the "
                                          r"config leaves unquantized gets UnquantizedLinearMethod\(\)"):
        ReplicatedLinear(8, 8, quant_config=NoneForLinear(), prefix="a.l")


def test_forward_takes_fastvideos_argument_name():
    col, row = ColumnParallelLinear(8, 4, prefix="c"), RowParallelLinear(4, 8, prefix="r")
    for layer in (col, row):
        for p in layer.parameters():
            p.data.normal_()
    x = torch.randn(2, 8)
    assert torch.equal(col(input_=x)[0], col(x)[0])
    assert torch.equal(row(input_=col(x)[0])[0], row(col(x)[0])[0])


def test_an_apply_returning_another_dtype_is_refused_naming_the_method_and_plugin() -> None:
    """A plugin's apply returning float32 for a bf16 input (the conformance suite's '[contract: apply: output dtype]'):
    in a model built from a config.json nobody ran the suite on, it would change every later layer's dtype unseen."""
    import toy_method

    from fastvideo_quant import plugins
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import process_weights_after_loading

    class Float32Out(toy_method.ToyLinearMethod):
        def apply(self, layer, x, bias=None):
            return super().apply(layer, x, bias).float()

    class Config(toy_method.ToyConfig):
        @classmethod
        def get_name(cls) -> str:
            return "toy-f32-out"

        def get_quant_method(self, layer, prefix):
            return self.linear_method_or_skip(layer, prefix, Float32Out)

    class Plugin:
        @plugins.hookimpl
        def register_quantization_methods(self, register) -> None:
            register(Config, Float32Out, weight_loader_v2=True)

    plugins.register_plugin(Plugin(), name="toy-f32-out")
    try:
        layer = ReplicatedLinear(16, 8, bias=False, params_dtype=torch.bfloat16, quant_config=Config.from_config({}),
                                 prefix="proj")
        for name, t in Config.from_config({}).quantize_weight(torch.randn(8, 16)).items():
            getattr(layer, name).data.copy_(t)
        process_weights_after_loading(layer)
        with pytest.raises(PluginError) as err:
            layer(torch.randn(2, 16, dtype=torch.bfloat16))
        msg = str(err.value)
        assert "ReplicatedLinear 'proj': Float32Out.apply (method 'toy-f32-out' of plugin 'toy-f32-out' (in-process))" \
               " returned torch.float32 for a torch.bfloat16 input" in msg, msg
        assert "fvq check toy-f32-out" in msg
    finally:
        plugins.unregister_plugin("toy-f32-out")


class _Flattening(__import__("toy_method").ToyLinearMethod):
    def apply(self, layer, x, bias=None):
        return super().apply(layer, x.reshape(-1, x.shape[-1]), bias)  # bug: the leading dims are not restored


class _FlatteningConfig(__import__("toy_method").ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-flat-out"

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, _Flattening)


@pytest.mark.parametrize("build", [
    lambda q: ReplicatedLinear(128, 64, bias=False, quant_config=q, prefix="blocks.0.proj"),
    lambda q: ColumnParallelLinear(128, 64, bias=False, quant_config=q, prefix="blocks.0.proj"),
    lambda q: RowParallelLinear(128, 64, bias=False, quant_config=q, prefix="blocks.0.proj"),
], ids=["replicated", "column", "row"])
def test_an_apply_returning_another_shape_is_refused_naming_the_method_and_plugin(build) -> None:
    """An apply returning [6, 64] for an input [2, 3, 128] passed silently (only the dtype was checked)."""
    import toy_method

    from fastvideo_quant import plugins
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.loader import process_weights_after_loading

    class Plugin:
        @plugins.hookimpl
        def register_quantization_methods(self, register) -> None:
            register(_FlatteningConfig, _Flattening, weight_loader_v2=True)

    plugins.register_plugin(Plugin(), name="toy-flat-out")
    try:
        layer = build(_FlatteningConfig.from_config({}))
        for name, t in toy_method.ToyConfig.from_config({}).quantize_weight(torch.randn(64, 128)).items():
            getattr(layer, name).data.copy_(t)
        process_weights_after_loading(layer)
        assert layer(torch.randn(5, 128))[0].shape == (5, 64)  # 2-D: right
        with pytest.raises(PluginError) as err:
            layer(torch.randn(2, 3, 128))
        msg = str(err.value)
        assert msg == (f"{type(layer).__name__} 'blocks.0.proj': _Flattening.apply (method 'toy-flat-out' of plugin "
                       "'toy-flat-out' (in-process)) returned shape [6, 64] for an input of shape [2, 3, 128]; expected "
                       "[2, 3, 64]: the input's leading dims and this rank's 64 output features; a 3-D input gives a "
                       "3-D output: reshape the result back to x.shape[:-1] + (out,) (fvq check toy-flat-out reports "
                       "this as '[contract: apply: output shape]')"), msg
        # leading dims right, features wrong (a padded N): no reshape advice
        layer.quant_method.apply = lambda lay, x, bias=None: torch.zeros(*x.shape[:-1], 72, dtype=x.dtype)
        with pytest.raises(PluginError) as err:
            layer(torch.randn(2, 3, 128))
        assert "returned shape [2, 3, 72]" in str(err.value) and "reshape" not in str(err.value), str(err.value)
    finally:
        plugins.unregister_plugin("toy-flat-out")


def test_the_output_shape_check_traces_under_torch_compile_fullgraph() -> None:
    layer = ReplicatedLinear(16, 8, bias=True, prefix="p")
    for p in layer.parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 16)
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x)[0])


def test_an_input_that_is_not_a_tensor_is_named() -> None:
    from fastvideo_quant.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear

    for layer in (ReplicatedLinear(8, 4, prefix="r"), ColumnParallelLinear(8, 4, prefix="c"),
                  RowParallelLinear(8, 4, prefix="w")):
        with pytest.raises(TypeError, match=rf"{type(layer).__name__} '{layer.prefix}': the input must be a "
                                            r"torch.Tensor, found tuple \(pass the tensor itself"):
            layer((torch.randn(2, 8),))


class _NoSuperInitConfig(__import__("toy_method").ToyConfig):
    """A config whose ``__init__`` forgets ``super().__init__()``: ``is_layer_skipped`` reads what it would set."""

    def __init__(self) -> None:
        self.bits = 8

    @classmethod
    def get_name(cls) -> str:
        return "toy-no-super-init"

    def get_quant_method(self, layer, prefix):
        import toy_method

        return self.linear_method_or_skip(layer, prefix, toy_method.ToyLinearMethod)


class _TypoConfig(__import__("toy_method").ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-typo"

    def get_quant_method(self, layer, prefix):
        import toy_method

        return self.linear_method_or_skip(layer, prefix, lambda: toy_method.ToyLinearMthod())  # bug: a typo


@pytest.fixture
def bad_configs():
    """The two configs above, registered by plugin 'toy-bad-configs'."""
    import toy_method

    from fastvideo_quant import plugins

    class Plugin:
        @plugins.hookimpl
        def register_quantization_methods(self, register) -> None:
            for cls in (_NoSuperInitConfig, _TypoConfig):
                register(cls, toy_method.ToyLinearMethod, weight_loader_v2=True)

    plugins.register_plugin(Plugin(), name="toy-bad-configs")
    yield
    plugins.unregister_plugin("toy-bad-configs")


def test_a_config_without_super_init_is_named_when_a_layer_is_built(bad_configs) -> None:
    """Was a bare AttributeError: '_NoSuperInitConfig' object has no attribute 'packed_modules_mapping', raised in the
    library's is_layer_skipped, naming neither the plugin nor the fix."""
    from fastvideo_quant.errors import PluginError

    with pytest.raises(PluginError) as info:
        ColumnParallelLinear(16, 8, quant_config=_NoSuperInitConfig(), prefix="blocks.0.proj")
    msg = str(info.value)
    assert msg.startswith("method 'toy-no-super-init' of plugin 'toy-bad-configs' (in-process): "
                          "_NoSuperInitConfig.get_quant_method(layer 'blocks.0.proj' (ColumnParallelLinear)) raised "
                          "AttributeError: "), msg
    assert f"_NoSuperInitConfig.__init__ at {__file__}:" in msg and " does not call super().__init__(), so the config " \
        "has no packed_modules_mapping and modules_to_not_convert attributes, which QuantizationConfig.__init__ sets " \
        "(is_layer_skipped reads them); call super().__init__() in _NoSuperInitConfig.__init__" in msg, msg
    assert isinstance(info.value.__cause__, AttributeError)


def test_an_exception_inside_get_quant_method_names_the_plugin_and_keeps_the_traceback(bad_configs) -> None:
    from fastvideo_quant.errors import PluginError

    with pytest.raises(PluginError) as info:
        ReplicatedLinear(16, 8, quant_config=_TypoConfig(), prefix="blocks.0.proj")
    msg = str(info.value)
    assert msg.startswith("method 'toy-typo' of plugin 'toy-bad-configs' (in-process): _TypoConfig.get_quant_method("
                          "layer 'blocks.0.proj' (ReplicatedLinear)) raised AttributeError: module 'toy_method' has no "
                          f"attribute 'ToyLinearMthod' (at {__file__}:"), msg
    assert "the exception it raised is chained below" in msg, msg
    assert isinstance(info.value.__cause__, AttributeError) and info.value.__cause__.__traceback__ is not None


def test_the_librarys_own_errors_from_get_quant_method_pass_unchanged(bad_configs) -> None:
    """A skip list naming some parts of a fused layer is the checkpoint's ConfigError, not the plugin's bug."""
    cfg = _TypoConfig()
    cfg.modules_to_not_convert = ["blocks.0.q_proj"]
    with pytest.raises(ConfigError) as info:
        QKVParallelLinear(16, 4, 2, prefix="blocks.0.qkv_proj", quant_config=cfg)
    assert "q_proj" in str(info.value) and "toy-bad-configs" not in str(info.value), str(info.value)


def test_a_scalar_input_is_named_as_such() -> None:
    """A 0-d input read 'input's last dim is None, expected 16 (input_size)'."""
    from fastvideo_quant.layers.linear import ReplicatedLinear

    layer = ReplicatedLinear(16, 8, params_dtype=torch.float32, prefix="proj")
    with pytest.raises(ValueError, match=r"^ReplicatedLinear 'proj': expected an input of shape \[\.\.\., 16 "
                                         r"\(input_size\)\], found a 0-d tensor \(a scalar\)$"):
        layer(torch.tensor(1.0))


def test_a_layer_pickled_before_the_output_shape_record_runs() -> None:
    """Unpickled from a version without _fvq_out_features (or return_bias): its first forward was a bare
    AttributeError."""
    import pickle

    from fastvideo_quant.layers.linear import ReplicatedLinear

    layer = ReplicatedLinear(16, 8, params_dtype=torch.float32, prefix="proj")
    layer.weight.data.normal_()
    layer.bias.data.zero_()
    old = pickle.loads(pickle.dumps(layer))
    del old.__dict__["_fvq_out_features"], old.__dict__["return_bias"]  # (as earlier versions pickled it)
    again = pickle.loads(pickle.dumps(old))
    x = torch.randn(3, 16)
    assert torch.equal(again(x)[0], layer(x)[0])


LAYERS_RETURN_BIAS = {
    "replicated": lambda **k: ReplicatedLinear(8, 4, **k),
    "column": lambda **k: ColumnParallelLinear(8, 4, **k),
    "row": lambda **k: RowParallelLinear(8, 4, **k),
    "merged": lambda **k: MergedColumnParallelLinear(8, [4, 4], **k),
    "qkv": lambda **k: QKVParallelLinear(8, 2, 2, **k),
}


@pytest.mark.parametrize("kind", sorted(LAYERS_RETURN_BIAS))
def test_return_bias_false_returns_the_output_alone_as_vllm(kind) -> None:
    """vLLM's keyword (its recent models pass it): the same output, not an (output, bias) pair; it was a TypeError."""
    build = LAYERS_RETURN_BIAS[kind]
    torch.manual_seed(0)
    pair_layer, alone_layer = build(prefix="a.b"), build(prefix="a.b", return_bias=False)
    for p, q in zip(pair_layer.parameters(), alone_layer.parameters(), strict=True):
        p.data.normal_()
        q.data.copy_(p.data)
    x = torch.randn(3, 8)
    out, bias = pair_layer(x)
    alone = alone_layer(x)
    assert isinstance(alone, torch.Tensor) and bias is None and torch.equal(alone, out)
    assert build(prefix="c", bias=False, skip_bias_add=True, return_bias=False)(x).shape == out.shape
    with pytest.raises(ConfigError, match=r"skip_bias_add=True with return_bias=False: the layer would neither add its "
                                          r"bias nor return it"):
        build(prefix="c", skip_bias_add=True, return_bias=False)
    with pytest.raises(TypeError, match=r"return_bias must be a bool, found str 'no'"):
        build(prefix="c", return_bias="no")


@pytest.mark.parametrize("build, error, message", [
    (lambda: ReplicatedLinear(4, 4, params_dtype="bfloat16", prefix="a"), TypeError,
     r"ReplicatedLinear 'a': params_dtype must be a torch.dtype \(torch.bfloat16, .*\) or None, found str 'bfloat16' "
     r"\(torch.bfloat16\)"),
    (lambda: ReplicatedLinear(4, 4, params_dtype=torch.int32, prefix="a"), ConfigError,
     r"ReplicatedLinear 'a': params_dtype is the model's dtype, .*found torch.int32"),
    (lambda: ColumnParallelLinear(4, 4, params_dtype=torch.complex64, prefix="a"), ConfigError, r"found torch.complex64"),
    (lambda: RowParallelLinear(4, 4, params_dtype=torch.float8_e4m3fn, prefix="a"), ConfigError,
     r"found torch.float8_e4m3fn \(a quantization method stores its own dtypes"),
    (lambda: ReplicatedLinear(4, 4, prefix=5), TypeError, r"ReplicatedLinear: prefix must be a str .*found int 5"),
    (lambda: ReplicatedLinear(4, 4, bias="yes", prefix="a"), TypeError, r"'a': bias must be a bool, found str 'yes'"),
    (lambda: ReplicatedLinear(4, 4, skip_bias_add="no", prefix="a"), TypeError, r"skip_bias_add must be a bool"),
    (lambda: ColumnParallelLinear(4, 4, gather_output="no", prefix="a"), TypeError,
     r"ColumnParallelLinear 'a': gather_output must be a bool, found str 'no'"),
    (lambda: MergedColumnParallelLinear(8, [4, 4], gather_output=[1], prefix="a"), TypeError,
     r"gather_output must be a bool, found list \[1\]"),
    (lambda: QKVParallelLinear(64, 16, 4, 2, bias="no", prefix="a"), TypeError, r"QKVParallelLinear 'a': bias must be"),
    (lambda: RowParallelLinear(4, 4, reduce_results="no", prefix="a"), TypeError, r"reduce_results must be a bool"),
    (lambda: RowParallelLinear(4, 4, input_is_parallel="no", prefix="a"), TypeError, r"input_is_parallel must be a bool"),
])
def test_dtype_prefix_and_flags_are_checked(build, error, message) -> None:
    """``params_dtype="bfloat16"`` failed as torch.empty's TypeError inside a plugin's create_weights; an integer,
    complex or float8 params_dtype built a layer that computed in it (complex lost its imaginary part); a prefix that
    is no str was blamed on the plugin's get_quant_method; ``gather_output='no'`` and the other flags were taken as
    True."""
    with pytest.raises(error, match=message):
        build()
    assert ReplicatedLinear(4, 4, params_dtype=torch.float64).weight.dtype == torch.float64


def test_flags_take_what_model_code_passes_for_a_bool() -> None:
    """None (``bias=getattr(cfg, "bias", None)``), 0 / 1 and numpy bools built before the flags were checked, and
    still do; prefix=None is vLLM's default ''."""
    np = pytest.importorskip("numpy")
    assert ColumnParallelLinear(8, 8, bias=None).bias is None
    assert RowParallelLinear(8, 8, skip_bias_add=None).skip_bias_add is False
    assert ColumnParallelLinear(8, 8, bias=np.bool_(True)).bias is not None
    assert ColumnParallelLinear(8, 8, gather_output=np.False_).gather_output is False
    assert ColumnParallelLinear(8, 8, bias=0).bias is None and ReplicatedLinear(8, 8, bias=1).bias is not None
    assert ColumnParallelLinear(8, 8, prefix=None).prefix == ""
    with pytest.raises(TypeError, match=r"bias must be a bool, found int 2"):
        ReplicatedLinear(8, 8, bias=2)
