"""What a config class declares is checked when its plugin registers it: the method name (lowercase, not reserved,
unique), activation dtypes, minimum capability, CPU support, tolerance and the checkpoint key sets. A bad one is a
PluginError naming the plugin, the method, the declaration and the value, at registration, not a contradiction or a
bare error later."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins import hookimpl, register_plugin
from fastvideo_quant.quantization import QUANTIZATION_METHODS, Tolerance


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    fresh_plugins += ['myw8']


def config(name: str = "myw8", **declared):
    """A config class named ``name`` whose classmethods return ``declared`` (attributes when not callable)."""
    from fvq_unquantized import UnquantizedConfig

    body = {"get_name": classmethod(lambda cls: name)}
    for attr, value in declared.items():
        plain = attr in ("tolerance", "unread_checkpoint_keys", "quantized_checkpoint_keys", "weight_rel_error")
        body[attr] = value if plain else classmethod(lambda cls, v=value: v)
    return type("MyW8Config", (UnquantizedConfig,), body)


def refused(cfg) -> str:
    """The PluginError registering ``cfg`` in-process raises; nothing of it is registered."""
    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(cfg)

    before = list(QUANTIZATION_METHODS)
    with pytest.raises(PluginError) as info:
        register_plugin(Hooks(), "myw8")
    assert list(QUANTIZATION_METHODS) == before
    return str(info.value)


WHERE = "plugin 'myw8' (in-process), method 'myw8': MyW8Config."


@pytest.mark.parametrize("value, expected", [
    (["bfloat16", "float16"], "get_supported_act_dtypes() returned ['bfloat16', 'float16']; ['bfloat16', 'float16'] "
                              "are not torch dtypes: return [torch.bfloat16, torch.float16]"),
    (torch.bfloat16, "get_supported_act_dtypes() returned torch.bfloat16; expected a list of torch dtypes: return "
                     "[torch.bfloat16]"),
    ([], "get_supported_act_dtypes() returned []; expected at least one activation dtype"),
    ([torch.int8], "get_supported_act_dtypes() returned [torch.int8]; torch.int8 is not a dtype a model runs in"),
    ({torch.bfloat16}, "get_supported_act_dtypes() returned {torch.bfloat16} (set); expected a list of torch dtypes"),
])
def test_activation_dtypes_are_a_list_of_model_dtypes(value, expected) -> None:
    msg = refused(config(get_supported_act_dtypes=value))
    assert msg.startswith(WHERE + expected), msg
    assert "(registered at " in msg and "test_plugin_declarations.py:" in msg, msg


@pytest.mark.parametrize("value, expected", [
    (8.9, "get_min_capability() returned 8.9; expected an int >= 0, the CUDA compute capability times ten: return 89 "
          "for compute capability 8.9"),
    ("89", "get_min_capability() returned '89'; expected an int >= 0"),
    (-1, "get_min_capability() returned -1; expected an int >= 0"),
    (True, "get_min_capability() returned True; expected an int >= 0"),
])
def test_min_capability_is_an_int(value, expected) -> None:
    assert refused(config(get_min_capability=value)).startswith(WHERE + expected)


def test_cpu_support_is_one_line_or_none() -> None:
    assert refused(config(cpu_support=True)).startswith(WHERE + "cpu_support() returned True; expected one line")
    assert refused(config(cpu_support="")).startswith(WHERE + "cpu_support() returned ''; expected one line")


def test_tolerance_is_a_tolerance_and_valid_declarations_register() -> None:
    msg = refused(config(tolerance=0.01))
    assert msg.startswith(WHERE + "tolerance is 0.01; expected fastvideo_quant.quantization.Tolerance("), msg
    cfg = config(get_supported_act_dtypes=(torch.float32,), get_min_capability=89, cpu_support=None,
                 tolerance=Tolerance(min_sqnr_db=30))

    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(cfg)

    register_plugin(Hooks(), "myw8")  # a tuple of one dtype, a GPU-only method, a tolerance in dB: all fine
    assert "myw8" in QUANTIZATION_METHODS


@pytest.mark.parametrize("value", [-0.1, 0, "0.1", True])
def test_weight_rel_error_is_a_positive_number(value) -> None:
    msg = refused(config(weight_rel_error=value))
    assert msg.startswith(WHERE + f"weight_rel_error is {value!r}; expected None or a number > 0"), msg


def test_a_declaration_that_raises_names_where() -> None:
    from fvq_unquantized import UnquantizedConfig

    class MyW8Config(UnquantizedConfig):
        @classmethod
        def get_name(cls):
            return "myw8"

        @classmethod
        def get_supported_act_dtypes(cls):
            return [torch.bfloat16][1]

    msg = refused(MyW8Config)
    assert msg.startswith(WHERE + "get_supported_act_dtypes() raised IndexError: list index out of range (at "), msg


@pytest.mark.parametrize("name, expected", [
    ("MyW8", "get_name() returned 'MyW8'; method names are lowercase (a checkpoint's quant_method is matched "
             "lowercased): return 'myw8'"),
    ("FP8", "get_name() returned 'FP8'; method names are lowercase (a checkpoint's quant_method is matched "
            "lowercased): return 'fp8', which plugin 'fp8' (distribution 'fastvideo-quant' "),
    ("none", "get_name() returned 'none', a reserved name (resolve_quant_config('none') means unquantized); choose "
             "another name"),
    ("my w8", "get_name() returned 'my w8'; a method name has no spaces"),
])
def test_method_names_are_lowercase_and_not_reserved(name, expected) -> None:
    msg = refused(config(name))
    assert msg.startswith("plugin 'myw8' (in-process): MyW8Config." + expected), msg


@pytest.mark.parametrize("attr, value, expected", [
    ("unread_checkpoint_keys", "_load_in_8bit", "unread_checkpoint_keys is '_load_in_8bit'; expected a frozenset of "
                                                "checkpoint key names"),
    ("unread_checkpoint_keys", frozenset({1}), "unread_checkpoint_keys is frozenset({1}); expected a frozenset"),
    ("quantized_checkpoint_keys", ["fvq_serialized"], "quantized_checkpoint_keys is ['fvq_serialized']; expected a "
                                                      "dict {key name: its value"),
])
def test_checkpoint_key_sets_are_sets_of_names(attr, value, expected) -> None:
    assert refused(config(**{attr: value})).startswith(WHERE + expected)
