"""The plugin manager: entry points, hook validation, registration errors, allow/block lists, v2 derivation."""

from __future__ import annotations

from pathlib import Path

import fake_dist
import pytest
import tp_workers as W

from fastvideo_quant import plugins
from fastvideo_quant.errors import PluginError, UnknownMethodError
from fastvideo_quant.layers.linear import WEIGHT_LOADER_V2_SUPPORTED, ColumnParallelLinear
from fastvideo_quant.plugins import get_plugins, get_registry, hookimpl, register_plugin, unregister_plugin
from fastvideo_quant.quantization import QUANTIZATION_METHODS, get_quantization_config


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    fresh_plugins += ['ref', 'dup', 'bad', 'other']


def make_dist(tmp_path: Path, monkeypatch, name: str, module_src: str, ep_name: str | None = None) -> None:
    """An installed distribution on sys.path: a module and a dist-info with our entry point."""
    fake_dist.install(tmp_path, monkeypatch, name=name, version="1.2.3", module=f"{name.replace('-', '_')}_mod",
                      source=module_src, entry=ep_name or name)


def test_builtin_unquantized_is_an_entry_point_plugin() -> None:
    info = {p.name: p for p in get_plugins()}["unquantized"]
    assert info.distribution == "fastvideo-quant" and info.version
    assert info.hooks == ["register_quantization_methods"] and info.methods == ["unquantized"]
    assert "unquantized" in QUANTIZATION_METHODS


def test_v2_support_is_derived_from_registrations() -> None:
    assert "PackedRefV2Method" not in WEIGHT_LOADER_V2_SUPPORTED
    register_plugin(W.RefPlugin(), name="ref")
    assert "PackedRefV2Method" in WEIGHT_LOADER_V2_SUPPORTED  # the same object, live
    assert "PackedRefV1Method" not in WEIGHT_LOADER_V2_SUPPORTED
    assert {"test_ref_v1", "test_ref_v2"} <= set(QUANTIZATION_METHODS)

    class Child(W.PackedRefV2Method):
        pass

    assert get_registry().uses_weight_loader_v2(Child), "a subclass keeps its parent's loader choice"
    unregister_plugin("ref")
    assert "PackedRefV2Method" not in WEIGHT_LOADER_V2_SUPPORTED


def test_layer_picks_loader_from_registry() -> None:
    register_plugin(W.RefPlugin(), name="ref")
    v1 = ColumnParallelLinear(8, 16, quant_config=W.RefV1Config(), params_dtype=W.DT)
    v2 = ColumnParallelLinear(8, 16, quant_config=W.RefV2Config(), params_dtype=W.DT)
    assert v1.weight.weight_loader == v1.weight_loader
    assert v2.weight.weight_loader == v2.weight_loader_v2


def test_misspelled_hook_is_an_error() -> None:
    class Bad:
        @hookimpl
        def register_quantisation_methods(self, register):  # British spelling: no such hook
            pass

    with pytest.raises(PluginError, match=r"plugin 'bad'.*register_quantisation_methods"):
        register_plugin(Bad(), name="bad")
    assert "unquantized" in QUANTIZATION_METHODS  # nothing half-registered


def test_duplicate_method_name_names_both_plugins() -> None:
    class Dup:
        @hookimpl
        def register_quantization_methods(self, register):
            from fvq_unquantized import UnquantizedConfig

            register(UnquantizedConfig)

    with pytest.raises(PluginError, match=r"plugin 'dup' \(in-process\) registers method 'unquantized', which plugin "
                                          r"'unquantized' \(distribution 'fastvideo-quant' [^)]+\) already registers; "
                                          r"method names must be unique: return another name from "
                                          r"UnquantizedConfig.get_name\(\)"):
        register_plugin(Dup(), name="dup")


def test_registering_a_non_config_is_an_error() -> None:
    class Bad:
        @hookimpl
        def register_quantization_methods(self, register):
            register(dict)

    with pytest.raises(PluginError, match=r"plugin 'bad' \(in-process\) registered <class 'dict'>, which is not a "
                                          r"subclass of .*QuantizationConfig.*\(registered at .*test_plugins.py:\d+\)"):
        register_plugin(Bad(), name="bad")


def test_plugin_import_error_is_left_out_with_a_warning_naming_plugin_and_distribution(tmp_path, monkeypatch) -> None:
    """A plugin that fails to import does not take the others down: it is left out, the build warns once naming it,
    its distribution, the error with its file:line and the fix, and asking for a method reports it."""
    make_dist(tmp_path, monkeypatch, "fvq-broken", "raise ImportError('needs libfoo')\n")
    plugins.reset()
    with pytest.warns(plugins.PluginLoadWarning, match=r"plugin 'fvq-broken' \(distribution 'fvq-broken' 1.2.3\) "
                      r"failed to import fvq_broken_mod: ImportError: needs libfoo \(at .*fvq_broken_mod.py:1\); its "
                      r"methods are left out.*FVQ_DISABLE_PLUGINS=fvq-broken"):
        assert "unquantized" in QUANTIZATION_METHODS
    assert [f.name for f in plugins.get_plugin_failures()] == ["fvq-broken"]
    with pytest.raises(UnknownMethodError, match=r"unknown quantization method 'mine'.*plugin 'fvq-broken' "
                                                 r"\(distribution 'fvq-broken' 1.2.3\) failed to import.*may be the "
                                                 r"plugin that provides it"):
        get_quantization_config("mine")
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-broken")
    plugins.reset()
    assert "unquantized" in QUANTIZATION_METHODS and plugins.get_plugin_failures() == []


