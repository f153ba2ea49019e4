"""``register`` refuses at once what would only fail later, naming the plugin, its distribution, the class, the
attribute, what was expected and what was found: a config or method class that is still abstract (it passed and was
then reported as the user's --config error), flags that are not bools (``online_quantization = "no"`` reads as True),
a tolerance stating no bound, and config file names that are not a list."""

from __future__ import annotations

import copy
import dataclasses
import json
import textwrap
import warnings
from pathlib import Path

import fake_dist
import pytest
import torch

from fastvideo_quant.errors import PluginError, UnknownMethodError
from fastvideo_quant.plugins import PluginLoadWarning, get_plugin_failures, hookimpl, register_plugin, unregister_plugin
from fastvideo_quant.quantization import QUANTIZATION_METHODS, Tolerance, get_quantization_config


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    fresh_plugins += ["myw8"]


def refused(config_cls: type, *methods: type, **options) -> str:
    """The PluginError registering ``config_cls`` (with ``methods`` and ``options``) in-process raises; nothing is
    registered."""
    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(config_cls, *methods, **options)

    before = list(QUANTIZATION_METHODS)
    with pytest.raises(PluginError) as info:
        register_plugin(Hooks(), "myw8")
    assert list(QUANTIZATION_METHODS) == before
    return str(info.value)


def accepted(config_cls: type, *methods: type, **options) -> None:
    class Hooks:
        @hookimpl
        def register_quantization_methods(self, register):
            register(config_cls, *methods, **options)

    register_plugin(Hooks(), "myw8")
    assert "myw8" in QUANTIZATION_METHODS


def config(**attrs):
    """A complete config class of method ``myw8`` with ``attrs`` set (class attributes, or classmethods' values for
    the ``get_*`` names)."""
    from fvq_unquantized import UnquantizedConfig

    body = {"get_name": classmethod(lambda cls: "myw8")}
    for attr, value in attrs.items():
        body[attr] = staticmethod(lambda v=value: v) if attr.startswith("get_") else value
    return type("MyW8Config", (UnquantizedConfig,), body)


# --- A: abstract classes -----------------------------------------------------------------------------------------

#: The config of docs/plugins.md's walk-through, without get_config_filenames (abstract in QuantizationConfig).
ABSTRACT_CONFIG = """
import torch
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import QuantizationConfig, Tolerance
from fvq_unquantized import UnquantizedLinearMethod

class MyConfig(QuantizationConfig):
    tolerance = Tolerance(max_rel_error=2e-2)

    @classmethod
    def get_name(cls):
        return "abs_method"

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.bfloat16]

    @classmethod
    def get_min_capability(cls):
        return 0

    @classmethod
    def from_config(cls, config):
        return cls()

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, UnquantizedLinearMethod)

@hookimpl
def register_quantization_methods(register):
    register(MyConfig, UnquantizedLinearMethod, weight_loader_v2=True)
"""


def test_an_abstract_config_class_is_refused_naming_what_it_lacks() -> None:
    namespace = {"__name__": "abs_example"}
    exec(textwrap.dedent(ABSTRACT_CONFIG), namespace)  # (the config the installed-plugin test below ships)
    MyConfig = namespace["MyConfig"]  # noqa: N806 - a class
    msg = refused(MyConfig)
    assert msg.startswith("plugin 'myw8' (in-process): config class abs_example.MyConfig is abstract: it does "
                          "not implement ['get_config_filenames'], so it cannot be instantiated"), msg
    assert ("implement in MyConfig: @staticmethod get_config_filenames(), declared by QuantizationConfig: Files in "
            "a checkpoint directory") in msg, msg
    assert "(registered at " in msg and "test_register_refusals.py:" in msg, msg


def test_an_abstract_method_class_is_refused_naming_what_it_lacks() -> None:
    from fvq_unquantized import UnquantizedLinearMethod

    from fastvideo_quant.quantization import LinearMethodBase

    class NoApply(LinearMethodBase):
        create_weights = UnquantizedLinearMethod.create_weights

    msg = refused(config(), NoApply)
    assert "plugin 'myw8' (in-process): method class " in msg and ".NoApply (registered with MyW8Config) is abstract: " \
        "it does not implement ['apply']" in msg, msg
    assert "implement in NoApply: apply(self, layer, x, bias=None), declared by LinearMethodBase" in msg, msg


