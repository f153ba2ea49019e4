"""A plugin bug found while building the ``--fvq-method`` subject up front (in pytest_configure) is one normal
test failure with its ``[contract: ...]`` line and exit status 1, not a pytest INTERNALERROR traceback. So is one
found building a plugin's own suite test class's subject (``class TestMine(ConformanceTests): method = ...``):
one failure for that class, the session's other classes run.

The toy abstract-method plugin is made an installed distribution by a ``.dist-info`` folder on PYTHONPATH
(an entry point, as pip would write it), so ``fvq check`` in a subprocess finds it like a real plugin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
METHOD = "toy_abstract_method"
#: The create_weights signature the layers call (its names are part of the contract: most layers call it by keyword).
EXPECTED = ("create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size, "
            "params_dtype, **extra_weight_attrs)")
pytestmark = pytest.mark.slow  # spawns pytest / fvq check


@pytest.fixture
def installed_toy(tmp_path: Path) -> dict[str, str]:
    """The environment of a process in which the toy is an installed plugin of distribution fvq-toy-abstract."""
    dist = tmp_path / "fvq_toy_abstract-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fvq-toy-abstract\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[fastvideo_quant]\n{METHOD} = broken_plugins:ABSTRACT_METHOD_PLUGIN\n"
                                           "toy_unavailable = broken_plugins:UNAVAILABLE_PLUGIN\n"
                                           "toy_create_weights_raises = broken_plugins:CREATE_WEIGHTS_RAISES_PLUGIN\n"
                                           "toy_config_unavailable = broken_plugins:CONFIG_UNAVAILABLE_PLUGIN\n"
                                           "toy_wrong_signature = broken_plugins:WRONG_SIGNATURE_PLUGIN\n"
                                           "toy_needs_key = broken_plugins:NEEDS_KEY_PLUGIN\n"
                                           "toy_bias_ignored = broken_plugins:BIAS_IGNORED_PLUGIN\n")
    path = os.pathsep.join([str(tmp_path), str(HERE), os.environ.get("PYTHONPATH", "")])
    toys = (f"{METHOD},toy_unavailable,toy_create_weights_raises,toy_config_unavailable,toy_wrong_signature,"
            "toy_needs_key,toy_bias_ignored")
    env = dict(os.environ, PYTHONPATH=path, FVQ_PLUGINS=f"{toys},unquantized,awq")
    env.pop("FVQ_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def assert_one_contract_failure(out: str) -> None:
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    line = next((ln for ln in out.splitlines() if ln.startswith("[contract: get_quant_method]")), None)
    assert line is not None, out
    assert f"method {METHOD!r} of plugin {METHOD!r} (distribution 'fvq-toy-abstract')" in line, line
    assert "NoApplyMethod" in line and "apply" in line, line
    assert "how to fix: return an instance of a LinearMethodBase subclass" in out, out
    assert "1 failed" in out and "passed" not in out, out


def test_fvq_check_reports_an_abstract_method_class_as_a_contract_failure(installed_toy) -> None:
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", METHOD],
                          capture_output=True, text=True, timeout=300, env=installed_toy)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert_one_contract_failure(out)
    assert f"{METHOD!r}: FAILED" in out, out


def test_pytest_run_of_the_suite_reports_it_too(installed_toy, tmp_path: Path) -> None:
    """A plugin author running the suite with pytest directly (the plugin autoloaded), ``-k`` selecting one test:
    the same one failure."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    # No -p fastvideo_quant.testing.pytest_plugin: pytest loads it from its pytest11 entry point.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                           "--fvq-method", METHOD, "-k", "reachable", "--pyargs",
                           "fastvideo_quant.testing.conformance.test_suite"],
                          capture_output=True, text=True, timeout=300, env=installed_toy, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert_one_contract_failure(out)
    assert "test_method_builds_a_layer" in out and "the suite's selected test was deselected" in out, out


def test_a_correct_method_runs_the_suite_as_before(installed_toy, tmp_path: Path) -> None:
    """No subject failure: no extra test, nothing deselected by it."""
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "reachable"],
                          capture_output=True, text=True, timeout=300, env=installed_toy)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_method_builds_a_layer" not in out and "1 passed" in out, out