def test_installed_plugin_is_discovered_and_allow_block_lists_apply(tmp_path, monkeypatch) -> None:
    src = """
        from fastvideo_quant.plugins import hookimpl
        from fvq_unquantized import UnquantizedConfig

        class ThirdConfig(UnquantizedConfig):
            @classmethod
            def get_name(cls):
                return "third"

        @hookimpl
        def register_quantization_methods(register):
            register(ThirdConfig)
    """
    make_dist(tmp_path, monkeypatch, "fvq-third", src, ep_name="third")
    plugins.reset()
    info = {p.name: p for p in get_plugins()}
    assert info["third"].distribution == "fvq-third" and info["third"].version == "1.2.3"
    assert "third" in QUANTIZATION_METHODS
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-third")  # by distribution name
    plugins.reset()
    assert "third" not in QUANTIZATION_METHODS
    monkeypatch.delenv("FVQ_DISABLE_PLUGINS")
    monkeypatch.setenv("FVQ_PLUGINS", "third")  # allowlist by entry-point name
    plugins.reset()
    assert list(QUANTIZATION_METHODS) == ["third"]
    monkeypatch.delenv("FVQ_PLUGINS")
    monkeypatch.setenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    assert list(QUANTIZATION_METHODS) == []


def test_one_method_class_has_one_loader_choice() -> None:
    class Conflicting:
        @hookimpl
        def register_quantization_methods(self, register):
            from fvq_unquantized import UnquantizedConfig, UnquantizedLinearMethod

            class Other(UnquantizedConfig):
                @classmethod
                def get_name(cls):
                    return "other"

            register(Other, UnquantizedLinearMethod, weight_loader_v2=False)

    with pytest.raises(PluginError, match=r"plugin 'other' \(in-process\) registers UnquantizedLinearMethod with "
                                          r"weight_loader_v2=False, but plugin 'unquantized' \(distribution "
                                          r"'fastvideo-quant' [^)]+\) already registered it with weight_loader_v2=True"):
        register_plugin(Conflicting(), name="other")


def test_float8_and_integer_tensors_do_not_cross_into_each_other() -> None:
    import torch

    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.parameter import copy_checked

    with pytest.raises(WeightLoadError, match=r"w: expected a float8 tensor \(torch.float8_e4m3fn\), found torch.bfloat16"):
        copy_checked(torch.empty(2, dtype=torch.float8_e4m3fn), torch.ones(2, dtype=torch.bfloat16), "w")
    with pytest.raises(WeightLoadError, match=r"expected an integer tensor \(torch.int32\), found torch.float32"):
        copy_checked(torch.empty(2, dtype=torch.int32), torch.ones(2), "qweight")
    dst = torch.empty(2)
    copy_checked(dst, torch.ones(2, dtype=torch.bfloat16))  # floats convert
    assert dst.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("mutate", [
    lambda names: names.append("MyMethod"),
    lambda names: names.extend(["MyMethod"]),
    lambda names: names.insert(0, "MyMethod"),
    lambda names: names.remove("Int8LinearMethod"),
    lambda names: names.pop(),
    lambda names: names.clear(),
    lambda names: names.sort(),
    lambda names: names.reverse(),
    lambda names: names.__setitem__(0, "MyMethod"),
    lambda names: names.__delitem__(0),
    lambda names: names.__iadd__(["MyMethod"]),
    lambda names: names.__imul__(2),
], ids=["append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "setitem", "delitem", "iadd",
        "imul"])
def test_weight_loader_v2_supported_says_how_to_register_when_mutated(mutate) -> None:
    """FastVideo and vLLM plugins add their method with ``WEIGHT_LOADER_V2_SUPPORTED.append("MyMethod")``: a bare
    AttributeError ('LiveNames' object has no attribute 'append')."""
    before = list(WEIGHT_LOADER_V2_SUPPORTED)
    with pytest.raises(PluginError) as info:
        mutate(WEIGHT_LOADER_V2_SUPPORTED)
    msg = str(info.value)
    assert msg.startswith("WEIGHT_LOADER_V2_SUPPORTED is read-only: it is derived from what plugins register with "
                          "weight_loader_v2=True (the class names of those methods, recomputed on every use), so "
                          "changing it would change nothing"), msg
    assert ("register the method class in your plugin's register_quantization_methods hook: "
            "register(MyConfig, MyLinearMethod, weight_loader_v2=True) (docs/plugins.md)") in msg, msg
    assert list(WEIGHT_LOADER_V2_SUPPORTED) == before


def test_quantization_methods_says_how_to_add_a_method_when_mutated() -> None:
    with pytest.raises(PluginError, match=r"^QUANTIZATION_METHODS is read-only: it is derived from the method names "
                                          r"plugins register \(recomputed on every use\), so changing it would change "
                                          r"nothing; register "
                                          r"the method class .*: register\(MyConfig, MyLinearMethod, "
                                          r"weight_loader_v2=\.\.\.\)"):
        QUANTIZATION_METHODS.append("mine")
    assert "mine" not in QUANTIZATION_METHODS