def test_an_installed_abstract_config_is_a_failed_plugin_not_an_available_method(tmp_path: Path, monkeypatch,
                                                                                capsys) -> None:
    """`fvq plugins` listed it as available (exit 0) and `fvq check` blamed --config; now the plugin is reported as
    not loaded, naming its distribution, and asking for the method says why."""
    from fastvideo_quant import plugins
    from fastvideo_quant.cli import main

    fake_dist.install(tmp_path, monkeypatch, name="fvq-abs", version="0.1", module="fvq_abs_hooks",
                      source=ABSTRACT_CONFIG, entry="abs_method")
    plugins.reset()

    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert ("error: plugin 'abs_method' (distribution 'fvq-abs' 0.1): config class fvq_abs_hooks.MyConfig is "
            "abstract: it does not implement ['get_config_filenames']") in out, out
    assert "abs_method: available" not in out, out
    assert main(["plugins", "--json"]) == 1
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "abs_method")
    assert row["status"] == "error" and row["distribution"] == "fvq-abs", row

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        assert [f.name for f in get_plugin_failures()] == ["abs_method"]
        with pytest.raises(UnknownMethodError, match=r"unknown quantization method 'abs_method'.*MyConfig is "
                                                     r"abstract: it does not implement \['get_config_filenames'\]"):
            get_quantization_config("abs_method")


# --- B: flags, tolerance, config file names ------------------------------------------------------------------------

WHERE = "plugin 'myw8' (in-process), method 'myw8': MyW8Config."


@pytest.mark.parametrize("attr, value, expected", [
    ("online_quantization", "no", "online_quantization is 'no' (str); expected a bool, True or False (this value "
                                  "reads as True): set it to False"),
    ("supports_torch_compile", "yes", "supports_torch_compile is 'yes' (str); expected a bool, True or False (this "
                                      "value reads as True): set it to True"),
    ("supports_torch_compile", 1, "supports_torch_compile is 1 (int); expected a bool, True or False (this value "
                                  "reads as True): set it to True"),
    ("online_quantization", None, "online_quantization is None (NoneType); expected a bool, True or False (this "
                                  "value reads as False): set it to True or False"),
])
def test_flags_are_real_bools(attr, value, expected) -> None:
    msg = refused(config(**{attr: value}))
    assert msg.startswith(WHERE + expected), msg


@pytest.mark.parametrize("value", ["fp8_compute", ["fp8_compute"], ("fp8_compute", 1)])
def test_load_time_keys_are_a_tuple_of_names(value) -> None:
    msg = refused(config(load_time_keys=value))
    assert msg.startswith(WHERE + f"load_time_keys is {value!r}; expected a tuple of the config key names that "
                                  "choose how loaded layers compute"), msg


@pytest.mark.parametrize("tolerance, expected", [
    (Tolerance(), "tolerance is Tolerance(max_rel_error=None, min_sqnr_db=None), which states no bound "
                  "(max_rel_error and min_sqnr_db are both None), so apply() would be checked against nothing; "
                  "expected at least one: fastvideo_quant.quantization.Tolerance(max_rel_error=..., min_sqnr_db=...)"),
    (Tolerance(max_rel_error="0.02"), "tolerance is Tolerance(max_rel_error='0.02', min_sqnr_db=None); expected "
                                      "max_rel_error to be None or a number >= 0, found '0.02' (str)"),
    (Tolerance(max_rel_error=-0.1), "tolerance is Tolerance(max_rel_error=-0.1, min_sqnr_db=None); expected "
                                    "max_rel_error to be None or a number >= 0, found -0.1 (float)"),
    (Tolerance(min_sqnr_db=float("nan")), "tolerance is Tolerance(max_rel_error=None, min_sqnr_db=nan); expected "
                                          "min_sqnr_db to be None or a finite number (decibels), found nan (float)"),
    (Tolerance(max_rel_error=True), "tolerance is Tolerance(max_rel_error=True, min_sqnr_db=None); expected "
                                    "max_rel_error to be None or a number >= 0, found True (bool)"),
    (Tolerance(1e-2, dtypes={torch.float32: Tolerance(max_rel_error=-1e-5)}),
     "tolerance is Tolerance(max_rel_error=0.01, min_sqnr_db=None, dtypes={torch.float32: Tolerance(max_rel_error="
     "-1e-05, min_sqnr_db=None)}); expected tolerance.dtypes[torch.float32].max_rel_error to be None or a number >= 0, "
     "found -1e-05 (float)"),
    (Tolerance(dtypes={torch.float32: Tolerance(max_rel_error=1e-5)}),
     "tolerance is Tolerance(max_rel_error=None, min_sqnr_db=None, dtypes={torch.float32: Tolerance(max_rel_error="
     "1e-05, min_sqnr_db=None)}), which states no bound for ['torch.bfloat16', 'torch.float16'] (max_rel_error and "
     "min_sqnr_db are both None), so apply() would be checked against nothing"),
])
def test_a_tolerance_states_a_bound_and_each_bound_is_a_number(tolerance, expected) -> None:
    msg = refused(config(tolerance=tolerance))
    assert msg.startswith(WHERE + expected), msg


