"""The conformance suite names the contract a plugin broke, once, and no other: a bug in one place (an ``apply``
modifying its input, a ``validate_loaded_weights`` modifying the layer, a parameter without a loader, a config that
cannot quantize) must not read as a dozen other contracts broken; and a declared bound (the ``apply`` tolerance, the
weight bar) too loose or slightly too tight says so, with the number measured.

The plugins are registered in-process (:mod:`broken_plugins`); the checks are called directly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvideo_quant.testing import conformance as C

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
from broken_plugins import failure  # noqa: E402


@pytest.fixture(scope="module")
def toys():
    with broken_plugins.registered(broken_plugins.PLUGINS):
        yield broken_plugins


# --- the apply tolerance: judged against the error measured, like the weight bar --------------------------------
def test_a_tolerance_far_looser_than_measured_is_refused(toys) -> None:
    """Tolerance(max_rel_error=100) with an apply 20% off its own dequantize_weight: every accuracy check passes, so
    only the declaration can be judged."""
    s = C.Subject("toy_loose_tolerance")
    C.check_apply(s, "replicated", torch.float32)  # the accuracy checks pass: the bound is what lets it through
    msg = failure(C.check_tolerance_declared, s)
    assert "[contract: apply: tolerance declared] method 'toy_loose_tolerance'" in msg, msg
    assert "apply's relative error against x.float() @ dequantize_weight(layer).T + bias is at most 0.1" in msg, msg
    assert ("but LooseToleranceConfig.tolerance = Tolerance(max_rel_error=100, min_sqnr_db=None) allows 100" in msg
            and "(more than 4x, and above 4x the coarsest declared activation dtype's rounding, eps 0.00781)" in msg), msg
    assert "how to fix: declare your measured error plus a margin (here about Tolerance(max_rel_error=0.2" in msg, msg


def test_a_loose_sqnr_bound_is_judged_as_the_error_it_allows(toys) -> None:
    """min_sqnr_db=10 allows a relative error of 0.32; the exact method measures ~0.002 (bfloat16 rounding)."""
    msg = failure(C.check_tolerance_declared, C.Subject("toy_loose_sqnr"))
    assert "[contract: apply: tolerance declared] method 'toy_loose_sqnr'" in msg, msg
    assert "Tolerance(max_rel_error=None, min_sqnr_db=10.0) allows 0.316" in msg, msg


def test_a_tolerance_within_the_output_dtypes_rounding_passes(toys) -> None:
    """An exact method measures 0 in float32: its 1e-2 is judged against bfloat16's eps (its config declares
    bfloat16), not against 0, also where the suite class checks float32 only. A config declaring float32 only, with
    the same 1e-2, is loose: nothing rounds there."""
    C.check_tolerance_declared(C.Subject("toy_ok"))
    C.check_tolerance_declared(C.Subject("toy_ok", act_dtypes=(torch.float32,)))
    msg = failure(C.check_tolerance_declared, C.Subject("toy_float32_only"))
    assert "[contract: apply: tolerance declared] method 'toy_float32_only'" in msg, msg
    assert "is at most 0 on the suite's inputs" in msg and "infinitely many times" in msg, msg


def test_a_tolerance_is_not_judged_on_part_of_the_declared_dtypes(toys) -> None:
    """Only float32 is checked (the suite class's act_dtypes; cpu_act_dtypes on CPU alike): the config's bfloat16 may
    need the bound, so the check skips."""
    with pytest.raises(pytest.skip.Exception, match=r"it covers \['bfloat16', 'float16'\] too, which are not checked"):
        C.check_tolerance_declared(C.Subject("toy_loose_tolerance", act_dtypes=(torch.float32,)))


@pytest.mark.parametrize("method", ["unquantized", "int8", "fp8", "awq"])
def test_built_in_tolerances_pass(method: str) -> None:
    C.check_tolerance_declared(C.Subject(method))


# --- the weight bar: slightly too tight says so ------------------------------------------------------------------
def test_a_weight_bar_slightly_below_the_rounding_suggests_raising_it(toys) -> None:
    msg = failure(C.check_weight_fidelity, C.Subject("toy_tight_bar"), "qkv")
    assert "[contract: loading: weight fidelity] method 'toy_tight_bar'" in msg and "> weight_rel_error 0.005" in msg
    assert ("raise TightBarConfig.weight_rel_error from 0.005 to the measured 0.007 plus a margin (about 0.011)"
            in msg), msg
    # a shard loaded into the wrong rows (one part far off) gets no such advice
    msg = failure(C.check_weight_fidelity, C.Subject("toy_ignores_shard_id", weight_rel_error=0.9), "merged")
    assert "per checkpoint part: 0:" in msg and "raise " not in msg, msg


# --- one bug, one contract -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", [C.check_serialization, C.check_deepcopy, C.check_state_dict_round_trip,
                                   C.check_apply_before_processing, C.check_online_quantization],
                         ids=lambda f: f.__name__)
def test_apply_modifying_its_input_fails_only_as_that(toys, check) -> None:
    """x.div_(s) in apply: [contract: apply: input unchanged] (check_apply); the checks that reuse an input gave each
    call the same tensor and failed as a serialization, deepcopy, state_dict or processing bug."""
    s = C.Subject("toy_input_mutating")
    check(s, "column")
    assert "[contract: apply: input unchanged]" in failure(C.check_apply, s, "column", torch.float32)


def test_torch_compile_points_to_the_input_modified(toys) -> None:
    """In grad mode an in-place write into the input fails to compile: that is the input-modified bug, not a graph
    break."""
    msg = failure(C.check_torch_compile, C.Subject("toy_input_mutating"))
    assert msg.startswith("[contract: apply: input unchanged] method 'toy_input_mutating', ColumnParallelLinear("), msg


@pytest.mark.parametrize("check", [C.check_apply_before_processing, C.check_weight_fidelity,
                                   C.check_online_quantization], ids=lambda f: f.__name__)
def test_validation_modifying_the_layer_is_named_wherever_a_layer_is_processed(toys, check) -> None:
    """validate_loaded_weights clamping the weight: those checks said 'raise NotProcessedError before processing', 'a
    part loaded into the wrong rows' or 'set online_quantization = False'."""
    msg = failure(check, C.Subject("toy_clamping_validate"), "row")
    assert msg.startswith("[contract: validate_loaded_weights: layer unchanged] method 'toy_clamping_validate', "
                          "RowParallelLinear("), msg
    assert ("ClampingValidateMethod of plugin 'toy_clamping_validate' (in-process): validate_loaded_weights, called by "
            "the loader's process_weights_after_loading, modified layer 'conformance.row': parameter 'weight' values "
            "changed") in msg, msg
    assert "how to fix: only read the layer in validate_loaded_weights" in msg, msg


@pytest.mark.parametrize(("check", "args"), [(C.check_create_weights, ("column", True)),
                                             (C.check_weight_fidelity, ("qkv",)),
                                             (C.check_rejects_misshaped, ("row",))],
                         ids=["create_weights", "weight_fidelity", "rejects_misshaped"])
def test_plain_parameters_without_a_loader_are_all_named(toys, check, args) -> None:
    """weight_loader_v2=False, plain nn.Parameters, no set_weight_attrs: 'set weight_loader=... on every parameter'
    cannot be done on an nn.Parameter, and only 'weight' was named (the mis-shaped check said the error lacked the
    shape)."""
    msg = failure(check, C.Subject("toy_plain_v1"), *args)
    assert "[contract: create_weights: weight_loader] method 'toy_plain_v1'" in msg, msg
    assert ("PlainV1Method.create_weights of plugin 'toy_plain_v1' (in-process) left 2 parameters without a "
            "weight_loader, so no checkpoint tensor can be loaded into them: 'weight' (Parameter, no weight_loader "
            "attribute), 'weight_scale' (Parameter, no weight_loader attribute)") in msg, msg
    assert "how to fix: give ['weight', 'weight_scale'] the layer's loader with set_weight_attrs(param, " \
           "extra_weight_attrs)" in msg, msg


def test_a_config_that_cannot_quantize_is_found_before_any_test(toys) -> None:
    """quantize_weight left the base class's: one [contract: quantize_weight] failure for the class (as a missing
    to_dict is), not the same failure in every test that loads a layer."""
    from fastvideo_quant.testing.pytest_plugin import build_first_layer, check_class_subject

    step, exc = build_first_layer(C.Subject("toy_no_quantize_weight"))
    assert step == "checkpoint" and isinstance(exc, C.ConformanceFailure), exc
    msg = str(exc)
    assert msg.startswith("[contract: quantize_weight] method 'toy_no_quantize_weight', ReplicatedLinear("), msg
    assert "NoQuantizeWeightConfig.quantize_weight of plugin 'toy_no_quantize_weight' (in-process) raised " \
           "NotImplementedError: NoQuantizeWeightConfig cannot quantize checkpoints" in msg, msg
    assert "how to fix: implement quantize_weight(weight, *, prefix='', activations=None) on NoQuantizeWeightConfig" \
        in msg, msg

    class TestNoQuantize(C.ConformanceTests):
        method = "toy_no_quantize_weight"

    assert str(check_class_subject(TestNoQuantize)) == msg
    assert build_first_layer(C.Subject("toy_ok")) is None
    assert build_first_layer(C.Subject("toy_numpy_quantize")) is None  # (other raises: the checks that quantize)


CONFTEST = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import broken_plugins
from fastvideo_quant import plugins

def pytest_configure(config):
    for name, plugin in broken_plugins.PLUGINS.items():
        plugins.register_plugin(plugin, name)
"""


@pytest.mark.slow
def test_a_config_that_cannot_quantize_is_one_failing_test(tmp_path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_toy.py").write_text("from fastvideo_quant.testing.conformance import ConformanceTests\n\n\n"
                                          "class TestNoQuantize(ConformanceTests):\n"
                                          "    method = 'toy_no_quantize_weight'\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED test_toy.py::TestNoQuantize::test_method_builds_a_layer" in out, out
    # printed once in the report body; the short summary may repeat it (its line is cut at the terminal's width,
    # which the environment's COLUMNS sets), so count above it
    body, _, summary = out.partition("short test summary info")
    assert body.count("cannot quantize checkpoints") == 1 and summary.count("cannot quantize checkpoints") <= 1, out
    assert "building its method 'toy_no_quantize_weight' of plugin 'toy_no_quantize_weight' (in-process): its config, " \
           "a first layer and a first checkpoint, before any test ran; the suite's selected 94 tests were deselected" \
           in out, out
    assert "1 failed, 94 deselected" in out and "passed" not in out, out
