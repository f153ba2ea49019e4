"""``fvq plugins``: listing, availability, broken plugins as error lines, --all with the FVQ_* variables."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import fake_dist
import pytest

from fastvideo_quant import plugins
from fastvideo_quant.cli import main
from fastvideo_quant.cli.plugins import method_availability
from fastvideo_quant.plugins import list_entry_points

GOOD = """
from fastvideo_quant.plugins import hookimpl
from fvq_unquantized import UnquantizedConfig

class GoodConfig(UnquantizedConfig):
    @classmethod
    def get_name(cls):
        return "good_m"

    @classmethod
    def unavailable_reason(cls):
        return "needs the 'goodlib' package: pip install goodlib"

@hookimpl
def register_quantization_methods(register):
    register(GoodConfig)
"""

BROKEN = "import does_not_exist_anywhere\n"


@pytest.fixture(autouse=True)
def _clean(fresh_plugins):
    """A fresh registry (conftest.fresh_plugins)."""


def make_dist(tmp_path: Path, monkeypatch, name: str, src: str) -> None:
    """An installed distribution on sys.path: a module and a dist-info with our entry point."""
    fake_dist.install(tmp_path, monkeypatch, name=name, version="2.0.0", module=f"{name.replace('-', '_')}_mod",
                      source=src, entry=name)


def fvq(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_lists_builtin_plugin_with_distribution_hooks_and_availability(capsys) -> None:
    rc, out = fvq(capsys, "plugins")
    assert rc == 0
    assert "unquantized  [fastvideo-quant " in out and "hooks: register_quantization_methods" in out
    assert "    unquantized: available - CPU: native" in out or "unquantized: available - GPU" in out


def test_json_and_unavailable_reason(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-good", GOOD)
    rc, out = fvq(capsys, "plugins", "--json")
    assert rc == 0
    row = {r["name"]: r for r in json.loads(out)}["fvq-good"]
    assert row["distribution"] == "fvq-good" and row["version"] == "2.0.0" and row["status"] == "loaded"
    assert row["methods"] == [{"name": "good_m", "available": False, "weight_loader_v2": False, "method_classes": [],
                               "reason": "missing dependency: needs the 'goodlib' package: pip install goodlib",
                               "act_dtypes": ["bfloat16", "float16", "float32"], "min_capability": 0,
                               "cpu_support": "native: torch.nn.functional.linear",
                               "tolerance": {"max_rel_error": 0.01, "min_sqnr_db": None, "stated": True, "dtypes": {
                                   "float16": {"max_rel_error": 0.001, "min_sqnr_db": None},
                                   "float32": {"max_rel_error": 1e-05, "min_sqnr_db": None}}}}]


def test_text_shows_each_methods_declarations(tmp_path, monkeypatch, capsys) -> None:
    """What plugins.md says `fvq plugins` shows: activation dtypes, minimum GPU capability, CPU support, tolerance."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # so the CPU path is not the availability reason
    monkeypatch.setattr("torch.cuda.get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *a: "NVIDIA H200")
    rc, out = fvq(capsys, "plugins")
    assert rc == 0
    lines = out.splitlines()
    at = lines.index("    fp8: available - GPU: NVIDIA H200 (sm_90)")
    assert lines[at + 1].startswith("        activation dtypes: bfloat16, float16, float32; GPU: compute capability "
                                    ">= 8.9; CPU: real fp8: "), lines[at + 1]
    assert lines[at + 2].startswith("        tolerance: max_rel_error="), lines[at + 2]
    assert lines[at + 2].endswith("; weight loader: v2"), lines[at + 2]
    assert ("        tolerance: float16 max_rel_error=0.001; float32 max_rel_error=1e-05; other dtypes max_rel_error=0.01;"
            " weight loader: v2") in lines  # (awq and unquantized: a bound per dtype)
    assert "        activation dtypes: bfloat16, float16, float32; GPU: any CUDA GPU; CPU: native: " \
           "torch.nn.functional.linear" in lines


UNSTATED = """
import torch
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import QuantizationConfig
from fvq_unquantized import UnquantizedConfig

class UnstatedConfig(QuantizationConfig):
    get_name = classmethod(lambda cls: "unstated_m")
    get_supported_act_dtypes = classmethod(lambda cls: [torch.bfloat16])
    get_min_capability = classmethod(lambda cls: 0)
    cpu_support = classmethod(lambda cls: "native")
    get_config_filenames = staticmethod(lambda: [])
    from_config = classmethod(lambda cls, config: cls())
    to_dict = lambda self: {"quant_method": "unstated_m"}
    get_quant_method = UnquantizedConfig.get_quant_method

@hookimpl
def register_quantization_methods(register):
    register(UnstatedConfig)
"""


def test_a_tolerance_the_config_does_not_state_is_shown_as_the_default(tmp_path, monkeypatch, capsys) -> None:
    """QuantizationConfig's 1e-2, inherited: shown as not stated (fvq check fails it), not as the method's bound."""
    make_dist(tmp_path, monkeypatch, "fvq-unstated", UNSTATED)
    rc, out = fvq(capsys, "plugins")
    assert ("        tolerance: max_rel_error=0.01 (not stated on the class: QuantizationConfig's default; state one per "
            "dtype); "
            "weight loader: v1 (no method class registered: the layers cannot tell how its parameters load; call "
            "register(Config, MyLinearMethod, weight_loader_v2=...))") in out.splitlines(), out
    rc, out = fvq(capsys, "plugins", "--json")
    row = {r["name"]: r for r in json.loads(out)}["fvq-unstated"]
    assert row["methods"][0]["tolerance"]["stated"] is False, row


def test_broken_plugin_is_an_error_line_and_others_still_list(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-good", GOOD)
    make_dist(tmp_path, monkeypatch, "fvq-broken", BROKEN)
    rc, out = fvq(capsys, "plugins")
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert errors[0].startswith("error: plugin 'fvq-broken' (distribution 'fvq-broken' 2.0.0) failed to import "
                                "fvq_broken_mod: ModuleNotFoundError: No module named 'does_not_exist_anywhere' (at "), out
    assert "fvq_broken_mod.py:1)" in errors[0] and errors[0].count("plugin 'fvq-broken'") == 1, errors[0]  # once
    assert errors[0].endswith("or skip it with FVQ_DISABLE_PLUGINS=fvq-broken"), errors[0]
    assert "Traceback" not in out
    assert "fvq-good  [fvq-good 2.0.0]" in out and "unquantized  [fastvideo-quant" in out


def test_all_shows_blocked_and_disabled(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-good", GOOD)
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-good")
    rc, out = fvq(capsys, "plugins")
    assert "fvq-good" not in out
    rc, out = fvq(capsys, "plugins", "--all")
    assert "fvq-good  [fvq-good 2.0.0]  not loaded: listed in FVQ_DISABLE_PLUGINS=fvq-good" in out
    monkeypatch.delenv("FVQ_DISABLE_PLUGINS")
    monkeypatch.setenv("FVQ_PLUGINS", "fvq-good")
    plugins.reset()
    rc, out = fvq(capsys, "plugins", "--all", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fvq-good"]["status"] == "loaded"
    assert rows["unquantized"]["status"] == "not loaded"
    assert rows["unquantized"]["reason"] == "not listed in FVQ_PLUGINS=fvq-good"
    monkeypatch.setenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    rc, out = fvq(capsys, "plugins", "--all")
    assert "unquantized  [fastvideo-quant" in out and "not loaded: FVQ_DISABLE_PLUGIN_AUTOLOAD is set" in out


def test_list_entry_points_loads_nothing(tmp_path, monkeypatch) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-broken", BROKEN)
    status = {e.name: e for e in list_entry_points()}
    assert status["fvq-broken"].selected and status["fvq-broken"].reason is None
    assert status["unquantized"].value == "fvq_unquantized.hooks"
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq-broken")
    assert not {e.name: e for e in list_entry_points()}["fvq-broken"].selected


def test_availability_reasons(monkeypatch) -> None:
    from fvq_unquantized import UnquantizedConfig

    class GpuOnly(UnquantizedConfig):
        @classmethod
        def cpu_support(cls):
            return None

        @classmethod
        def get_min_capability(cls):
            return 89

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert method_availability(GpuOnly) == (False, "needs a CUDA GPU (no CPU path) and none is visible")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *a: "NVIDIA A100")
    assert method_availability(GpuOnly) == (False, "needs GPU compute capability >= 8.9; NVIDIA A100 has 8.0")


def test_no_subcommand_prints_help(capsys) -> None:
    rc, out = fvq(capsys)
    assert rc == 2 and "plugins" in out and "check" in out


DUPLICATE = """
from fastvideo_quant.plugins import hookimpl
from fvq_unquantized import UnquantizedConfig, UnquantizedLinearMethod

class DupConfig(UnquantizedConfig):
    pass  # get_name() is 'unquantized', the built-in method's name

@hookimpl
def register_quantization_methods(register):
    register(DupConfig, UnquantizedLinearMethod, weight_loader_v2=True)  # as the built-in does: only the name clashes
"""


def test_two_plugins_one_method_name_lists_every_plugin_and_the_conflict(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-dup", DUPLICATE)
    rc, out = fvq(capsys, "plugins")
    assert rc == 1
    assert "'?'" not in out and "(together)" not in out
    for name in ("unquantized", "int8", "fp8", "awq"):  # every good plugin still lists
        assert f"\n{name}  [fastvideo-quant" in f"\n{out}"
    assert "fvq-dup  [fvq-dup 2.0.0]" in out
    conflict = [line for line in out.splitlines() if line.startswith("error: conflict:")]
    assert len(conflict) == 1, out
    assert "method 'unquantized' is registered by" in conflict[0]
    assert "'fvq-dup'" in conflict[0] and "distribution 'fastvideo-quant'" in conflict[0]
    assert conflict[0].endswith("FVQ_DISABLE_PLUGINS=fvq-dup")
    rc, out = fvq(capsys, "plugins", "--json")
    rows = json.loads(out)
    assert {r["status"] for r in rows} == {"loaded", "conflict"}
    assert sorted(next(r for r in rows if r["status"] == "conflict")["plugins"]) == ["fvq-dup", "unquantized"]


def test_disable_autoload_zero_means_autoload(monkeypatch) -> None:
    monkeypatch.setenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "unquantized" in plugins.get_registry().by_name
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("FVQ_DISABLE_PLUGIN_AUTOLOAD", value)
        plugins.reset()
        assert "unquantized" not in plugins.get_registry().by_name


def test_unknown_allowlist_name_warns_with_the_available_names(monkeypatch) -> None:
    monkeypatch.setenv("FVQ_PLUGINS", "nosuch,unquantized")
    with pytest.warns(UserWarning, match=r"FVQ_PLUGINS=nosuch,unquantized names \['nosuch'\].*available entry "
                                         r"points: \[.*'unquantized'"):
        assert list(plugins.get_registry().by_name) == ["unquantized"]


def test_an_unknown_allowlist_name_is_one_warning_line_on_the_cli(monkeypatch, capsys) -> None:
    """It printed a raw ``.../manager.py:96: UserWarning: ...`` with the warnings.warn source line."""
    monkeypatch.setenv("FVQ_PLUGINS", "unquantized,typo")
    rc, out = fvq(capsys, "plugins")
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if "FVQ_PLUGINS" in ln]
    assert lines == ["fvq plugins: warning: FVQ_PLUGINS=unquantized,typo names ['typo'], which match no installed "
                     "entry point or distribution of the 'fastvideo_quant' group; available entry points: ['awq', "
                     "'fp8', 'int8', 'unquantized'] (see `fvq plugins --all`)"], out
    assert "UserWarning" not in out and "warnings.warn(" not in out, out


def test_an_unknown_allowlist_name_is_a_filterable_warning_category_for_library_users(monkeypatch) -> None:
    import warnings

    monkeypatch.setenv("FVQ_PLUGINS", "nosuch,unquantized")
    with pytest.warns(plugins.PluginSelectionWarning, match=r"names \['nosuch'\]"):
        plugins.get_registry()
    assert issubclass(plugins.PluginSelectionWarning, UserWarning)
    plugins.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=plugins.PluginSelectionWarning)
        plugins.get_registry()
    assert not [w for w in caught if "FVQ_PLUGINS" in str(w.message)], [str(w.message) for w in caught]


def test_a_plugin_whose_hook_is_not_marked_is_an_error_not_an_empty_plugin(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-good", GOOD.replace("@hookimpl\n", ""))
    rc, out = fvq(capsys, "plugins")
    assert rc == 1 and "(registers no methods)" not in out, out
    assert ("error: plugin 'fvq-good' (distribution 'fvq-good' 2.0.0) implements no hook: module fvq_good_mod has "
            "register_quantization_methods, but not marked @hookimpl, so it is never called; mark it with "
            "@fastvideo_quant.plugins.hookimpl") in out, out
    rows = json.loads(fvq(capsys, "plugins", "--json")[1])
    row = next(r for r in rows if r["name"] == "fvq-good")
    assert row["status"] == "error" and row["distribution"] == "fvq-good" and "implements no hook" in row["error"]


def test_a_bad_declaration_is_an_error_line_naming_the_value(tmp_path, monkeypatch, capsys) -> None:
    bad = GOOD.replace("    @classmethod\n    def unavailable_reason", "    @classmethod\n    def "
                       "get_supported_act_dtypes(cls):\n        return ['bfloat16']\n\n    @classmethod\n    def "
                       "unavailable_reason")
    make_dist(tmp_path, monkeypatch, "fvq-good", bad)
    rc, out = fvq(capsys, "plugins")
    assert rc == 1
    assert ("error: plugin 'fvq-good' (distribution 'fvq-good' 2.0.0), method 'good_m': "
            "GoodConfig.get_supported_act_dtypes() returned ['bfloat16']; ['bfloat16'] is not torch dtypes: return "
            "[torch.bfloat16] (registered at ") in out, out


RAISES_IN_HOOK = """
from fastvideo_quant.plugins import hookimpl

def _build_table():
    return {}["missing-key"]

@hookimpl
def register_quantization_methods(register):
    _build_table()
"""


def test_traceback_shows_where_a_failing_plugin_raised(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-raises", RAISES_IN_HOOK)
    rc, out = fvq(capsys, "plugins")
    assert rc == 1 and "Traceback" not in out, out
    assert out.splitlines()[-1] == "(fvq plugins --traceback shows the traceback behind each error)", out

    rc, out = fvq(capsys, "plugins", "--traceback")
    assert rc == 1 and "(fvq plugins --traceback" not in out, out
    lines = out.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: plugin 'fvq-raises'"))
    shown = "\n".join(lines[error + 1:])
    assert lines[error + 1] == "    Traceback (most recent call last):", out
    mod = str(tmp_path / "fvq_raises_mod.py")
    # The plugin's own frames, down to the line that raised, and the exception itself.
    assert f'File "{mod}", line 9, in register_quantization_methods' in shown, shown
    assert f'File "{mod}", line 5, in _build_table' in shown, shown
    assert "    KeyError: 'missing-key'" in shown, shown
    assert "PluginError: plugin 'fvq-raises' (distribution 'fvq-raises' 2.0.0) raised in register_quantization_" \
           "methods" in shown, shown

    row = next(r for r in json.loads(fvq(capsys, "plugins", "--json")[1]) if r["name"] == "fvq-raises")
    assert row["status"] == "error" and f'File "{mod}", line 5, in _build_table' in row["traceback"], row


def test_a_failure_without_an_exception_has_no_traceback(tmp_path, monkeypatch, capsys) -> None:
    make_dist(tmp_path, monkeypatch, "fvq-good", GOOD.replace("@hookimpl\n", ""))
    rc, out = fvq(capsys, "plugins", "--traceback")
    assert rc == 1 and "Traceback" not in out and "--traceback shows" not in out, out
    row = next(r for r in json.loads(fvq(capsys, "plugins", "--json")[1]) if r["name"] == "fvq-good")
    assert row["traceback"] is None, row


def test_a_plugin_exiting_at_import_is_an_error_line_naming_it(tmp_path, monkeypatch, capsys) -> None:
    """It printed only the SystemExit's text ("this plugin needs CUDA") and exited 1, naming no plugin."""
    make_dist(tmp_path, monkeypatch, "fvq-exits", "raise SystemExit('this plugin needs CUDA')\n")
    rc, out = fvq(capsys, "plugins")
    assert rc == 1, out
    assert ("error: plugin 'fvq-exits' (distribution 'fvq-exits' 2.0.0) failed to import fvq_exits_mod: SystemExit: "
            "this plugin needs CUDA (at ") in out, out
    assert "unquantized  [fastvideo-quant" in out, out


def test_json_gives_each_plugin_its_own_entry_point_beside_a_namesake(tmp_path, monkeypatch, capsys) -> None:
    """A third party's entry point named 'fp8' after the built-in's on sys.path: the built-in's row said
    ``"entry_point": "fvq_fp8_mod"`` (the last entry point of that name)."""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-fp8", version="2.0.0", module="fvq_fp8_mod",
                      source=GOOD.replace('"good_m"', '"fp8_other"'), entry="fp8")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)] + [str(tmp_path)])
    plugins.reset()
    rc, out = fvq(capsys, "plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out) if r["status"] == "loaded"}
    assert rows["fp8"]["entry_point"] == "fvq_fp8.hooks" and rows["fp8"]["distribution"] == "fastvideo-quant", rows
    assert rows["fvq-fp8:fp8"]["entry_point"] == "fvq_fp8_mod", rows
    assert rows["unquantized"]["entry_point"] == "fvq_unquantized.hooks"


@pytest.mark.parametrize(("blocked", "hint"), [
    ("nosuch", None),
    ("fvq_fp8", "'fvq_fp8' is an import name of plugin 'fp8' (distribution 'fastvideo-quant'), not a plugin name: "
                "name 'fp8'; "),
    ("fvq_fp8.hooks", "'fvq_fp8.hooks' is an import name of plugin 'fp8' (distribution 'fastvideo-quant'), not a "
                      "plugin name: name 'fp8'; "),
    ("fastvideo_quant", "'fastvideo_quant' is distribution 'fastvideo-quant' spelled otherwise: name "
                        "'fastvideo-quant'; "),
    ("FP8", "'FP8' is plugin 'fp8' spelled otherwise: name 'fp8'; "),
    ("fp-8", "'fp-8' is plugin 'fp8' spelled otherwise: name 'fp8'; "),  # (was quiet: '-' kept apart from no separator)
])
def test_an_unknown_blocklist_name_warns_and_blocks_nothing(monkeypatch, blocked, hint) -> None:
    """A typo, or the import package's name, in FVQ_DISABLE_PLUGINS was silent, and the plugin still loaded."""
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", f"int8,{blocked}")
    if hint is None:  # (a name meant for no installed plugin: blocking what is not installed is a precaution, quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("error", plugins.PluginSelectionWarning)
            assert sorted(plugins.get_registry().by_name) == ["awq", "fp8", "unquantized"]
        return
    with pytest.warns(plugins.PluginSelectionWarning) as caught:
        registry = plugins.get_registry()
    [msg] = [str(w.message) for w in caught]
    assert msg.startswith(f"FVQ_DISABLE_PLUGINS=int8,{blocked} names [{blocked!r}], which match no installed entry "
                          "point or distribution of the 'fastvideo_quant' group, so they block nothing; "), msg
    assert msg.endswith("available entry points: ['awq', 'fp8', 'int8', 'unquantized'] (see `fvq plugins --all`)"), msg
    assert (hint in msg) if hint else "nothing; available entry points" in msg, msg
    assert sorted(registry.by_name) == ["awq", "fp8", "unquantized"]  # int8 blocked, fp8 not


def test_an_empty_allowlist_and_a_name_in_both_lists_are_warned(monkeypatch) -> None:
    """FVQ_PLUGINS= (set, empty) loaded no plugin, the built-ins included, without a word; a name in both lists was
    blocked without a word."""
    monkeypatch.setenv("FVQ_PLUGINS", " ")
    with pytest.warns(plugins.PluginSelectionWarning, match=r"FVQ_PLUGINS is set but names no plugin \(' '\), so no "
                                                            r"plugin loads, the built-in ones included; unset it"):
        assert plugins.get_registry().by_name == {}
    plugins.reset()
    monkeypatch.setenv("FVQ_PLUGINS", "fp8,unquantized")
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fp8")
    with pytest.warns(plugins.PluginSelectionWarning, match=r"FVQ_PLUGINS and FVQ_DISABLE_PLUGINS both name \['fp8'\]: "
                                                            r"FVQ_DISABLE_PLUGINS wins"):
        assert sorted(plugins.get_registry().by_name) == ["unquantized"]


def test_an_unknown_blocklist_name_is_one_warning_line_on_the_cli(monkeypatch, capsys) -> None:
    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fvq_int8")
    rc, out = fvq(capsys, "plugins")
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if "FVQ_DISABLE_PLUGINS" in ln]
    assert len(lines) == 1 and lines[0].startswith("fvq plugins: warning: FVQ_DISABLE_PLUGINS=fvq_int8 names "
                                                   "['fvq_int8']"), out
    assert "\nint8  [fastvideo-quant" in out, out


