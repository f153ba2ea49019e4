"""``fvq check``: exit status follows the suite; unknown methods and bad options are usage errors."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from fastvideo_quant.cli import main


def test_unknown_method_is_refused_with_status_1_like_every_command(capsys) -> None:
    assert main(["check", "no_such_method"]) == 1
    err = capsys.readouterr().err
    assert "unknown quantization method 'no_such_method'" in err and "unquantized" in err


def test_bad_config_json(capsys) -> None:
    assert main(["check", "unquantized", "--config", "[1]"]) == 2
    assert "--config '[1]'" in capsys.readouterr().err


def test_config_given_twice_is_a_usage_error_naming_both(capsys) -> None:
    """(Was: the second --config replaced the first silently.)"""
    with pytest.raises(SystemExit) as exit_:
        main(["check", "unquantized", "--config", '{"a": 1}', "--config", '{"b": 2}'])
    assert exit_.value.code == 2
    assert """argument --config: given twice, as '{"a": 1}' and '{"b": 2}'""" in capsys.readouterr().err


@pytest.mark.slow
def test_check_passes_and_fails() -> None:
    ok = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "apply and column"],
                        capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "'unquantized': conforms" in ok.stdout
    # A class attribute that makes the accuracy bar impossible: the suite must fail, and fvq check with it.
    bad = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "fidelity and column",
                          "--set", "weight_rel_error=-1"], capture_output=True, text=True, timeout=180)
    assert bad.returncode == 1
    assert "[contract: loading: weight fidelity]" in bad.stdout and "FAILED" in bad.stdout
    # each failure says --tb=long shows the suite's frames: fvq check takes it (it was 'unrecognized arguments')
    assert "(--tb=long shows the suite's frames)" in bad.stdout
    long = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "fidelity and column",
                           "--set", "weight_rel_error=-1", "--tb=long"], capture_output=True, text=True, timeout=180)
    assert long.returncode == 1 and "[contract: loading: weight fidelity]" in long.stdout, long.stdout + long.stderr
    assert "(--tb=long shows the suite's frames)" not in long.stdout and "conformance/" in long.stdout


def test_without_pytest_says_to_install_the_test_extra(monkeypatch, capsys) -> None:
    """A base install has no pytest: a clear error and its own exit status, not a conformance FAILED."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    assert main(["check", "unquantized"]) == 3
    out, err = capsys.readouterr()
    assert "pytest, which is not installed" in err and 'pip install -e ".[test]"' in err
    assert "pip install pytest" in err and "fastvideo-quant[test]" not in err  # not on PyPI
    assert "FAILED" not in out + err


@pytest.mark.parametrize("args, expected", [
    (["awq", "--config", '{"group_size": 96}'], "group_size=96 is not supported"),
    (["unquantized", "--set", "output_size=abc"], "--set output_size='abc': expected a positive int"),
    (["unquantized", "--set", "no_such_attr=1"], "--set 'no_such_attr=1': expected ATTR=VALUE with ATTR one of"),
    (["unquantized", "--set", 'act_dtypes=["nope"]'], "--set 'act_dtypes=[\"nope\"]': expected torch dtype names"),
    (["unquantized", "--set", "supports_torch_compile=yes"], "--set supports_torch_compile='yes': expected a bool "
                                                             "(unset by default: the config class's declaration)"),
    (["unquantized", "--set", "weight_rel_error=tight"], "--set weight_rel_error='tight': expected a float"),
])
def test_bad_suite_options_are_one_usage_error(args, expected) -> None:
    """Validated once up front: not the same failure in each of the ~60 tests; named as the user typed it
    (``--set``, not the ``--fvq-set`` that fvq check passes to pytest)."""
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", *args],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert out.count(expected) == 1 and "usage error" in out and "failed" not in out, out
    assert "--fvq-" not in out, out


