"""Loading plugins: a plugin that fails is left out and reported (the others work), a plugin implementing no hook is
refused saying why, duplicate and conflicting method names say whose, and every message names the plugin once."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import fake_dist
import pytest

from fastvideo_quant import plugins
from fastvideo_quant.errors import PluginError, UnknownMethodError
from fastvideo_quant.plugins import PluginLoadWarning, hookimpl, register_plugin
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config

GOOD = """
    from fastvideo_quant.plugins import hookimpl
    from fvq_unquantized import UnquantizedConfig

    class MyW8Config(UnquantizedConfig):
        @classmethod
        def get_name(cls):
            return "myw8"

    @hookimpl
    def register_quantization_methods(register):
        register(MyW8Config)
"""


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    fresh_plugins += ['mine', 'twice', 'empty']


def make_dist(tmp_path: Path, monkeypatch, src: str, value: str = "fvq_myw8_hooks", name: str = "fvq-myw8") -> None:
    """An installed distribution ``name`` 0.0.1 on sys.path whose entry point ``myw8`` is ``value``; the module
    ``fvq_myw8_hooks`` holds ``src``."""
    fake_dist.install(tmp_path, monkeypatch, name=name, version="0.0.1", module="fvq_myw8_hooks", source=src,
                      entry="myw8", value=value)
    plugins.reset()


def only_failure() -> str:
    """The one plugin failure of this build (built without warning), as its message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        failures = plugins.get_plugin_failures()
    assert [f.name for f in failures] == ["myw8"], failures
    return failures[0].message


def test_a_hook_function_without_hookimpl_is_refused_saying_to_mark_it(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, GOOD.replace("    @hookimpl\n", ""))
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) implements no hook: module fvq_myw8_hooks "
                          "has register_quantization_methods, but not marked @hookimpl"), msg
    assert "mark it with @fastvideo_quant.plugins.hookimpl" in msg and "FVQ_DISABLE_PLUGINS=myw8" in msg


def test_unknown_method_names_the_plugin_that_failed_to_load(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, GOOD.replace("    @hookimpl\n", ""))
    with pytest.warns(PluginLoadWarning), pytest.raises(UnknownMethodError) as info:
        get_quantization_config("myw8")
    msg = str(info.value)
    assert msg.startswith("unknown quantization method 'myw8'; available: ['awq', 'fp8', 'int8', 'unquantized']"), msg
    assert "plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) implements no hook" in msg
    assert "it is likely the plugin that provides 'myw8'" in msg and "it may be the plugin" not in msg, msg


def test_a_failed_plugin_of_the_methods_name_comes_before_any_other_spelling(tmp_path, monkeypatch) -> None:
    """(Was: "Did you mean 'int8'?" first, for a method whose own plugin 'groupint8' had failed to import.)"""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-groupint8", version="0.0.1", module="fvq_groupint8_hooks",
                      source="raise ImportError('no module named groupint8_kernels')\n", entry="groupint8",
                      value="fvq_groupint8_hooks")
    plugins.reset()
    with pytest.warns(PluginLoadWarning), pytest.raises(UnknownMethodError) as info:
        get_quantization_config("groupint8")
    msg = str(info.value)
    assert "Did you mean" not in msg, msg
    assert msg.startswith("unknown quantization method 'groupint8'; available: ['awq', 'fp8', 'int8', 'unquantized']. "
                          "plugin 'groupint8' (distribution 'fvq-groupint8' 0.0.1) failed to import"), msg
    assert msg.count("plugin 'groupint8' (distribution") == 1, msg


def test_an_entry_point_at_a_module_without_hooks_says_where_to_point_it(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, "SOMETHING = 1\n")
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) implements no hook: module fvq_myw8_hooks "
                          "(its entry point 'myw8 = fvq_myw8_hooks') has no function marked @hookimpl"), msg
    assert "point the entry point at the module holding your @fastvideo_quant.plugins.hookimpl functions" in msg