def test_a_method_whose_availability_check_exits_is_reported_not_the_end_of_the_listing(tmp_path, monkeypatch,
                                                                                         capsys) -> None:
    """A plugin's unavailable_reason calling sys.exit ended `fvq plugins` (only its import and hook were guarded)."""
    exiting = GOOD.replace('return "needs the \'goodlib\' package: pip install goodlib"',
                           'import sys; sys.exit("needs CUDA")')
    make_dist(tmp_path, monkeypatch, "fvq-exiting", exiting)
    rc, out = fvq(capsys, "plugins")
    assert rc == 0, out
    assert "good_m: unavailable - error: GoodConfig raised SystemExit: needs CUDA" in out, out
    assert "unquantized" in out


def test_a_signal_turned_into_an_exception_is_not_taken_for_a_plugins_sys_exit() -> None:
    """checkpoint_writer.Terminated (SIGTERM while a checkpoint is written) is a SystemExit: caught as a plugin's own
    sys.exit, it was recorded as the plugin's failure and the run went on (a diff reviewer's finding)."""
    from fastvideo_quant.checkpoint_writer import Terminated
    from fastvideo_quant.cli.plugins import method_availability

    class Exits:
        @classmethod
        def unavailable_reason(cls):
            raise SystemExit("needs CUDA")

    class Signalled(Exits):
        @classmethod
        def unavailable_reason(cls):
            raise Terminated(15)

    assert method_availability(Exits) == (False, "error: Exits raised SystemExit: needs CUDA")
    with pytest.raises(Terminated):
        method_availability(Signalled)
    with pytest.raises(KeyboardInterrupt):
        method_availability(type("Interrupted", (), {"unavailable_reason": classmethod(
            lambda cls: (_ for _ in ()).throw(KeyboardInterrupt()))}))