def test_suite_option_names_follow_the_caller() -> None:
    """Run by pytest directly the options are --fvq-set / --fvq-config; under fvq check (--fvq-cli), --set / --config."""
    from types import SimpleNamespace

    from fastvideo_quant.testing.pytest_plugin import fvq_set_options, option_name

    def config(cli: bool, items: list[str]):
        options = {"--fvq-cli": cli, "--fvq-set": items}
        return SimpleNamespace(getoption=lambda name, default=None: options.get(name, default))

    assert [option_name(config(c, []), n) for c in (False, True) for n in ("set", "config")] == [
        "--fvq-set", "--fvq-config", "--set", "--config"]
    for cli, name in ((False, "--fvq-set"), (True, "--set")):
        with pytest.raises(pytest.UsageError, match=f"^{name} 'oops': expected ATTR=VALUE"):
            fvq_set_options(config(cli, ["oops"]), ["output_size"])


@pytest.mark.slow
def test_a_config_key_from_config_does_not_read_is_a_usage_error() -> None:
    """A typo in --config was dropped silently (the suite checked the default); quant_method is a key checkpoints
    carry (fp8's selects a serialized checkpoint), so it is not refused."""
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "awq", "--config", '{"group_sise": 64}'],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert ("--config key group_sise=64: AWQConfig.from_config of method 'awq' of plugin 'awq' (distribution "
            "'fastvideo-quant') does not read 'group_sise', so it would be ignored; it is not a key this config reads "
            "(did you mean 'group_size' or 'q_group_size'?). Keys it reads: bits, fp8_compute, fp8_compute_min_m, "
            "group_size") in out, out
    ok = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "fp8", "--config",
                         '{"quant_method": "fp8", "weight_scale_strategy": "channel"}', "-k", "round_trip"],
                        capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_the_verdict_says_what_a_selection_left_out_and_why_tests_skipped() -> None:
    """-k: "conforms on the tests selected (N passed, S skipped; M deselected ...)", not a plain "conforms"; each
    distinct skip reason is listed with its count."""
    import torch

    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k",
                           "create_weights or cuda_apply or torch_compile", "--set", "supports_torch_compile=false"],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("fvq check: 'unquantized': "))
    ran = "11 passed, 1 skipped" if torch.cuda.is_available() else "10 passed, 2 skipped"  # (skipped counted too)
    assert re.fullmatch(rf"fvq check: 'unquantized': conforms on the tests selected \({ran}; \d+ deselected by -k "
                        r"'create_weights or cuda_apply or torch_compile': run without -k to check the whole suite\)",
                        lines[at]), out
    skips = lines[at + 1:]
    assert ("  skipped 1: torch.compile not checked: supports_torch_compile was set False for this run (the suite "
            "class, or --set)" in skips), out
    assert ("  skipped 1: CUDA-only path: no CUDA GPU is visible" in skips) != torch.cuda.is_available(), out


def test_a_run_that_wrote_no_summary_or_ran_nothing_does_not_conform() -> None:
    """Without the run's summary nothing says what ran (so no "conforms"); a -k selecting no test is a usage error."""
    from types import SimpleNamespace

    from fastvideo_quant.cli.check import verdict

    text, status = verdict(SimpleNamespace(method="m", keyword=None), 0, None)
    assert status == 1 and text.startswith("did not finish: the run wrote no summary") and "conforms" not in text
    empty = {"counts": {}, "deselected": 78, "skips": {}, "failures": [], "not_runnable": None}
    assert verdict(SimpleNamespace(method="m", keyword="nothing"), 5, empty) == (
        "no test ran: -k 'nothing' selects none of the suite's tests", 2)


def test_the_verdict_lists_one_layer_contracts_before_the_tensor_parallel_ones() -> None:
    """A dropped bias fails the TP output check too, often first (its hints are about sharding): the verdict lists the
    one-layer contract first (a plugin author's review), keeping the order within each kind."""
    from types import SimpleNamespace

    from fastvideo_quant.cli.check import verdict

    failures = [{"test": "t_tp", "contract": "tensor parallel: output"},
                {"test": "t_tp_load", "contract": "loading at TP=2"},
                {"test": "t_bias", "contract": "apply: bias applied once"},
                {"test": "t_bias2", "contract": "apply: bias applied once"},
                {"test": "t_acc", "contract": "apply: accuracy"}]
    summary = {"counts": {"failed": 5, "passed": 3}, "deselected": 0, "skips": {}, "failures": failures,
               "not_runnable": None}
    text, status = verdict(SimpleNamespace(method="m", keyword=None), 1, summary)
    assert status == 1 and text.splitlines()[1:] == [
        "  [contract: apply: bias applied once] in 2 tests: t_bias, t_bias2",
        "  [contract: apply: accuracy] in 1 test: t_acc",
        "  [contract: tensor parallel: output] in 1 test: t_tp",
        "  [contract: loading at TP=2] in 1 test: t_tp_load"], text