def run_plugin_tests(env: dict[str, str], tmp_path: Path, module: str, keyword: str, *extra: str) -> str:
    """pytest on a plugin author's test module (the pytest plugin autoloaded), ``-k keyword``; its output (wide, so
    the short summary's lines are whole)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_mine.py").write_text(module)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "-rfEs", "-k", keyword, *extra, str(tmp_path / "test_mine.py")],
                          capture_output=True, text=True, timeout=300, env=dict(env, COLUMNS="400"), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "INTERNALERROR" not in out, out
    return out


def summary(out: str) -> str:
    """The counts of pytest's last line, without the deselected count and the time: ``1 failed, 2 passed``."""
    # pytest's own last line (=== ... in 1.2s ===): other plugins may print after it (pytest-benchmark warns there
    # when xdist is installed).
    last = [line for line in out.strip().splitlines() if re.fullmatch(r"=+ .* in [\d.]+s( \(.*\))? =+", line)][-1]
    return ", ".join(part for part in re.findall(r"\d+ \w+", last) if "deselected" not in part)


PLUGIN_TESTS = f"""
from fastvideo_quant.testing.conformance import ConformanceTests


class TestBroken(ConformanceTests):
    method = {METHOD!r}


class TestOk(ConformanceTests):
    method = "unquantized"


class TestUnavailable(ConformanceTests):
    method = "toy_unavailable"


class TestCreateWeightsRaises(ConformanceTests):
    method = "toy_create_weights_raises"


class TestConfigUnavailable(ConformanceTests):
    method = "toy_config_unavailable"
    config = {{"backend": "accel"}}
"""


def test_a_plugin_test_class_reports_it_once(installed_toy, tmp_path: Path) -> None:
    """The documented way, a subclass of the suite: a broken method's class is one failure naming the class, the
    method, its plugin and distribution; a correct method's class in the same session passes; a method unavailable
    here skips (its layer is never built), as does a config asking for what is missing here. An exception from the
    plugin's code shows its traceback from the build down to the plugin's line, not pytest's frames."""
    out = run_plugin_tests(installed_toy, tmp_path, PLUGIN_TESTS, "reachable or create_weights and replicated-nobias")
    assert "FAILED test_mine.py::TestBroken::test_method_builds_a_layer" in out, out
    assert summary(out) == "2 failed, 4 passed, 2 skipped", out
    assert "[contract: get_quant_method]" in out and "NoApplyMethod" in out, out
    assert (f"(found in TestBroken, building its method {METHOD!r} of plugin {METHOD!r} (distribution "
            "'fvq-toy-abstract'): its config, a first layer and a first checkpoint, before any test ran; the suite's "
            "selected 2 tests were deselected: each would fail the same way)") in out, out
    assert "SKIPPED" in out and "needs the toy-accelerator package" in out, out
    # A config asking for what is missing here (MethodUnavailableError from from_config) skips the same way.
    assert ("method 'toy_config_unavailable' with config {'backend': 'accel'} is unavailable here: toy: backend "
            "'accel' needs the toy-accelerator package") in out, out
    assert "TestConfigUnavailable::test_method_builds_a_layer" not in out, out
    assert ("FAILED test_mine.py::TestCreateWeightsRaises::test_method_builds_a_layer - RuntimeError: packed layout "
            "needs input_size % 1024 == 0") in out, out
    assert "broken_plugins.py:" in out and "_pytest/runner.py" not in out and "pluggy/_" not in out, out
    assert "(found in TestCreateWeightsRaises, building its method 'toy_create_weights_raises' of plugin" in out, out


CLASS_ATTRIBUTE_TESTS = """
from fastvideo_quant.testing.conformance import ConformanceTests, RegistrationTests


class TestBadConfig(ConformanceTests):
    method = "awq"
    config = {"group_size": 7}


class TestNoMethod(RegistrationTests):
    pass


class TestOk(ConformanceTests):
    method = "unquantized"
"""