@pytest.mark.parametrize("value, shown", [("quant_config.json", "'quant_config.json'"), (None, "None"),
                                          ([1], "[1]")])
def test_config_filenames_are_a_list_of_names(value, shown) -> None:
    msg = refused(config(get_config_filenames=value))
    assert msg.startswith(WHERE + f"get_config_filenames() returned {shown}; expected a list of the file names "
                                  "besides config.json"), msg


def test_valid_flags_tolerances_and_file_names_register() -> None:
    accepted(config(online_quantization=False, supports_torch_compile=True, tolerance=Tolerance(min_sqnr_db=30),
                    get_config_filenames=["quant_config.json"], get_supported_act_dtypes=[torch.bfloat16]))


def test_a_tolerance_per_dtype_registers_without_an_outer_bound_when_it_covers_every_dtype() -> None:
    """A bound for every declared dtype needs no outer one; a bound for a dtype the config does not declare (a subclass
    narrowing its parent's dtypes) is allowed."""
    per_dtype = {torch.bfloat16: Tolerance(1e-2), torch.float16: Tolerance(1e-3), torch.float32: Tolerance(1e-5)}
    accepted(config(tolerance=Tolerance(dtypes=per_dtype)))
    unregister_plugin("myw8")
    accepted(config(tolerance=Tolerance(dtypes=per_dtype), get_supported_act_dtypes=[torch.float32]))


@pytest.mark.parametrize("kwargs, error, text", [
    ({"dtypes": {"float32": Tolerance(1e-5)}}, TypeError,
     "Tolerance.dtypes: key 'float32' is not a floating-point torch.dtype (e.g. torch.float32)"),
    ({"dtypes": {torch.int8: Tolerance(1e-5)}}, TypeError, "Tolerance.dtypes: key torch.int8 is not a floating-point"),
    ({"dtypes": {torch.float32: 1e-5}}, TypeError, "Tolerance.dtypes[torch.float32]: expected a Tolerance, found float"),
    ({"dtypes": {torch.float32: Tolerance()}}, ValueError, "Tolerance.dtypes[torch.float32] states no bound"),
    ({"dtypes": {torch.float32: Tolerance(1e-5, dtypes={torch.float32: Tolerance(1e-6)})}}, ValueError,
     "Tolerance.dtypes[torch.float32] has dtypes of its own"),
    ({"dtypes": [(torch.float32, Tolerance(1e-5))]}, TypeError, "Tolerance.dtypes must be a dict of torch.dtype -> "
                                                                "Tolerance, found list"),
])
def test_a_per_dtype_tolerance_is_checked_when_made(kwargs, error, text) -> None:
    with pytest.raises(error) as info:
        Tolerance(max_rel_error=1e-2, **kwargs)
    assert str(info.value).startswith(text), info.value