def test_an_unmarked_misspelled_hook_is_named_with_the_right_spelling(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, "def register_quantisation_methods(register):\n    pass\n")
    msg = only_failure()
    assert "has register_quantisation_methods, which is not a hook name and not marked @hookimpl (did you mean " \
           "'register_quantization_methods'?)" in msg, msg


def test_an_entry_point_naming_a_class_is_refused_saying_to_use_an_instance(tmp_path, monkeypatch) -> None:
    src = """
        from fastvideo_quant.plugins import hookimpl

        class Hooks:
            @hookimpl
            def register_quantization_methods(self, register):
                pass
    """
    make_dist(tmp_path, monkeypatch, src, value="fvq_myw8_hooks:Hooks")
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1): its entry point 'myw8 = fvq_myw8_hooks:Hooks' "
                          "is the class fvq_myw8_hooks.Hooks, not a module or an instance"), msg
    assert "HOOKS = Hooks() in fvq_myw8_hooks and the entry point 'myw8 = fvq_myw8_hooks:HOOKS'" in msg


def test_register_plugin_refuses_an_object_without_hooks_and_a_class() -> None:
    class Unmarked:
        def register_quantization_methods(self, register):
            pass

    with pytest.raises(PluginError, match=r"^plugin 'mine' \(in-process\) implements no hook: a Unmarked instance has "
                                          r"register_quantization_methods, but not marked @hookimpl"):
        register_plugin(Unmarked(), "mine")

    class Marked:
        @hookimpl
        def register_quantization_methods(self, register):
            pass

    with pytest.raises(PluginError, match=r"the object given to register_plugin is the class .*Marked, not a module "
                                          r"or an instance.*register_plugin\(.*Marked\(\), 'mine'\)"):
        register_plugin(Marked, "mine")


def test_a_broken_plugin_leaves_the_builtins_working_and_warns_once(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, "raise RuntimeError('boom at import')\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = resolve_quant_config("fp8")
        resolve_quant_config("int8")
    assert type(cfg).get_name() == "fp8"
    found = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(found) == 1, found  # once, however many uses
    assert found[0].startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) failed to import fvq_myw8_hooks: "
                               "RuntimeError: boom at import (at "), found
    assert "fvq_myw8_hooks.py:1)" in found[0] and "its methods are left out" in found[0]
    assert found[0].endswith("uninstall it (pip uninstall fvq-myw8), or skip it with FVQ_DISABLE_PLUGINS=myw8")


def test_an_import_error_names_the_line_in_the_plugins_own_code(tmp_path, monkeypatch) -> None:
    """The innermost frame in the plugin's own package (the line calling the failing dependency), not the import
    machinery's or the dependency's."""
    (tmp_path / "fvq_myw8_dep.py").write_text("def load():\n    raise RuntimeError('no device')\n")
    make_dist(tmp_path, monkeypatch, "import os\nimport fvq_myw8_dep\n\nfvq_myw8_dep.load()\n")
    msg = only_failure()
    assert "RuntimeError: no device (at " in msg and "fvq_myw8_hooks.py:4)" in msg, msg
    sys.modules.pop("fvq_myw8_dep", None)


def test_a_hook_raising_names_the_file_and_line(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, GOOD.replace("register(MyW8Config)", "register(MyW8Config, missing_name)"))
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) raised in register_quantization_methods: "
                          "NameError: name 'missing_name' is not defined (at "), msg
    assert "fvq_myw8_hooks.py:12)" in msg, msg


def test_one_plugin_registering_a_name_twice_is_told_so() -> None:
    from fvq_unquantized import UnquantizedConfig

    class MyW8Config(UnquantizedConfig):
        @classmethod
        def get_name(cls):
            return "myw8"

    class Twice:
        @hookimpl
        def register_quantization_methods(self, register):
            register(MyW8Config)
            register(MyW8Config)

    with pytest.raises(PluginError) as info:
        register_plugin(Twice(), "twice")
    msg = str(info.value)
    assert msg.startswith("plugin 'twice' (in-process) registered method 'myw8' twice (MyW8Config both times); call "
                          "register once per method (registered at "), msg
    assert "already registered" not in msg and "Uninstall" not in msg