def test_a_class_attribute_no_test_can_run_with_is_one_failure_not_a_usage_error(installed_toy, tmp_path: Path) -> None:
    """A ``config`` the method refuses names ``TestBadConfig.config``; a class without ``method`` says to set it.
    Each is one failure of its class, not a usage error ending the session: TestOk still runs."""
    out = run_plugin_tests(installed_toy, tmp_path, CLASS_ATTRIBUTE_TESTS, "reachable or config_round_trip")
    assert summary(out) == "2 failed, 2 passed", out
    assert "FAILED test_mine.py::TestBadConfig::test_method_builds_a_layer" in out, out
    assert ("TestBadConfig.config = {'group_size': 7}: method 'awq' of plugin 'awq' (distribution 'fastvideo-quant') "
            "refuses it: AWQ config: group_size=7 is not supported") in out, out
    assert "how to fix: set TestBadConfig.config to a dict its from_config accepts" in out, out
    assert "FAILED test_mine.py::TestNoMethod::test_method_builds_a_layer" in out, out
    assert ("NotImplementedError: must be overridden: set the class attribute method = '<registered method name>' on "
            "TestNoMethod\n  (found in TestNoMethod, before any test ran; the suite's selected 2 tests were deselected") in out
    assert "UsageError" not in out and "Traceback" not in out, out


def fvq_check(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", *args],
                          capture_output=True, text=True, timeout=300, env=dict(env, COLUMNS="400"))
    return proc.returncode, proc.stdout + proc.stderr


def verdict(out: str) -> str:
    """fvq check's verdict: its last line starting with ``fvq check: '`` and the lines indented under it."""
    lines = out.splitlines()
    at = max(i for i, ln in enumerate(lines) if ln.startswith("fvq check: '"))
    return "\n".join(lines[at:])


def test_a_method_that_cannot_run_here_is_not_checked_not_conforming(installed_toy) -> None:
    """Its layers were never built (the registration tests passed, the rest skipped): exit 4 and a verdict saying why
    and what to do, not "conforms". The same for a config asking for what is missing here (which was a usage error)."""
    rc, out = fvq_check(installed_toy, "toy_unavailable", "-k", "not modules_to_not_convert")
    assert rc == 4, out
    assert re.match(
        r"fvq check: 'toy_unavailable': NOT checked on this machine: method 'toy_unavailable' is unavailable here: "
        r"needs the toy-accelerator package, which is not installed \(pip install toy-accelerator\)\. Only the \d+ "
        r"tests that need no layer ran and passed; the ", verdict(out)), out
    assert "To check it, run fvq check toy_unavailable after installing what that names" in out
    assert "conforms" not in out, out
    rc, out = fvq_check(installed_toy, "toy_config_unavailable", "--config", '{"backend": "accel"}')
    assert rc == 4, out
    assert ("NOT checked on this machine: method 'toy_config_unavailable' with config {'backend': 'accel'} is "
            "unavailable here: toy: backend 'accel' needs the toy-accelerator package") in verdict(out), out