def test_a_per_dtype_tolerance_reads_copies_compares_and_pickles() -> None:
    import pickle

    given = {torch.float32: Tolerance(1e-5)}
    tol = Tolerance(1e-2, dtypes=given)
    given[torch.float16] = Tolerance(1e-3)  # (a copy was kept)
    assert tol.for_dtype(torch.float32) == Tolerance(1e-5) and tol.for_dtype(torch.bfloat16) == Tolerance(1e-2)
    assert tol.for_dtype(torch.float16) == Tolerance(1e-2) and torch.float16 not in tol.dtypes
    assert tol != Tolerance(1e-2) and hash(tol) == hash(Tolerance(1e-2))  # (hashable; dtypes not in the hash)
    assert pickle.loads(pickle.dumps(tol)) == tol  # (a config instance carrying it goes to spawned ranks)
    with pytest.raises(TypeError, match="Tolerance.dtypes is read-only"):  # (a subclass editing its parent's bounds)
        tol.dtypes[torch.float16] = Tolerance(1e-3)
    with pytest.raises(TypeError, match="Tolerance.dtypes is read-only"):
        tol.dtypes.update({torch.float16: Tolerance(1e-3)})
    assert dataclasses.asdict(tol) == {"max_rel_error": 1e-2, "min_sqnr_db": None, "dtypes": {
        torch.float32: {"max_rel_error": 1e-5, "min_sqnr_db": None, "dtypes": {}}}}
    assert copy.deepcopy(tol) == tol and tol.dtypes == {torch.float32: Tolerance(1e-5)}
    assert repr(Tolerance(1e-2)) == "Tolerance(max_rel_error=0.01, min_sqnr_db=None)"


# --- an instance-method declaration (FastVideo's style) ------------------------------------------------------------

def test_an_instance_method_get_name_is_told_to_be_a_classmethod() -> None:
    """``def get_name(self)``: registration calls it on the class, and said only "missing 1 required positional
    argument: 'self'"."""
    from fvq_unquantized import UnquantizedConfig

    class MyW8Config(UnquantizedConfig):
        def get_name(self):
            return "myw8"

    msg = refused(MyW8Config)
    assert "MyW8Config.get_name() raised TypeError: " in msg and "missing 1 required positional argument: 'self'" \
        in msg, msg
    assert ("; get_name is called on the class (at registration, before any config exists), so make it a "
            f"@classmethod ({__file__}:") in msg and "): @classmethod def get_name(cls) (registered at " in msg, msg


def test_a_type_error_inside_a_classmethod_gets_no_classmethod_hint() -> None:
    def get_min_capability(cls):
        raise TypeError("capability table is not a dict")

    msg = refused(type("MyW8Config", (config(),), {"get_min_capability": classmethod(get_min_capability)}))
    assert "get_min_capability() raised TypeError: capability table is not a dict" in msg, msg
    assert "@classmethod" not in msg, msg


# --- weight_loader_v2 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, shown, fix", [
    ("no", "'no' (str)", "reads as True): pass weight_loader_v2=False"),
    ("False", "'False' (str)", "reads as True): pass weight_loader_v2=False"),
    (1, "1 (int)", "reads as True): pass weight_loader_v2=True"),
    (None, "None (NoneType)", "reads as False): pass weight_loader_v2=True or weight_loader_v2=False"),
])
def test_weight_loader_v2_is_a_real_bool(value, shown, fix) -> None:
    """``weight_loader_v2="no"`` read as truthy: the layers loaded the method's parameters through weight_loader_v2."""
    from fvq_unquantized import UnquantizedLinearMethod

    method = type("MyW8Method", (UnquantizedLinearMethod,), {})
    msg = refused(config(), method, weight_loader_v2=value)
    assert msg.startswith(f"plugin 'myw8' (in-process) registered MyW8Config with weight_loader_v2={shown}; expected "
                          f"a bool, True or False (this value {fix}"), msg
    assert "(registered at " in msg and "test_register_refusals.py:" in msg, msg


def test_weight_loader_v2_true_without_a_method_class_is_refused() -> None:
    """``register(Cfg, weight_loader_v2=True)`` declared v2 for no class: layers looked the loader up by the method
    class get_quant_method returns, found none, and loaded through v1 without a word."""
    msg = refused(config(), weight_loader_v2=True)
    assert msg.startswith("plugin 'myw8' (in-process), method 'myw8': register(MyW8Config, weight_loader_v2=True) "
                          "names no method class: register() was called with the config class only, so no layer knows "
                          "whether its parameters load through weight_loader_v2"), msg
    assert "weight_loader_v2=True applies to the method classes passed with it" in msg, msg
    assert ("pass every method class its get_quant_method returns: register(MyW8Config, <method classes>, "
            "weight_loader_v2=True)") in msg, msg


def test_a_config_alone_without_weight_loader_v2_still_registers() -> None:
    """Registering a config alone stays allowed (its declarations are checked; the conformance suite fails it)."""
    accepted(config())