def test_a_section_copied_from_a_config_json_passes_the_config_key_check() -> None:
    """compressed-tensors' bookkeeping keys (status, ratio, version, sparsity / transform sections) and transformers'
    runtime settings are keys a config declares it leaves unread, as the checkpoint path accepts them. (Was: fvq check
    awq --config '<an llm-compressor section>' refused global_compression_ratio, then version.)"""
    from fastvideo_quant.errors import ConfigError
    from fastvideo_quant.quantize.options import check_config_keys

    args = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": 128, "strategy": "group", "dynamic": False,
            "actorder": "static", "observer": "minmax", "observer_kwargs": {}, "block_structure": None,
            "scale_dtype": None, "zp_dtype": None}
    section = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
               "config_groups": {"group_0": {"targets": ["Linear"], "weights": args, "input_activations": None,
                                             "output_activations": None, "format": "pack-quantized"}},
               "global_compression_ratio": None, "ignore": ["lm_head"], "kv_cache_scheme": None,
               "sparsity_config": {}, "transform_config": {}, "version": "0.13.1"}
    check_config_keys("awq", section, label="--config key")
    check_config_keys("awq", {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                              "version": "gemm", "do_fuse": False}, label="--config key")
    with pytest.raises(ConfigError, match=r"--config key group_sise=64: .* does not read 'group_sise'"):
        check_config_keys("awq", {"group_sise": 64}, label="--config key")


def test_another_plugins_load_failure_is_printed_once(tmp_path) -> None:
    """fvq check printed its one 'warning:' line, then the suite's run printed the raw PluginLoadWarning again."""
    import os

    (tmp_path / "fvq_jp_bad_mod.py").write_text("import does_not_exist_anywhere\n")
    info = tmp_path / "fvq_jp_bad-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fvq-jp-bad\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fastvideo_quant]\nfvq-jp-bad = fvq_jp_bad_mod\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "unquantized", "-k", "apply and column"],
                          capture_output=True, text=True, timeout=180, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("failed to import fvq_jp_bad_mod") == 1 and "fvq check: warning: plugin 'fvq-jp-bad'" in out, out
    assert "PluginLoadWarning" not in out, out


def test_the_verdict_names_the_golden_checkpoints_read() -> None:
    """Which formats the verdict vouches for: the suite library's goldens the plugin claims (awq: AutoAWQ and
    compressed-tensors int4), read at the layer class selected."""
    ok = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "awq", "-k",
                         "test_golden_checkpoints and replicated"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    line = next(x for x in ok.stdout.splitlines() if "golden checkpoints read:" in x)
    assert "golden checkpoints read: 5 (AutoAWQ GEMM int4, group 32; AutoAWQ GEMM int4, group -1" in line, line
    assert "compressed-tensors pack-quantized int4 W4A16_ASYM, group 32" in line and "fp8" not in line, line
    assert "golden checkpoints left out" not in ok.stdout, ok.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="int8's Triton backend needs triton")
def test_the_verdict_names_the_goldens_the_load_time_options_left_out() -> None:
    """int8 with the Triton backend (a load-time option) reads the threshold-0 bitsandbytes golden; the one at
    transformers' default 6.0, which that backend refuses, is named as left out, with the refusal."""
    ok = subprocess.run([sys.executable, "-m", "fastvideo_quant", "check", "int8", "--config",
                         '{"fvq_backend": "triton"}', "-k", "test_golden_checkpoints and column and not tp"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    read = next(x for x in lines if "golden checkpoints read:" in x)
    assert read.endswith("golden checkpoints read: 1 (bitsandbytes LLM.int8(), llm_int8_threshold 0 (row format))"), read
    left = next(x for x in lines if "golden checkpoints left out" in x)
    assert left.startswith("  golden checkpoints left out for the load-time options: golden checkpoint 'bitsandbytes "
                           "LLM.int8() (row format)': its quantization_config loads, but not with load_options="
                           "{'fvq_backend': 'triton'} (ConfigError: "), left
    assert "runs threshold 0 only" in left, left
