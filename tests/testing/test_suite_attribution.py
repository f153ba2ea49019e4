"""The conformance suite names the contract a plugin broke, once, and no other: a bug in one place (an ``apply``
modifying its input, a ``validate_loaded_weights`` modifying the layer, a parameter without a loader, a config that
cannot quantize) must not read as a dozen other contracts broken; and a declared bound (the ``apply`` tolerance, the
weight bar) too loose or slightly too tight says so, with the number measured.

The plugins are registered in-process (:mod:`broken_plugins`); the checks are called directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvideo_quant.quantization import Tolerance
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
    """Tolerance(max_rel_error=100) with an apply 20% off its own dequantize_weight: the accuracy checks pass (the
    bound lets it through; the output's gain, 1.2, is what check_apply refuses), and the declaration is judged."""
    s = C.Subject("toy_loose_tolerance")
    assert "[contract: apply: output scale]" in failure(C.check_apply, s, "replicated", torch.float32)
    msg = failure(C.check_tolerance_declared, s)
    assert "[contract: apply: tolerance declared] method 'toy_loose_tolerance'" in msg, msg
    assert "apply's relative error against x.float() @ dequantize_weight(layer).T + bias is at most 0.1" in msg, msg
    assert ("but LooseToleranceConfig.tolerance = Tolerance(max_rel_error=100, min_sqnr_db=None) allows 100" in msg
            and "(more than 4x, and above 4x the coarsest declared activation dtype's rounding, eps 0.00781)" in msg), msg
    assert "how to fix: declare your measured error plus a margin (here about Tolerance(max_rel_error=0.2" in msg, msg


def test_a_config_stating_no_tolerance_is_told_to_state_one_per_dtype(toys) -> None:
    """No tolerance on the class: QuantizationConfig's 1e-2 would judge every dtype, and a float32 path computing in
    bfloat16 passes it (a plugin author's review: fvq check said "conforms"). The check names the default, the error
    measured per dtype, and a bound per dtype from it."""
    s = C.Subject("toy_no_tolerance")
    C.check_apply(s, "replicated", torch.float32)  # (the default passes the bfloat16 path: why it must be stated)
    msg = failure(C.check_tolerance_declared, s)
    assert msg.startswith("[contract: apply: tolerance declared] method 'toy_no_tolerance'"), msg
    assert ("NoToleranceConfig states no tolerance: it inherits QuantizationConfig.tolerance = "
            "Tolerance(max_rel_error=0.01, min_sqnr_db=None) for every activation dtype") in msg, msg
    found = re.search(r"measured here: bfloat16 ([0-9.e-]+), float32 ([0-9.e-]+)", msg)
    assert found and 5e-4 < float(found[2]) < 5e-3, msg  # (bfloat16's rounding, in float32)
    assert re.search(r"how to fix: state the bound per activation dtype on NoToleranceConfig: tolerance = "
                     r"Tolerance\(max_rel_error=[0-9.e-]+, dtypes=\{torch.float32: Tolerance\(max_rel_error=[0-9.e-]+\)\}\)",
                     msg), msg
    C.check_tolerance_declared(C.Subject("toy_ok"))  # (a subclass of UnquantizedConfig states its bounds)


def test_a_config_whose_instances_set_their_tolerance_states_one(toys, monkeypatch) -> None:
    """self.tolerance set in from_config (a bound computed from a setting): what the accuracy checks read, so stated."""
    from fastvideo_quant.quantization import Tolerance

    made = toys.NoToleranceConfig.from_config.__func__

    def from_config(cls, config):
        self = made(cls, config)
        self.tolerance = Tolerance(max_rel_error=1e-2, dtypes={torch.float32: Tolerance(max_rel_error=4e-3)})
        return self

    monkeypatch.setattr(toys.NoToleranceConfig, "from_config", classmethod(from_config))
    C.check_tolerance_declared(C.Subject("toy_no_tolerance"))


def test_a_loose_sqnr_bound_is_judged_as_the_error_it_allows(toys) -> None:
    """min_sqnr_db=10 allows a relative error of 0.32; the exact method measures ~0.002 (bfloat16 rounding)."""
    msg = failure(C.check_tolerance_declared, C.Subject("toy_loose_sqnr"))
    assert "[contract: apply: tolerance declared] method 'toy_loose_sqnr'" in msg, msg
    assert "Tolerance(max_rel_error=None, min_sqnr_db=10.0) allows 0.316" in msg, msg


def test_a_tolerance_within_the_output_dtypes_rounding_passes(toys) -> None:
    """An exact method measures 0 in float32: its 1e-2 is judged against bfloat16's eps (its config declares
    bfloat16), not against 0, also where the suite class checks float32 only. A config declaring float32 only, with
    the same 1e-2, is loose: nothing rounds there (float32 sums measure 0 to ~1e-7, still far below)."""
    C.check_tolerance_declared(C.Subject("toy_ok"))
    C.check_tolerance_declared(C.Subject("toy_ok", act_dtypes=(torch.float32,)))
    subject = C.Subject("toy_float32_only")
    msg = failure(C.check_tolerance_declared, subject)
    assert "[contract: apply: tolerance declared] method 'toy_float32_only'" in msg, msg
    assert "Tolerance(max_rel_error=0.01, min_sqnr_db=None) allows 0.01" in msg, msg
    # (0 where apply and the reference sum alike; float32 rounding of the sums where they do not: cuBLAS, and CPU BLAS
    # kernels that fuse the bias into the product — 4.5e-8 on one CI machine, 0 on another)
    exact = "is at most 0 on the suite's inputs" in msg and "infinitely many times" in msg
    rounded = re.search(r"is at most [0-9.]+e-0[78] on the suite's inputs .* allows 0.01, \d+x that", msg)
    assert exact or rounded, msg


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
    """x.div_(s) in apply: [contract: apply: input unchanged], in check_apply and in every check that calls apply;
    the checks that reuse an input gave each call the same tensor and failed as a serialization, deepcopy, state_dict
    or processing bug."""
    s = C.Subject("toy_input_mutating")
    assert failure(check, s, "column").startswith("[contract: apply: input unchanged] ")
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
    said = re.search(r"building its method 'toy_no_quantize_weight' of plugin 'toy_no_quantize_weight' \(in-process\): "
                     r"its config, a first layer and a first checkpoint, before any test ran; the suite's selected "
                     r"(\d+) tests were deselected", out)
    assert said, out
    assert f"1 failed, {said.group(1)} deselected" in out and "passed" not in out, out


# --- a vLLM-style port's mistakes: each one contract, named in the plugin's terms ---------------------------------
def test_swapped_dims_are_a_create_weights_failure(toys) -> None:
    """input_dim=0, output_dim=1 on an [out, in] weight: the layers' size check refuses it as [contract:
    create_weights] (the suite said [contract: get_quant_method], 'return an instance of a LinearMethodBase subclass',
    and before that crashed in expected_shape's torch.cat, blamed on the plugin)."""
    msg = failure(C.check_create_weights, C.Subject("toy_swapped_dims"), "merged", False)
    assert msg.startswith("[contract: create_weights] method 'toy_swapped_dims', MergedColumnParallelLinear("), msg
    assert "'weight' (ModelWeightParameter, shape (192, 256), output_dim=1, input_dim=0)" in msg, msg
    assert "how to fix: size each parameter from output_partition_sizes and input_size_per_partition" in msg, msg
    assert "LinearMethodBase subclass" not in msg, msg


def test_a_fused_weight_without_output_dim_is_a_create_weights_failure(toys) -> None:
    """A v1 weight [192, 256] for parts of 128 and 64 rows with no output_dim: the loader would copy each part whole
    into it. [contract: create_weights] names the missing dim; loading names it too (it failed 'expected shape (192,
    256), found (128, 256)', read as a checkpoint problem; a plugin author's review)."""
    s = C.Subject("toy_no_output_dim")
    msg = failure(C.check_create_weights, s, "merged", False)
    assert msg.startswith("[contract: create_weights] method 'toy_no_output_dim', MergedColumnParallelLinear("), msg
    assert ("registers parameter 'weight' [192, 256] with output_dim=None, input_dim=1: quantize_weight writes "
            "[[128, 256], [64, 256]] for the parts of this fused layer (each one checkpoint module's output rows), which "
            "differ along dim 0, but the parameter has no output_dim") in msg, msg
    msg = failure(C.check_weight_fidelity, s, "qkv")
    assert "The parameter has no output_dim" in msg, msg
    assert "If NoOutputDimMethod.create_weights sized it per rank or per fused part, it must set output_dim=0" in msg
    C.check_weight_fidelity(s, "column")  # (unfused, TP=1: the whole tensor is the parameter)


def test_a_shard_problems_hook_refusing_what_create_weights_built_fails(toys) -> None:
    """The layers list TP sizes by shard_problems: a hook stricter than the method would advise against sizes that
    work. The suite builds the layer, then asks the hook about the shard just built."""
    msg = failure(C.check_create_weights, C.Subject("toy_over_strict_shards"), "column", False)
    assert msg.startswith("[contract: create_weights: shard_problems] method 'toy_over_strict_shards'"), msg
    assert "OverStrictShardsConfig.shard_problems([128], [128], 256, 256) of" in msg, msg
    assert "refuses the shard its create_weights built: ['input size per rank 256 is not a multiple of 1024']" in msg
    C.check_create_weights(C.Subject("toy_ok"), "column", False)


@pytest.mark.parametrize("kind", ["column", "merged", "qkv"])
def test_a_dim_the_parameter_lacks_is_a_create_weights_failure_not_a_suite_crash(toys, kind) -> None:
    """A 1-D scale [out] with output_dim=1 (a plain parameter): the suite's expected_shape raised IndexError (merged,
    qkv: torch.cat), which the verdict called the plugin's exception. The layers now refuse it when built."""
    msg = failure(C.check_create_weights, C.Subject("toy_scale_dim"), kind, False)
    rows = {"column": 128, "merged": 192, "qkv": 128}[kind]
    assert msg.startswith(f"[contract: create_weights] method 'toy_scale_dim', {C.Subject('x').describe(kind)[:-1]}"), msg
    assert ("method 'toy_scale_dim' of plugin 'toy_scale_dim' (in-process): ScaleDimMethod.create_weights "
            f"registered 'weight_scale' (Parameter, shape ({rows},)) on ") in msg, msg
    assert "with output_dim=1, which is not a dim of it (0..0)" in msg, msg
    assert "how to fix: size each parameter from output_partition_sizes and input_size_per_partition" in msg, msg


def test_fused_parts_that_differ_along_another_dim_are_named() -> None:
    """The suite's own computation (the parts stacked along output_dim) is checked before it runs."""
    import torch

    from fastvideo_quant.testing.conformance.sharding_dims import sharding_dims_problem

    param = torch.nn.Parameter(torch.empty(192, 256), requires_grad=False)
    param.output_dim, param.input_dim = 1, 0
    problem = sharding_dims_problem(param, [torch.empty(128, 256), torch.empty(64, 256)])
    assert problem == ("quantize_weight writes [[128, 256], [64, 256]] for the parts of this fused layer (each one "
                       "checkpoint module's output rows), which differ along dim 0, not along output_dim=1, so they "
                       "cannot be stacked along output_dim"), problem
    param.output_dim, param.input_dim = 0, 0
    assert "output_dim and input_dim are the same dim 0" in sharding_dims_problem(param, [torch.empty(192, 256)])
    param.output_dim, param.input_dim = 0, 1
    assert sharding_dims_problem(param, [torch.empty(128, 256), torch.empty(64, 256)]) is None


def test_a_config_init_without_super_is_one_config_failure(toys) -> None:
    """__init__ without super().__init__(): an AttributeError for packed_modules_mapping in quantization/base.py
    (is_layer_skipped), with no hint, was the one failure."""
    from fastvideo_quant.testing.pytest_plugin import build_first_layer

    step, exc = build_first_layer(C.Subject("toy_no_super_init"))
    assert step == "config" and isinstance(exc, C.ConformanceFailure), exc
    msg = str(exc)
    assert msg.startswith("[contract: config: __init__] method 'toy_no_super_init', NoSuperInitConfig.from_config({}) "
                          "of plugin 'toy_no_super_init' (in-process): the NoSuperInitConfig from_config returned has "
                          "no packed_modules_mapping and modules_to_not_convert attributes, which "
                          "QuantizationConfig.__init__ sets: NoSuperInitConfig.__init__ at "), msg
    assert "broken_plugins.py:" in msg and "does not call super().__init__()" in msg, msg
    assert msg.endswith("how to fix: call super().__init__() in NoSuperInitConfig.__init__ (it sets "
                        "packed_modules_mapping and modules_to_not_convert)"), msg


def test_an_exception_inside_get_quant_method_is_one_failure_naming_its_line(toys) -> None:
    """A typo inside get_quant_method: the layers' PluginError (plugin, distribution, the exception and its line) is
    one [contract: get_quant_method: raised] failure whose fix is to fix that line, not 'return an instance of a
    LinearMethodBase subclass' (what an abstract method class is told)."""
    from fastvideo_quant.testing.pytest_plugin import build_first_layer

    step, exc = build_first_layer(C.Subject("toy_get_quant_method_typo"))
    assert step == "layer" and isinstance(exc, C.ConformanceFailure), exc
    msg = str(exc)
    assert msg.startswith("[contract: get_quant_method: raised] method 'toy_get_quant_method_typo', ReplicatedLinear("), msg
    assert ("method 'toy_get_quant_method_typo' of plugin 'toy_get_quant_method_typo' (in-process): "
            "GetQuantMethodTypoConfig.get_quant_method(layer 'conformance.replicated' (ReplicatedLinear)) raised "
            "NameError: name 'OkMethdo' is not defined (at ") in msg and "broken_plugins.py:" in msg, msg
    assert "how to fix: fix get_quant_method where it raised" in msg, msg
    assert isinstance(exc.__cause__.__cause__, NameError), exc.__cause__


def test_an_apply_the_layers_cannot_call_is_one_failure_with_the_signature(toys) -> None:
    from fastvideo_quant.testing.pytest_plugin import build_first_layer

    step, exc = build_first_layer(C.Subject("toy_apply_without_bias"))
    assert step == "layer" and isinstance(exc, C.ConformanceFailure), exc
    msg = str(exc)
    assert msg.startswith("[contract: apply: signature] method 'toy_apply_without_bias', ReplicatedLinear("), msg
    assert ("of plugin 'toy_apply_without_bias' (in-process): ApplyWithoutBiasMethod.apply at " in msg
            and "broken_plugins.py:" in msg and "has the signature apply(self, layer, x), but" in msg), msg
    assert "how to fix: define apply(self, layer, x, bias=None)" in msg, msg


def test_a_quantize_weight_without_prefix_is_one_failure_with_the_signature(toys) -> None:
    """def quantize_weight(self, weight), as docs/plugins.md wrote it: a TypeError in each of 69 tests; now one
    [contract: quantize_weight] failure found before any test. **kwargs takes the keywords."""
    from fastvideo_quant.testing.pytest_plugin import build_first_layer

    step, exc = build_first_layer(C.Subject("toy_old_quantize_signature"))
    assert step == "checkpoint" and isinstance(exc, C.ConformanceFailure), exc
    msg = str(exc)
    assert msg.startswith("[contract: quantize_weight] method 'toy_old_quantize_signature', ReplicatedLinear("), msg
    assert ("OldQuantizeSignatureConfig.quantize_weight at " in msg and ", of plugin 'toy_old_quantize_signature' "
            "(in-process), has the signature quantize_weight(weight), but it is called as quantize_weight(weight, *, "
            "prefix='', activations=None)") in msg, msg
    assert "TypeError: got an unexpected keyword argument 'prefix'" in msg, msg
    assert ("how to fix: define quantize_weight(self, weight, *, prefix='', activations=None)" in msg
            and "keyed by the parameter names create_weights registers" in msg), msg
    assert failure(C.check_weight_fidelity, C.Subject("toy_old_quantize_signature"), "column") == msg.replace(
        "ReplicatedLinear(in=256, out=128", "ColumnParallelLinear(in=256, out=128")
    assert build_first_layer(C.Subject("toy_kwargs_quantize_signature")) is None


def test_a_get_quant_method_ignoring_the_skip_list_is_told_to_honour_it(toys) -> None:
    """The skip list round-trips; get_quant_method returns the quantized method anyway (vLLM style): the fix is
    is_layer_skipped, not "store modules_to_not_convert in to_dict/from_config" (which it does)."""
    msg = failure(C.check_skip_list, C.Subject("toy_ignores_skip_list"))
    assert msg.startswith("[contract: modules_to_not_convert] method 'toy_ignores_skip_list'"), msg
    assert ("keeps the skip list (is_layer_skipped('blocks.0.proj_out') is True), but its get_quant_method builds "
            "that layer with QuantizedLookingMethod, expected UnquantizedLinearMethod: get_quant_method ignores the "
            "skip list") in msg, msg
    assert ("how to fix: honour is_layer_skipped in get_quant_method: return self.linear_method_or_skip(layer, "
            "prefix, lambda: QuantizedLookingMethod(...))") in msg, msg
    assert "read the skip list in from_config" in failure(C.check_skip_list, C.Subject("toy_no_skip_list"))


@pytest.mark.slow
def test_apply_modifying_its_input_is_no_tensor_parallel_failure(toys) -> None:
    """x.div_(s) in apply: the TP checks reused the input they gave the layer as the reference's input (and the
    spawned ranks shared it), adding 'each rank must compute its own shard' to the [contract: apply: input
    unchanged] failure test_apply reports."""
    s = C.Subject("toy_input_mutating")
    for kind in ("column", "row"):
        C.check_tp_layer(s, kind)
    C.check_tp_pair(s)


VERDICT_TOYS = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import broken_plugins
from fastvideo_quant import plugins
from fastvideo_quant.testing.conformance import create_weights

for name, plugin in broken_plugins.PLUGINS.items():
    plugins.register_plugin(plugin, name)


def _suite_bug(*args, **kwargs):
    raise RuntimeError("a bug in the suite's own computation")


create_weights.expected_shape = _suite_bug  # (what expected_shape's torch.cat did with swapped dims)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("method", "raised_in", "line"), [
    ("toy_ok", "not the plugin", "RuntimeError: a bug in the suite's own computation"),
    ("toy_create_weights_raises", "plugin", "RuntimeError: packed layout needs input_size % 1024 == 0"),
])
def test_the_verdict_blames_the_plugins_code_only_when_a_frame_of_it_raised(tmp_path, method, raised_in, line) -> None:
    """An exception without a contract line was "an exception from the plugin's code" also when only the suite's
    frames were in its traceback (expected_shape's torch.cat on swapped dims)."""
    import json
    import os

    from fastvideo_quant.testing import run_summary

    (tmp_path / "fvq_verdict_toys.py").write_text(VERDICT_TOYS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    summary = tmp_path / "summary.json"
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "fvq_verdict_toys",
                           "-p", "fastvideo_quant.testing.pytest_plugin", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "--fvq-method", method, "--fvq-summary", str(summary),
                           "-k", "create_weights and merged-nobias", "--pyargs",
                           "fastvideo_quant.testing.conformance.test_suite"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    [found] = json.loads(summary.read_text())["failures"]
    assert found["contract"] is None and found["line"] == line and found["raised_in"] == raised_in, (found, out)
    group = run_summary.failure_group(found)
    if raised_in == "plugin":
        assert group == f"{line} (no [contract: ...] line: an exception from the plugin's code; its traceback is above)"
    else:
        assert group == (f"{line} (no [contract: ...] line, and no frame of the plugin's code in its traceback: raised "
                         "by fastvideo-quant (the suite or the core) or a library it calls; its traceback is above)")


def test_a_float32_input_computed_in_bfloat16_fails_the_float32_bound(toys, monkeypatch) -> None:
    """One bound wide enough for bfloat16 (1e-2) passes an apply that computes float16 and float32 inputs in
    bfloat16 (~2e-3 off); the unquantized method's per-dtype bounds (float32 1e-5, float16 1e-3) do not."""
    s = C.Subject("toy_bf16_inside_float32")
    C.check_apply(s, "replicated", torch.bfloat16)  # (what it computes in: right)
    for dtype, bound in ((torch.float32, "1e-05"), (torch.float16, "0.001")):
        msg = failure(C.check_apply, s, "replicated", dtype)
        assert f"> tolerance.dtypes[{dtype}].max_rel_error {bound} (SQNR" in msg, msg
        assert f"(a bound set for {dtype}'s own rounding: an apply that computes {dtype} inputs in a narrower dtype" \
            in msg, msg
    monkeypatch.setattr(s.config_cls(), "tolerance", Tolerance(max_rel_error=1e-2))
    C.check_apply(s, "replicated", torch.float32)  # (the single bound's blind spot)


def test_a_per_dtype_bound_far_looser_than_measured_is_named(toys, monkeypatch) -> None:
    """tolerance.dtypes[torch.float32] = 1e-2 on an exact method: judged against float32 alone (its measured ~1e-7 and
    eps 1.2e-7), not against the outer bound's bfloat16."""
    cls = C.Subject("toy_ok").config_cls()
    monkeypatch.setattr(cls, "tolerance", Tolerance(max_rel_error=1e-2, dtypes={torch.float32: Tolerance(1e-2)}))
    msg = failure(C.check_tolerance_declared, C.Subject("toy_ok"))
    assert (f"but {cls.__name__}.tolerance.dtypes[torch.float32] = Tolerance(max_rel_error=0.01, min_sqnr_db=None) "
            "allows 0.01") in msg, msg
    assert "dtypes ['float32']" in msg and "float32's rounding, eps 1.19e-07" in msg, msg
    assert "here about dtypes={torch.float32: Tolerance(max_rel_error=" in msg, msg
    monkeypatch.setattr(cls, "tolerance", Tolerance(max_rel_error=1e-2, dtypes={torch.float32: Tolerance(1e-5)}))
    C.check_tolerance_declared(C.Subject("toy_ok"))


def test_a_grad_mode_path_returning_bfloat16_for_float32_is_named_not_held_to_the_bfloat16_bound(toys) -> None:
    """The bound follows the input's dtype, not the output's: a path that returns bfloat16 for a float32 input is an
    output dtype failure (it was held to the outer 1e-2 bound, which its bfloat16 error passes)."""
    msg = failure(C.check_apply, C.Subject("toy_bf16_in_grad_mode"), "replicated", torch.float32)
    assert msg.startswith("[contract: apply: output dtype] method 'toy_bf16_in_grad_mode'"), msg
    assert "input dtype torch.float32 gave output dtype torch.bfloat16" in msg, msg


def test_a_float32_miss_with_tf32_on_says_so(monkeypatch) -> None:
    """torch's float32 matmul precision 'high' runs float32 matmuls on a GPU in TF32 (~1e-3): a float32 bound of 1e-5
    then fails the built-in methods, and the failure says why."""
    from fastvideo_quant.testing.conformance.apply import _narrower_note

    tol = Tolerance(1e-2, dtypes={torch.float32: Tolerance(1e-5)})
    assert _narrower_note(tol, torch.bfloat16) == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        note = _narrower_note(tol, torch.float32)
    finally:
        torch.set_float32_matmul_precision(before)
    assert "here torch.get_float32_matmul_precision() is 'high'" in note and "run in TF32 (~1e-3)" in note, note
    assert "TF32" not in _narrower_note(tol, torch.float32)