def test_taking_a_builtins_name_says_to_rename_and_leaves_the_name_unusable(tmp_path, monkeypatch) -> None:
    """Neither plugin's method is used (which one would be depends on load order); asking for it says why."""
    make_dist(tmp_path, monkeypatch, GOOD.replace('return "myw8"', 'return "fp8"'))
    with pytest.warns(PluginLoadWarning, match="method 'fp8' is registered by"), pytest.raises(PluginError) as info:
        resolve_quant_config("fp8")
    msg = str(info.value)
    assert msg.startswith("method 'fp8' is registered by plugin 'fp8' (distribution 'fastvideo-quant' "), msg
    assert "and plugin 'myw8' (distribution 'fvq-myw8' 0.0.1); method names must be unique, so neither is used" in msg
    assert "plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) should return another name from MyW8Config.get_name()" in msg
    assert msg.endswith("uninstall one, or block one with FVQ_DISABLE_PLUGINS=myw8"), msg
    assert type(resolve_quant_config("int8")).get_name() == "int8"  # the other methods work
    with pytest.raises(PluginError, match="method 'fp8' is registered by"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8"}})
    # asking for the name the author meant: the unknown-method error points at the plugin that took another name
    with pytest.raises(UnknownMethodError) as info:
        resolve_quant_config("myw8")
    assert ("unknown quantization method 'myw8'" in str(info.value)
            and "method 'fp8' is registered by plugin 'fp8' (distribution 'fastvideo-quant' " in str(info.value)), \
        str(info.value)


def test_a_plugin_registering_nothing_is_named_by_the_unknown_method_error() -> None:
    class Empty:
        @hookimpl
        def register_quantization_methods(self, register):
            pass  # e.g. registers only when its dependency imports

    register_plugin(Empty(), "empty")
    with pytest.raises(UnknownMethodError, match=r"plugin 'empty' \(in-process\) is loaded but registered no method"):
        get_quantization_config("myw8")


def test_an_uppercase_request_suggests_the_lowercase_name() -> None:
    with pytest.raises(UnknownMethodError, match=r"unknown quantization method 'FP8'.*did you mean 'fp8'\?"):
        get_quantization_config("FP8")


def test_ensure_registered_with_another_methods_name_says_what_the_module_registers(tmp_path, monkeypatch) -> None:
    """The hooks module is loaded already (here by its entry point) and registers 'myw8': asking for 'typo' leaked
    pluggy's 'Plugin already registered under a different name: typo=<module ...> {...}'."""
    from fastvideo_quant.plugins import ensure_registered

    make_dist(tmp_path, monkeypatch, GOOD)
    ensure_registered("myw8", "fvq_myw8_hooks")  # registered by the entry point: nothing to do
    with pytest.raises(PluginError) as info:
        ensure_registered("typo", "fvq_myw8_hooks")
    msg = str(info.value)
    assert msg == ("ensure_registered('typo', 'fvq_myw8_hooks'): module fvq_myw8_hooks is already registered, as "
                   "plugin 'myw8' (distribution 'fvq-myw8' 0.0.1), and registers methods ['myw8'], not 'typo'; pass "
                   "one of those names (what its config class's get_name() returns)"), msg
    assert "typo" not in plugins.get_registry().plugins and "myw8" in plugins.get_registry().by_name


def test_ensure_registered_in_process_then_with_a_wrong_name(tmp_path, monkeypatch, fresh_plugins) -> None:
    from fastvideo_quant.plugins import ensure_registered

    (tmp_path / "fvq_inproc_hooks.py").write_text(textwrap.dedent(GOOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fvq_inproc_hooks", raising=False)
    fresh_plugins.append("myw8")
    ensure_registered("myw8", "fvq_inproc_hooks")
    assert plugins.get_registry().by_name["myw8"].plugin == "myw8"
    with pytest.raises(PluginError, match=r"^ensure_registered\('typo', 'fvq_inproc_hooks'\): module fvq_inproc_hooks "
                                          r"is already registered, as plugin 'myw8' \(in-process\), and registers "
                                          r"methods \['myw8'\], not 'typo'"):
        ensure_registered("typo", "fvq_inproc_hooks")


def test_registering_one_module_under_a_second_name_names_the_first_not_pluggy_internals(tmp_path,
                                                                                      monkeypatch) -> None:
    import importlib

    make_dist(tmp_path, monkeypatch, GOOD)
    module = importlib.import_module("fvq_myw8_hooks")
    with pytest.raises(PluginError) as info:
        register_plugin(module, "mine")
    msg = str(info.value)
    assert msg == ("plugin 'mine' (in-process) could not be registered (the object given to register_plugin): module "
                   "fvq_myw8_hooks is already registered, as plugin 'myw8', and a plugin object registers once, under "
                   "one name; its methods are those plugin 'myw8' registers (fvq plugins lists them)"), msg


def test_a_register_hook_taking_no_argument_is_refused_at_admission(tmp_path, monkeypatch) -> None:
    """pluggy admits an implementation taking a subset of the spec's arguments; one without ``register`` cannot
    register anything, and is refused naming the plugin, its distribution, where it is defined and the signature
    (it was "raised in register_quantization_methods: TypeError: ... got an unexpected keyword argument")."""
    make_dist(tmp_path, monkeypatch, GOOD.replace("register_quantization_methods(register)",
                                                  "register_quantization_methods()"))
    msg = only_failure()
    hooks = tmp_path / "fvq_myw8_hooks.py"
    assert hooks.is_file()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1): module fvq_myw8_hooks implements "
                          f"register_quantization_methods() at {hooks}:10, which takes no 'register' argument, so it "
                          "cannot register any method; expected register_quantization_methods(register)"), msg
    assert "TypeError" not in msg and "FVQ_DISABLE_PLUGINS=myw8" in msg


def test_each_hook_implementation_is_called_with_the_arguments_it_declares() -> None:
    """As pluggy calls them, positionally by the names they declare: an instance's ``(self, register)`` and a
    function naming its argument ``register`` both work."""
    from fvq_unquantized import UnquantizedConfig

    class Mine(UnquantizedConfig):
        @classmethod
        def get_name(cls):
            return "mine"

    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(Mine)

    register_plugin(Hooks(), "mine")
    assert get_quantization_config("mine") is Mine


@pytest.mark.parametrize(("signature", "args", "why"), [
    ("register_quantization_methods(registry)", "registry",
     "which takes 'registry', which the hook does not pass (it passes only 'register', by name): rename 'registry' "
     "to 'register'"),
    ("register_quantization_methods(register, config)", "register, config",
     "which takes 'config', which the hook does not pass (it passes only 'register', by name): drop 'config'"),
])
def test_a_hook_argument_the_hook_does_not_pass_names_the_line_and_the_signature(tmp_path, monkeypatch, signature,
                                                                                 args, why) -> None:
    """A misnamed or extra argument said only "invalid hook implementation in module fvq_myw8_hooks" (with pluggy's
    text), though the docs promise the file:line in the plugin's own code, as the no-argument case gives."""
    make_dist(tmp_path, monkeypatch, GOOD.replace("register_quantization_methods(register)", signature))
    msg = only_failure()
    hooks = tmp_path / "fvq_myw8_hooks.py"
    assert msg.startswith(f"plugin 'myw8' (distribution 'fvq-myw8' 0.0.1): module fvq_myw8_hooks implements "
                          f"register_quantization_methods({args}) at {hooks}:10, {why}; expected "
                          "register_quantization_methods(register) (a method of an instance: "
                          "register_quantization_methods(self, register)), calling register(config_cls, "
                          "*method_classes, weight_loader_v2=False) once per method"), msg
    assert "invalid hook implementation" not in msg and "FVQ_DISABLE_PLUGINS=myw8" in msg, msg


def test_an_instance_hook_with_a_wrong_argument_names_its_method() -> None:
    class Hooks:
        @hookimpl
        def register_quantization_methods(self, registry):
            raise AssertionError("never called")

    with pytest.raises(PluginError) as info:
        register_plugin(Hooks(), "mine")
    msg = str(info.value)
    assert msg.startswith("plugin 'mine' (in-process): a Hooks instance implements "
                          f"register_quantization_methods(registry) at {__file__}:"), msg
    assert "rename 'registry' to 'register'; expected register_quantization_methods(register) (a method of an " \
           "instance: register_quantization_methods(self, register))" in msg, msg


RETURNS = GOOD.replace("import UnquantizedConfig", "import UnquantizedConfig, UnquantizedLinearMethod").replace(
    "        register(MyW8Config)", "        return [(MyW8Config, UnquantizedLinearMethod)]")  # (the same lines)


def test_a_hook_returning_its_registrations_is_a_load_error_saying_to_call_register(tmp_path, monkeypatch) -> None:
    """The return value was ignored: `fvq plugins` listed the plugin as "(registers no methods)" and asking for
    'myw8' said only that it is unknown."""
    make_dist(tmp_path, monkeypatch, RETURNS)
    msg = only_failure()
    hooks = tmp_path / "fvq_myw8_hooks.py"
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1): its register_quantization_methods (at "
                          f"{hooks}:10) returned [(<class 'fvq_myw8_hooks.MyW8Config'>, "), msg
    assert ("(list) instead of None; the hook's return value is not read, so nothing was registered: call "
            "register(config_cls, *method_classes, weight_loader_v2=...) once per method inside the hook instead of "
            "returning them") in msg, msg
    assert "FVQ_DISABLE_PLUGINS=myw8" in msg, msg
    assert "myw8" not in plugins.get_registry().by_name