def run_suite(env: dict[str, str], tmp_path: Path, method: str, keyword: str, *extra: str) -> tuple[int, str]:
    """pytest run directly on the suite (the pytest plugin autoloaded), as a plugin author's CI would: its exit status
    and output (wide, so the NOT checked line is whole)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "--fvq-method", method, "-k", keyword, *extra, "--pyargs",
                           "fastvideo_quant.testing.conformance.test_suite"],
                          capture_output=True, text=True, timeout=300, env=dict(env, COLUMNS="400"), cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


def not_checked_line(out: str) -> str | None:
    """The yellow ``= NOT checked ... =`` separator line, without its ``=`` padding, or None."""
    return next((ln.strip("= ") for ln in out.splitlines() if ln.strip("= ").startswith("NOT checked")), None)


def test_pytest_run_directly_of_a_method_that_cannot_run_here_does_not_exit_0(installed_toy, tmp_path: Path) -> None:
    """A plugin author's CI running ``pytest --fvq-method`` on a machine where the method cannot run was green (exit
    0, one test passed): it exits with fvq check's not-checked status, the line saying so;
    ``--fvq-allow-not-checked`` keeps 0 and the line."""
    from fastvideo_quant.cli.check import EXIT_NOT_CHECKED

    unavailable = ("NOT checked on this machine: method 'toy_unavailable' is unavailable here: needs the "
                   "toy-accelerator package, which is not installed (pip install toy-accelerator); run it after "
                   "installing what that names")
    rc, out = run_suite(installed_toy, tmp_path, "toy_unavailable", "reachable")
    assert rc == EXIT_NOT_CHECKED and summary(out) == "1 passed", out
    line = not_checked_line(out)
    assert line is not None and line.startswith(unavailable), out
    assert line.endswith(f"(or on a machine that has it). Exit status {EXIT_NOT_CHECKED}, not 0: the method was not "
                         "checked (--fvq-allow-not-checked makes it 0)"), line
    rc, out = run_suite(installed_toy, tmp_path, "toy_unavailable", "reachable", "--fvq-allow-not-checked")
    assert rc == 0 and summary(out) == "1 passed", out
    line = not_checked_line(out)
    assert line is not None and line.startswith(unavailable), out
    assert line.endswith("(or on a machine that has it). Exit status 0: --fvq-allow-not-checked"), line


def test_pytest_run_directly_whose_selected_tests_all_skip_does_not_exit_0(installed_toy, tmp_path: Path) -> None:
    """A method that runs here: exit 0 and no NOT checked line; its selected tests all skipping (the CUDA-only one
    on a machine without CUDA) is not checked, as fvq check says."""
    import torch

    from fastvideo_quant.cli.check import EXIT_NOT_CHECKED

    rc, out = run_suite(installed_toy, tmp_path, "unquantized", "reachable")
    assert rc == 0 and summary(out) == "1 passed" and not_checked_line(out) is None, out
    if torch.cuda.is_available():
        return  # (test_cuda_apply runs)
    rc, out = run_suite(installed_toy, tmp_path, "unquantized", "cuda_apply")
    assert rc == EXIT_NOT_CHECKED and summary(out) == "1 skipped", out
    assert not_checked_line(out) == (f"NOT checked: every selected test skipped (-rs lists why). Exit status "
                                     f"{EXIT_NOT_CHECKED}, not 0: the method was not checked (--fvq-allow-not-checked "
                                     "makes it 0)"), out


def test_a_plugin_test_class_of_a_method_that_cannot_run_here_is_not_affected(installed_toy, tmp_path: Path) -> None:
    """Without --fvq-method (a plugin's own suite test class) the exit status stays pytest's: its selected tests all
    skipping is 0, with no NOT checked line."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_mine.py").write_text(UNAVAILABLE_CLASS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "-k", "create_weights", str(tmp_path / "test_mine.py")],
                          capture_output=True, text=True, timeout=300, env=dict(installed_toy, COLUMNS="400"), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and re.fullmatch(r"\d+ skipped", summary(out)) and not_checked_line(out) is None, out


UNAVAILABLE_CLASS = """
from fastvideo_quant.testing.conformance import ConformanceTests


class TestUnavailable(ConformanceTests):
    method = "toy_unavailable"
"""


def test_a_create_weights_the_layers_cannot_call_is_a_contract_line(installed_toy) -> None:
    """``def create_weights(self, layer, a, b, c)``: one [contract: create_weights] line naming the method, plugin,
    distribution, layer, expected and found signature; no traceback; a verdict pointing at that line."""
    rc, out = fvq_check(installed_toy, "toy_wrong_signature")
    assert rc == 1, out
    line = next((ln for ln in out.splitlines() if ln.startswith("[contract: create_weights]")), None)
    assert line is not None, out
    assert "method 'toy_wrong_signature', ReplicatedLinear(in=256, out=128, tp=1, bias=False, dtype=float32)" in line
    assert "of plugin 'toy_wrong_signature' (distribution 'fvq-toy-abstract')" in line, line
    assert "has the signature create_weights(self, layer, a, b, c)" in line and EXPECTED in line, line
    assert "Traceback" not in out and "_pytest" not in out, out
    assert re.fullmatch(r"fvq check: 'toy_wrong_signature': FAILED: 1 failed, \d+ deselected\n"
                        r"  \[contract: create_weights\] in 1 test: test_method_builds_a_layer", verdict(out)), out


def test_the_verdict_points_only_at_lines_that_exist(installed_toy) -> None:
    """A plugin exception without a contract line: the verdict says so (its traceback is above) instead of pointing at
    [contract: ...] lines that do not exist."""
    rc, out = fvq_check(installed_toy, "toy_create_weights_raises")
    assert rc == 1, out
    assert not any(ln.startswith("[contract:") for ln in out.splitlines()), out
    assert ("  RuntimeError: packed layout needs input_size % 1024 == 0 (no [contract: ...] line: an exception from "
            "the plugin's code; its traceback is above) in 1 test: test_method_builds_a_layer") in verdict(out), out


