"""A plugin is its distribution's entry point: two distributions with an entry point of one name never knock each
other out, whatever their order on sys.path. The built-in keeps its bare name; a third party's entry point named like
another distribution's loads as ``distribution:entry-point``, the name its messages, fixes and the FVQ_* variables use.

(Was: the first entry point of a name on sys.path won, so a third party's ``fp8 = ...`` entry point knocked out the
built-in fp8 plugin, blaming it and advising ``FVQ_DISABLE_PLUGINS=fastvideo-quant``, which blocks every built-in.)"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import fake_dist
import pytest

from fastvideo_quant import plugins
from fastvideo_quant.errors import PluginError, UnknownMethodError
from fastvideo_quant.plugins import PluginLoadWarning
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config


def hooks(method: str) -> str:
    """A hooks module registering an unquantized method called ``method``."""
    return f"""
        from fastvideo_quant.plugins import hookimpl
        from fvq_unquantized import UnquantizedConfig

        class ShadowConfig(UnquantizedConfig):
            @classmethod
            def get_name(cls):
                return {method!r}

        @hookimpl
        def register_quantization_methods(register):
            register(ShadowConfig)
    """


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    """A fresh registry (conftest.fresh_plugins)."""


def install(tmp_path: Path, monkeypatch, source: str, *, entry: str = "fp8", name: str = "fvq-shadow",
            where: str = "first") -> None:
    """Distribution ``name`` 0.0.1 whose entry point ``entry`` is a module holding ``source``, on sys.path before
    (``first``) or after (``last``) the installed distributions."""
    folder = tmp_path / name
    folder.mkdir()
    module = f"{name.replace('-', '_')}_hooks"
    fake_dist.install(folder, monkeypatch, name=name, version="0.0.1", module=module, source=source, entry=entry)
    if where == "last":
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)] + [str(folder)])
    plugins.reset()


def quietly(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        return call()


@pytest.mark.parametrize("where", ["first", "last"])
def test_an_entry_point_named_like_a_builtins_loads_beside_it(tmp_path, monkeypatch, where) -> None:
    install(tmp_path, monkeypatch, hooks("fp8fast"), where=where)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # nothing left out, nothing to warn about
        assert type(resolve_quant_config("fp8")).get_name() == "fp8"
        assert get_quantization_config("fp8fast").__name__ == "ShadowConfig"
    assert plugins.get_plugin_failures() == []
    info = {i.name: i for i in plugins.get_plugins()}
    assert info["fp8"].distribution == "fastvideo-quant" and info["fp8"].methods == ["fp8"]
    assert info["fvq-shadow:fp8"].distribution == "fvq-shadow" and info["fvq-shadow:fp8"].methods == ["fp8fast"]
    assert plugins.get_registry().by_name["fp8fast"].origin == "plugin 'fvq-shadow:fp8' (distribution 'fvq-shadow')"


@pytest.mark.parametrize("where", ["first", "last"])
def test_the_third_partys_failure_names_it_and_its_fix_blocks_only_it(tmp_path, monkeypatch, where) -> None:
    install(tmp_path, monkeypatch, "raise ImportError('needs libshadow')\n", where=where)
    with pytest.warns(PluginLoadWarning) as caught:
        assert type(resolve_quant_config("fp8")).get_name() == "fp8"
    [warning] = [str(w.message) for w in caught]
    assert warning.startswith("plugin 'fvq-shadow:fp8' (distribution 'fvq-shadow' 0.0.1) failed to import "
                              "fvq_shadow_hooks: ImportError: needs libshadow"), warning
    assert warning.endswith("or skip it with FVQ_DISABLE_PLUGINS=fvq-shadow:fp8"), warning
    assert "fastvideo-quant" not in warning, warning
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-shadow:fp8")  # the advice: the built-ins all still load
    plugins.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.get_plugin_failures() == []
        assert sorted(plugins.get_registry().by_name) == ["awq", "fp8", "int8", "unquantized"]


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_method_name_clash_keeps_todays_rules_and_blocks_only_the_third_party(tmp_path, monkeypatch, where) -> None:
    install(tmp_path, monkeypatch, hooks("fp8"), where=where)
    with pytest.warns(PluginLoadWarning), pytest.raises(PluginError) as info:
        resolve_quant_config("fp8")
    msg = str(info.value)
    assert msg.startswith("method 'fp8' is registered by plugin 'fp8' (distribution 'fastvideo-quant' "), msg
    assert "and plugin 'fvq-shadow:fp8' (distribution 'fvq-shadow' 0.0.1); method names must be unique" in msg, msg
    assert msg.endswith("uninstall one, or block one with FVQ_DISABLE_PLUGINS=fvq-shadow:fp8"), msg
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-shadow:fp8")
    plugins.reset()
    assert type(resolve_quant_config("fp8")).get_name() == "fp8"


def test_the_variables_name_the_builtin_and_the_third_party_apart(tmp_path, monkeypatch) -> None:
    install(tmp_path, monkeypatch, hooks("fp8fast"))
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fp8")  # the bare entry-point name: both (a block list fails closed)
    plugins.reset()
    assert sorted(plugins.get_registry().by_name) == ["awq", "int8", "unquantized"]
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fastvideo-quant:fp8")  # the built-in's, qualified: the third party loads
    plugins.reset()
    assert sorted(plugins.get_registry().by_name) == ["awq", "fp8fast", "int8", "unquantized"]
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-shadow")  # its distribution's name
    plugins.reset()
    assert sorted(plugins.get_registry().by_name) == ["awq", "fp8", "int8", "unquantized"]
    monkeypatch.delenv("FVQ_DISABLE_PLUGINS")
    monkeypatch.setenv("FVQ_PLUGINS", "fvq-shadow:fp8")
    plugins.reset()
    assert sorted(plugins.get_registry().by_name) == ["fp8fast"]
    status = {e.plugin: e for e in plugins.list_entry_points()}
    assert status["fp8"].name == "fp8" and status["fp8"].distribution == "fastvideo-quant"
    assert not status["fp8"].selected and status["fvq-shadow:fp8"].selected
    assert status["fvq-shadow:fp8"].name == "fp8" and status["fvq-shadow:fp8"].value == "fvq_shadow_hooks"


@pytest.mark.parametrize("order", [("fvq-a", "fvq-b"), ("fvq-b", "fvq-a")])
def test_two_third_parties_with_one_entry_point_name_both_load(tmp_path, monkeypatch, order) -> None:
    for dist in order:
        install(tmp_path, monkeypatch, hooks(f"m_{dist[-1]}"), entry="mine", name=dist)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        registry = plugins.get_registry()
    assert registry.by_name["m_a"].plugin == "fvq-a:mine" and registry.by_name["m_b"].plugin == "fvq-b:mine"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert get_quantization_config("m_a").__module__ == "fvq_a_hooks"


def test_a_bare_entry_point_name_blocks_every_distributions_plugin_of_that_name(tmp_path, monkeypatch) -> None:
    """A block list fails closed: installing a second distribution with an entry point 'mine' must not unblock the
    first (both got qualified names, and 'mine' then matched neither; a diff reviewer's finding)."""
    for dist in ("fvq-a", "fvq-b"):
        install(tmp_path, monkeypatch, hooks(f"m_{dist[-1]}"), entry="mine", name=dist)
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", plugins.PluginSelectionWarning)
        registry = plugins.get_registry()
    assert not {"m_a", "m_b"} & set(registry.by_name)


def test_a_qualified_name_blocks_that_distributions_plugin_only(tmp_path, monkeypatch) -> None:
    for dist in ("fvq-a", "fvq-b"):
        install(tmp_path, monkeypatch, hooks(f"m_{dist[-1]}"), entry="mine", name=dist)
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-a:mine")
    registry = plugins.get_registry()
    assert "m_a" not in registry.by_name and "m_b" in registry.by_name


def test_blocking_a_plugin_that_is_not_installed_is_quiet_unless_it_looks_meant_for_one(monkeypatch) -> None:
    """"Make sure it is off" is a common setting; it warned on every registry build, breaking -W error setups."""
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "some-plugin-never-installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error", plugins.PluginSelectionWarning)
        plugins.get_registry()