def _config_named(name: str) -> type:
    """An unquantized config class registering under ``name``."""
    from fvq_unquantized import UnquantizedConfig

    return type(f"Config_{name}", (UnquantizedConfig,), {"get_name": classmethod(lambda cls: name)})


def test_a_hook_that_registers_and_returns_none_explicitly_loads() -> None:
    Mine = _config_named("mine")

    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            return register(Mine)  # (register returns None)

    register_plugin(Hooks(), "mine")
    assert get_quantization_config("mine") is Mine


def test_a_hook_that_registers_and_also_returns_is_not_told_it_registered_nothing() -> None:
    from fastvideo_quant.errors import PluginError

    Mine = _config_named("mine2")

    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(Mine)
            return [Mine]

    with pytest.raises(PluginError) as info:
        register_plugin(Hooks(), "mine2")
    msg = str(info.value)
    assert "whatever it returns is dropped (it registered ['mine2'] through register()): return nothing" in msg, msg
    assert "nothing was registered" not in msg, msg


def _hooks_module_on_path(tmp_path, monkeypatch, name: str = "fvq_inproc_hooks", src: str = GOOD) -> None:
    """A hooks module ``name`` (registering 'myw8') importable from ``tmp_path``, not installed, not imported yet."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_ensure_registered_takes_a_module_object(tmp_path, monkeypatch, fresh_plugins) -> None:
    """``ensure_registered("myw8", hooks)`` with the module itself: AttributeError: module ... has no attribute
    'startswith'."""
    import importlib

    from fastvideo_quant.plugins import ensure_registered

    _hooks_module_on_path(tmp_path, monkeypatch)
    fresh_plugins.append("myw8")
    module = importlib.import_module("fvq_inproc_hooks")
    ensure_registered("myw8", module)
    assert plugins.get_registry().by_name["myw8"].plugin == "myw8"
    ensure_registered("myw8", module)  # registered: nothing to do
    with pytest.raises(PluginError, match=r"^ensure_registered\('typo', <module 'fvq_inproc_hooks' from .*>\): module "
                                          r"fvq_inproc_hooks is already registered, as plugin 'myw8' \(in-process\), "
                                          r"and registers methods \['myw8'\], not 'typo'"):
        ensure_registered("typo", module)


@pytest.mark.parametrize("method, hooks_module, expected", [
    ("myw8", 42, r"^ensure_registered\('myw8', 42\): hooks_module must be the hooks module's import name \(a str, "
                 r"e\.g\. 'fvq_my_method\.hooks'\) or the module itself, found int 42$"),
    ("myw8", "", r"^ensure_registered\('myw8', ''\): hooks_module must be the hooks module's import name"),
    (None, "fvq_inproc_hooks", r"^ensure_registered\(None, 'fvq_inproc_hooks'\): method must be a method name \(a "
                               r"str, what the config class's get_name\(\) returns\), found NoneType None$"),
])
def test_ensure_registered_refuses_arguments_of_the_wrong_kind(method, hooks_module, expected) -> None:
    from fastvideo_quant.plugins import ensure_registered

    with pytest.raises(PluginError, match=expected):
        ensure_registered(method, hooks_module)


def test_ensure_registered_refuses_a_module_registering_another_name_and_keeps_nothing(tmp_path, monkeypatch,
                                                                                       fresh_plugins) -> None:
    """With autoload off (a bare checkout, a device machine), the module is registered in-process for the first
    time: it registered 'myw8' under the plugin name 'typo' and ensure_registered returned None, so the method asked
    for was still unknown at its first use."""
    from fastvideo_quant.plugins import ensure_registered

    monkeypatch.setenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    _hooks_module_on_path(tmp_path, monkeypatch)
    fresh_plugins += ["typo", "myw8"]
    with pytest.raises(PluginError) as info:
        ensure_registered("typo", "fvq_inproc_hooks")
    msg = str(info.value)
    assert msg == ("ensure_registered('typo', 'fvq_inproc_hooks'): module fvq_inproc_hooks registers methods ['myw8'], "
                   "not 'typo', so it was not registered; pass one of those names (what its config class's get_name() "
                   "returns)"), msg
    assert "typo" not in plugins.get_registry().plugins and "myw8" not in plugins.get_registry().by_name
    ensure_registered("myw8", "fvq_inproc_hooks")  # the right name registers it
    assert plugins.get_registry().by_name["myw8"].plugin == "myw8"


def test_a_plugin_exiting_at_import_is_left_out_not_the_host(tmp_path, monkeypatch) -> None:
    """``raise SystemExit`` (``sys.exit``) in a plugin's module ended the program that asked for any method, and
    ``fvq plugins`` printed only its text; it is an import that raised, like any other."""
    make_dist(tmp_path, monkeypatch, "raise SystemExit('this plugin needs CUDA')\n")
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) failed to import fvq_myw8_hooks: SystemExit: "
                          "this plugin needs CUDA (at "), msg
    assert "FVQ_DISABLE_PLUGINS=myw8" in msg, msg
    plugins.reset()
    with pytest.warns(PluginLoadWarning, match="SystemExit: this plugin needs CUDA"):
        assert type(resolve_quant_config("int8")).get_name() == "int8"


def test_a_register_hook_exiting_is_left_out_not_the_host(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, GOOD.replace("register(MyW8Config)", "raise SystemExit(3)"))
    msg = only_failure()
    assert msg.startswith("plugin 'myw8' (distribution 'fvq-myw8' 0.0.1) raised in register_quantization_methods: "
                          "SystemExit: 3 (at "), msg
    assert "myw8" not in plugins.get_registry().by_name and "fp8" in plugins.get_registry().by_name


@pytest.mark.parametrize("where", ["import", "hook"])
def test_a_keyboard_interrupt_while_plugins_load_still_interrupts(tmp_path, monkeypatch, where) -> None:
    src = ("raise KeyboardInterrupt\n" if where == "import" else
           GOOD.replace("register(MyW8Config)", "raise KeyboardInterrupt"))
    make_dist(tmp_path, monkeypatch, src)
    with pytest.raises(KeyboardInterrupt):
        plugins.get_registry()