def test_a_config_from_config_needs_says_to_pass_it(installed_toy) -> None:
    """No --config given: the usage error says to pass one, not to "fix the option"."""
    rc, out = fvq_check(installed_toy, "toy_needs_key")
    assert rc == 2, out
    assert ("method 'toy_needs_key' of plugin 'toy_needs_key' (distribution 'fvq-toy-abstract') with the default "
            "config ({}) and the default sizes: toy_needs_key config: 'bits' is required (4 or 8); pass the keys its "
            "from_config needs with --config '{\"key\": value}'") in out, out
    assert "fix the option" not in out, out


TYPO_TESTS = """
from fastvideo_quant.testing.conformance import ConformanceTests


class TestTypoAttribute(ConformanceTests):
    method = "unquantized"
    weight_rel_err = 0.02
    input_sise = 512


class TestTypoConfigKey(ConformanceTests):
    method = "awq"
    config = {"group_sise": 32}


class TestOk(ConformanceTests):
    method = "unquantized"


class TestOwnAttribute(ConformanceTests):
    method = "unquantized"
    _weight_rel_err = 0.5  # the author's own (a leading underscore): not taken for a misspelling
"""


def test_misspelled_class_attributes_and_config_keys_are_one_failure(installed_toy, tmp_path: Path) -> None:
    """A class attribute close to one the suite reads (``--set`` refuses such names) and a ``config`` key from_config
    does not read would be ignored silently: one failing test_method_builds_a_layer each, naming it."""
    out = run_plugin_tests(installed_toy, tmp_path, TYPO_TESTS, "reachable")
    assert summary(out) == "2 failed, 2 passed", out
    assert "FAILED test_mine.py::TestTypoAttribute::test_method_builds_a_layer" in out, out
    assert ("TestTypoAttribute.weight_rel_err = 0.02: not an attribute the conformance suite reads, so it would be "
            "ignored and the suite would run with weight_rel_error unset (the config class's weight_rel_error, else "
            "the suite's default 0.25) (did you mean 'weight_rel_error'?)\n"
            "  how to fix: rename it to weight_rel_error; or, if it is your own attribute, which the suite need not "
            "read, give it a leading underscore (_weight_rel_err)") in out, out
    assert "TestTypoAttribute.input_sise = 512: not an attribute" in out and "(did you mean 'input_size'?)" in out
    assert "FAILED test_mine.py::TestTypoConfigKey::test_method_builds_a_layer" in out, out
    assert ("TestTypoConfigKey.config key group_sise=32: AWQConfig.from_config of method 'awq' of plugin 'awq' "
            "(distribution 'fastvideo-quant') does not read 'group_sise', so it would be ignored; it is not a key this "
            "config reads (did you mean 'group_size' or 'q_group_size'?)") in out, out
    assert "how to fix: correct or drop the key in TestTypoConfigKey.config" in out, out


BIAS_TESTS = """
from fastvideo_quant.testing.conformance import ConformanceTests


class TestBias(ConformanceTests):
    method = "toy_bias_ignored"
"""


def test_a_contract_failure_is_its_message_not_the_suites_frames(installed_toy, tmp_path: Path) -> None:
    """A method that drops the bias fails the apply checks: each failure shows its [contract: ...] message, not ~40
    lines of the suite's own frames (2,269 lines for 57 failures in a review); --tb=long still shows them."""
    out = run_plugin_tests(installed_toy, tmp_path, BIAS_TESTS, "apply and replicated and bias")
    failures = re.findall(r"^_{3,} TestBias\.\S+ _{3,}$", out, re.M)
    assert failures and summary(out).startswith(f"{len(failures)} failed"), out
    assert out.count("[contract: apply: bias applied once]") >= len(failures), out
    assert "(--tb=long shows the suite's frames)" in out, out
    assert "conformance/apply.py:" not in out and "def check_apply" not in out, out
    assert len(out.splitlines()) < 12 * len(failures) + 30, out
    long = run_plugin_tests(installed_toy, tmp_path, BIAS_TESTS, "apply and replicated and bias", "--tb=long")
    assert "conformance/apply.py:" in long, long