def test_one_distribution_seen_twice_on_sys_path_loads_once(tmp_path, monkeypatch) -> None:
    for root in ("one", "two"):  # (a stale copy on PYTHONPATH and the installed one)
        (tmp_path / root).mkdir()
        install(tmp_path / root, monkeypatch, hooks("twice_seen"), entry="twice", name="fvq-twice")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert plugins.get_registry().by_name["twice_seen"].plugin == "twice"
    assert plugins.get_plugin_failures() == []


def test_a_failed_third_party_named_like_the_method_asked_for_is_named_as_its_likely_provider(tmp_path,
                                                                                              monkeypatch) -> None:
    for dist in ("fvq-a", "fvq-b"):
        install(tmp_path, monkeypatch, hooks("mine") if dist == "fvq-a" else "raise ImportError('no lib')\n",
                entry="mine", name=dist)
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-a")
    plugins.reset()
    with pytest.raises(UnknownMethodError) as info:
        quietly(lambda: get_quantization_config("mine"))
    msg = str(info.value)
    assert ("plugin 'fvq-b:mine' (distribution 'fvq-b' 0.0.1) failed to import fvq_b_hooks: ImportError: no lib"
            in msg and "it is likely the plugin that provides 'mine'" in msg), msg


def test_a_qualified_plugins_messages_quote_its_entry_point_as_written(tmp_path, monkeypatch) -> None:
    source = """
        from fastvideo_quant.plugins import hookimpl

        class Hooks:
            @hookimpl
            def register_quantization_methods(self, register):
                pass
    """
    folder = tmp_path / "fvq-shadow"
    folder.mkdir()
    fake_dist.install(folder, monkeypatch, name="fvq-shadow", version="0.0.1", module="fvq_shadow_hooks", source=source,
                      entry="fp8", value="fvq_shadow_hooks:Hooks")
    plugins.reset()
    [failure] = quietly(plugins.get_plugin_failures)
    assert failure.problem.startswith("plugin 'fvq-shadow:fp8' (distribution 'fvq-shadow' 0.0.1): its entry point "
                                      "'fp8 = fvq_shadow_hooks:Hooks' is the class fvq_shadow_hooks.Hooks"), failure
    assert "the entry point 'fp8 = fvq_shadow_hooks:HOOKS'" in failure.problem, failure
