"""The conformance suite's power: each deliberately broken plugin fails with the contract it breaks named.

The plugins are registered in-process; the checks are called directly (the same
functions the suite's mixins call). A correct plugin passes every check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastvideo_quant.testing import conformance as C
from fastvideo_quant.testing.conformance import checkpoint as ck

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
from broken_plugins import failure  # noqa: E402

HERE = Path(__file__).parent
#: The create_weights signature the layers call (its names are part of the contract: most layers call it by keyword).
EXPECTED = ("create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size, "
            "params_dtype, **extra_weight_attrs)")


@pytest.fixture(scope="module")
def toys():
    with broken_plugins.registered(broken_plugins.PLUGINS):
        yield broken_plugins


def test_correct_plugin_passes_every_check(toys) -> None:
    s = C.Subject("toy_ok")
    C.check_reachable(s)
    C.check_declarations(s)
    C.check_config_round_trip(s)
    C.check_skip_list(s)
    C.check_calibration_declared(s)
    C.check_quantize_weight_inputs(s)
    for kind in C.LAYER_KINDS:
        C.check_quant_method_registered(s, kind)
        C.check_create_weights(s, kind, True)
        C.check_weight_fidelity(s, kind)
        C.check_rejects_misshaped(s, kind)
        C.check_serialization(s, kind)
        C.check_tensors_registered(s, kind)
        C.check_validate_loaded_weights(s, kind)
        for dtype in (torch.bfloat16, torch.float32):
            C.check_apply(s, kind, dtype)
        C.check_apply_before_processing(s, kind)
        C.check_online_quantization(s, kind)
    for kind in C.FUSED_KINDS:
        C.check_per_shard_equals_fused(s, kind)
    for kind in C.PARALLEL_KINDS:
        C.check_tp_layer(s, kind)
    C.check_tp_replicated_kv(s)
    C.check_tp_pair(s)


def test_skip_list_must_round_trip(toys) -> None:
    """A config that drops modules_to_not_convert passes every other check but cannot `fvq quantize --skip`."""
    C.check_skip_list(C.Subject("toy_skip_list"))
    msg = failure(C.check_skip_list, C.Subject("toy_no_skip_list"))
    assert "[contract: modules_to_not_convert] method 'toy_no_skip_list'" in msg
    assert "'blocks.0.proj_out'" in msg and "QuantizedLookingMethod" in msg and "expected UnquantizedLinearMethod" in msg
    assert "linear_method_or_skip" in msg and "skip_list_from" in msg


def test_abstract_method_class_is_a_contract_failure(toys) -> None:
    """get_quant_method instantiating a class without apply(): a [contract: ...] line naming plugin and method."""
    msg = failure(C.check_quant_method_registered, C.Subject("toy_abstract_method"), "column")
    assert "[contract: get_quant_method] method 'toy_abstract_method'" in msg
    assert "plugin 'toy_abstract_method' (in-process)" in msg and "NoApplyMethod" in msg and "apply" in msg


def test_abstract_method_class_when_building_a_model(toys) -> None:
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.layers.linear import ColumnParallelLinear

    cfg = C.Subject("toy_abstract_method").quant_config()
    with pytest.raises(PluginError) as info:
        ColumnParallelLinear(16, 16, quant_config=cfg, prefix="blocks.0.attn.to_q")
    msg = str(info.value)
    assert "method 'toy_abstract_method' of plugin 'toy_abstract_method' (in-process)" in msg
    assert "AbstractMethodConfig.get_quant_method(layer 'blocks.0.attn.to_q' (ColumnParallelLinear))" in msg
    assert "NoApplyMethod" in msg and "apply" in msg


def test_bias_ignored(toys) -> None:
    msg = failure(C.check_apply, C.Subject("toy_bias_ignored"), "qkv", torch.bfloat16)
    assert "[contract: apply: bias applied once]" in msg and "QKVParallelLinear(" in msg
    assert "0.00 × bias" in msg and "how to fix" in msg


def test_wrong_output_dtype(toys) -> None:
    msg = failure(C.check_apply, C.Subject("toy_wrong_dtype"), "row", torch.bfloat16)
    assert "[contract: apply: output dtype]" in msg and "RowParallelLinear(in=256, out=128" in msg
    assert "torch.float32" in msg and "x.dtype" in msg


def test_tp_shard_not_narrowed(toys) -> None:
    s = C.Subject("toy_no_narrow")
    C.check_apply(s, "column", torch.float32)  # right at TP=1: only tensor parallelism shows the bug
    msg = failure(C.check_tp_layer, s, "column")
    assert "[contract: loading at TP=2]" in msg and "ColumnParallelLinear(in=256, out=128, tp=2" in msg
    assert "narrow by tp_rank" in msg


def test_a_dropped_bias_at_tp_is_not_called_a_sharding_problem(toys) -> None:
    """An apply that drops the bias fails every TP output check too; their advice was about narrowing and sharding."""
    msg = failure(C.check_tp_layer, C.Subject("toy_bias_ignored"), "column")
    assert "[contract: tensor parallel: output]" in msg, msg
    assert "the same layer at TP=1 misses that reference too: " in msg, msg
    assert "how to fix: not a sharding problem: fix the layer at TP=1 first" in msg, msg


def test_a_per_rank_shape_failure_on_the_ranks_is_reported_once(toys) -> None:
    """The suite's own failure raised on a rank was quoted inside a 'loading at TP=2' failure: two contracts and two
    "how to fix" lines, the outer one about exceptions and tracebacks."""
    s = C.Subject("toy_full_rows_scale")
    C.check_apply(s, "column", torch.float32)  # right at TP=1
    msg = failure(C.check_tp_layer, s, "column")
    assert msg.startswith("[contract: create_weights] method 'toy_full_rows_scale', "
                          "ColumnParallelLinear(in=256, out=128, tp=2, dtype=float32) rank 0"), msg
    assert "registered 'weight_scale' (Parameter, shape (128, 1), output_dim=0)" in msg, msg
    assert "(TP rank 0 of 2): along output_dim=0 it holds 128, expected 64" in msg, msg
    assert msg.count("how to fix") == 1 and "traceback" not in msg, msg


def test_loader_ignores_shard_id(toys) -> None:
    s = C.Subject("toy_ignores_shard_id")
    msg = failure(C.check_per_shard_equals_fused, s, "qkv")
    assert "[contract: loading: per-shard vs fused-on-disk]" in msg and "['q', 'k', 'v']" in msg
    assert "QKVParallelLinear(in=256, heads=4, kv_heads=2, head_size=16" in msg
    msg = failure(C.check_weight_fidelity, s, "merged")  # the independent check names the parts that are off
    assert "[contract: loading: weight fidelity]" in msg and "per checkpoint part: 0:" in msg


def test_mis_shaped_tensor_error_must_name_the_shape(toys) -> None:
    msg = failure(C.check_rejects_misshaped, C.Subject("toy_silent_reshape"), "column")
    assert "[contract: loading: mis-shaped tensor]" in msg and "[129, 257]" in msg


def test_apply_before_processing_must_say_so(toys) -> None:
    msg = failure(C.check_apply_before_processing, C.Subject("toy_unguarded_processing"), "merged")
    assert "[contract: apply before processing]" in msg and "AttributeError" in msg and "NotProcessedError" in msg


def test_tensor_kept_as_plain_attribute(toys) -> None:
    msg = failure(C.check_tensors_registered, C.Subject("toy_plain_attribute"), "row")
    assert "[contract: module state: tensors registered]" in msg and "layer.weight_t" in msg and "register_buffer" in msg


def test_method_classes_must_be_registered(toys) -> None:
    msg = failure(C.check_quant_method_registered, C.Subject("toy_config_only"), "column")
    assert "[contract: registration: method classes]" in msg and "register(UnregisteredMethodConfig, OkMethod" in msg


def test_v2_registration_is_checked(toys) -> None:
    msg = failure(C.check_create_weights, C.Subject("toy_v2_plain_params"), "column", True)
    assert "[contract: weight_loader_v2]" in msg and "registered plain parameters ['weight']" in msg
    assert "how to fix: create the parameters from fastvideo_quant.parameter" in msg


def test_validate_loaded_weights_runs_where_the_loader_runs_it(toys) -> None:
    """The suite processes layers through the loader: a validate_loaded_weights refusing a correct load fails every
    check that processes, as a [contract: validate_loaded_weights] failure naming the plugin and the layer."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_refusing_validate"), "column")
    assert "[contract: validate_loaded_weights] method 'toy_refusing_validate'" in msg
    assert "RefusingValidateMethod of plugin 'toy_refusing_validate' (in-process)" in msg
    assert "layer 'conformance.column': tensor 'weight': expected float16, found torch.float32" in msg
    msg = failure(C.check_validate_loaded_weights, C.Subject("toy_refusing_validate"), "qkv")
    assert "[contract: validate_loaded_weights]" in msg and "the first call on layer 'conformance.qkv'" in msg


def test_a_parameter_class_built_without_the_layers_loader_is_told_to_pass_it(toys) -> None:
    """It was told to size its parameters from output_partition_sizes (the create_weights contract's usual hint)."""
    msg = failure(C.check_create_weights, C.Subject("toy_no_loader_param"), "column", True)
    assert "[contract: create_weights]" in msg and "missing 1 required positional argument: 'weight_loader'" in msg, msg
    assert "how to fix: build every fastvideo_quant.parameter class with weight_loader=extra_weight_attrs" in msg, msg
    assert "size each parameter" not in msg, msg


def test_a_processing_exception_names_where_the_plugin_raised_it(toys) -> None:
    """It said only 'raised RuntimeError: repack failed', with a hint about layer classes (the method failed on every
    one): the plugin's file:line was in pytest's long traceback alone."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_raising_processing"), "column")
    assert "[contract: process_weights_after_loading] method 'toy_raising_processing'" in msg, msg
    assert f"raised RuntimeError: repack failed (at {broken_plugins.__file__}:" in msg, msg
    assert "it must convert every layer its create_weights built" in msg and "accept every layer class" not in msg, msg


def test_validate_loaded_weights_must_not_modify_the_layer(toys) -> None:
    msg = failure(C.check_validate_loaded_weights, C.Subject("toy_clamping_validate"), "row")
    assert "[contract: validate_loaded_weights: layer unchanged] method 'toy_clamping_validate'" in msg
    assert "the first call modified layer 'conformance.row': parameter 'weight' values changed" in msg
    assert "plugin 'toy_clamping_validate' (in-process)" in msg and "process_weights_after_loading" in msg


def test_validate_loaded_weights_may_run_twice(toys) -> None:
    msg = failure(C.check_validate_loaded_weights, C.Subject("toy_validate_once"), "merged")
    assert "[contract: validate_loaded_weights]" in msg and "the second call" in msg
    assert "RuntimeError: layer already validated" in msg


def test_failures_name_real_checkpoint_tensors(toys) -> None:
    """Checkpoint tensors are named after the layer prefix (never 'None.weight')."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_loader_raises"), "column")
    assert "[contract: loading]" in msg and "checkpoint tensor 'conformance.column.weight' [128, 256]" in msg
    assert "None." not in msg
    s = C.Subject("toy_ok")
    layer = s.build_layer("qkv", bias=True, dtype=torch.float32)
    ckpt = ck.make_checkpoint(s, "qkv")
    assert [e.name for e in ck.entries(layer, ckpt, s) if e.param == "weight"] == [
        "conformance.qkv.q.weight", "conformance.qkv.k.weight", "conformance.qkv.v.weight"]
    assert {e.name for e in ck.entries(layer, ckpt, s, fused_on_disk=True)} == {"conformance.qkv.weight",
                                                                               "conformance.qkv.bias"}


CONFTEST = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import broken_plugins
from fastvideo_quant import plugins

def pytest_configure(config):
    for name, plugin in broken_plugins.PLUGINS.items():
        plugins.register_plugin(plugin, name)
"""

MIXIN_TESTS = """
from fastvideo_quant.testing.conformance import ApplyTests, RegistrationTests

class TestIncomplete(RegistrationTests):
    pass

class TestBiasIgnored(ApplyTests):
    method = "toy_bias_ignored"

class TestOk(ApplyTests):
    method = "toy_ok"
"""


@pytest.mark.slow
def test_mixins_through_pytest(tmp_path) -> None:
    """As a plugin author uses them: subclass, set ``method``; a missing ``method`` says "must be overridden", once
    for the class (one failing test_method_builds_a_layer, its selected tests deselected)."""
    import subprocess

    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_toy.py").write_text(MIXIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "Incomplete and reachable or qkv-bfloat16", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "NotImplementedError: must be overridden: set the class attribute method" in out
    assert "[contract: apply: bias applied once] method 'toy_bias_ignored'" in out
    assert "FAILED test_toy.py::TestBiasIgnored::test_apply[qkv-bfloat16]" in out
    assert "FAILED test_toy.py::TestIncomplete::test_method_builds_a_layer" in out
    assert "2 failed, 1 passed, " in out and " error" not in out.splitlines()[-1], out


def test_get_quant_method_returning_a_class_or_an_incomplete_method(toys) -> None:
    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.plugins.manager import quant_method_for

    class Incomplete(toys.QuantizedLookingMethod):
        pass

    del toys.QuantizedLookingMethod.apply  # removed after the class was made: instantiating it still works
    try:
        cfg = C.Subject("toy_skip_list").quant_config()
        with pytest.raises(PluginError, match=r"does not implement the abstract methods \['apply'\]"):
            quant_method_for(cfg, _probe(), "blocks.0.x")
    finally:
        toys.QuantizedLookingMethod.apply = toys.UnquantizedLinearMethod.apply
    cfg.get_quant_method = lambda layer, prefix: Incomplete
    with pytest.raises(PluginError, match=r"plugin 'toy_skip_list' \(in-process\).*returned the class Incomplete, "
                                          r"expected an instance"):
        quant_method_for(cfg, _probe(), "blocks.0.x")


def _probe():
    from fastvideo_quant.layers.linear import ReplicatedLinear

    return ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32)


def test_create_weights_signature_is_part_of_the_contract(toys) -> None:
    """A create_weights the layers cannot call is a [contract: create_weights] failure naming the method class, its
    plugin, the layer, the expected and the found signature (not a TypeError, nor a [contract: get_quant_method] saying
    to implement apply). The names count, since layers call it by keyword: the right order under other names fails."""
    msg = failure(C.check_create_weights, C.Subject("toy_wrong_signature"), "column", False)
    assert "[contract: create_weights] method 'toy_wrong_signature', ColumnParallelLinear(in=256, out=128" in msg
    assert "WrongSignatureMethod.create_weights at " in msg and "broken_plugins.py:" in msg
    assert "of plugin 'toy_wrong_signature' (in-process)" in msg
    assert "has the signature create_weights(self, layer, a, b, c)" in msg and f"layers call {EXPECTED}" in msg
    assert f"how to fix: define {EXPECTED}" in msg
    msg = failure(C.check_create_weights, C.Subject("toy_renamed_args"), "replicated", False)
    assert "[contract: create_weights] method 'toy_renamed_args', ReplicatedLinear(" in msg
    assert "create_weights(self, layer, in_size, out_sizes, input_size, output_size, params_dtype" in msg
    assert "by keyword" in msg and "missing a required argument: 'in_size'" in msg


def test_missing_to_dict_names_the_plugin(toys) -> None:
    s = C.Subject("toy_no_to_dict")
    for check in (s.checkpoint_config, lambda: C.check_config_round_trip(s)):
        msg = failure(check)
        assert "[contract: config round-trip] method 'toy_no_to_dict'" in msg, msg
        assert "to_dict() of plugin 'toy_no_to_dict' (in-process) raised NotImplementedError" in msg, msg


def test_tensor_kept_as_plain_attribute_by_create_weights(toys) -> None:
    """``layer.weight_scale = torch.full(...)`` in create_weights: the create_weights check names it and says to
    register it; loading says so too, not "name the checkpoint tensors after the layer parameters"."""
    s = C.Subject("toy_plain_scale")
    msg = failure(C.check_create_weights, s, "column", False)
    assert "[contract: create_weights: parameters registered] method 'toy_plain_scale', ColumnParallelLinear(" in msg
    assert ("PlainScaleMethod.create_weights of plugin 'toy_plain_scale' (in-process) set weight_scale[128, 1] "
            "float32 as plain tensor attributes") in msg
    assert "layer.register_parameter(name, param)" in msg and "set_weight_attrs" in msg
    msg = failure(C.check_weight_fidelity, s, "merged")
    assert "[contract: create_weights: parameters registered]" in msg
    assert "create_weights set ['weight_scale'] as plain tensor attributes of the layer" in msg
    assert "register_parameter" in msg and "name the checkpoint tensors after" not in msg


def test_a_checkpoint_tensor_registered_as_a_buffer_is_named_so(toys) -> None:
    """register_buffer("weight", ...) in create_weights: the names match, so "create_weights registered no parameter of
    that name" (and "name the checkpoint tensors after the layer parameters") pointed away from the bug."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_buffer_weight"), "replicated")
    assert "[contract: create_weights: parameters registered] method 'toy_buffer_weight'" in msg, msg
    assert "create_weights registered ['weight'] as buffers (register_buffer), not parameters" in msg, msg
    assert "register_parameter" in msg and "name the checkpoint tensors after" not in msg, msg


def test_the_plain_attribute_fix_follows_the_registration(toys) -> None:
    """A v2 method was told to register a plain Parameter with set_weight_attrs, which v2 then refuses."""
    msg = failure(C.check_create_weights, C.Subject("toy_plain_scale_v2"), "column", False)
    assert "[contract: create_weights: parameters registered]" in msg, msg
    assert "how to fix: create each in create_weights as a fastvideo_quant.parameter class" in msg, msg
    assert "set_weight_attrs" not in msg, msg


def test_online_quantization_must_be_declared(toys) -> None:
    """online_quantization = True (the default) with layers that take int8 tensors only: a contract failure saying
    to set it False (model authors then get 'quantize it first'); declared False, the check skips."""
    msg = failure(C.check_online_quantization, C.Subject("toy_int8_only"), "qkv")
    assert "[contract: online_quantization] method 'toy_int8_only', QKVParallelLinear(" in msg
    assert "Int8OnlyConfig.online_quantization is True" in msg and "Int8OnlyConfig.from_config({})" in msg
    assert "expected an integer tensor (torch.int8), found torch.float32" in msg
    assert "how to fix: if the method cannot quantize a float checkpoint on load, set online_quantization = False on " \
           "Int8OnlyConfig" in msg
    declared = C.Subject("toy_int8_only_declared")
    with pytest.raises(pytest.skip.Exception, match="online_quantization is False"):
        C.check_online_quantization(declared, "qkv")
    C.check_weight_fidelity(declared, "qkv")  # otherwise a correct method


def test_reads_quantized_checkpoint_must_tell_the_modes_apart(toys) -> None:
    """A config keeping its quantized_checkpoint_keys setting under another attribute name, without overriding
    reads_quantized_checkpoint(): a contract failure naming the override; with it, the check passes. The built-in
    methods with such keys (fp8, int8) pass; one without keys skips."""
    msg = failure(C.check_reads_quantized_checkpoint, C.Subject("toy_stored_elsewhere"))
    assert "[contract: online_quantization] method 'toy_stored_elsewhere', StoredUnderAnotherNameConfig.from_config({})" \
           in msg, msg
    assert "reads_quantized_checkpoint() is True for the config that quantizes a float checkpoint on load" in msg, msg
    assert "override reads_quantized_checkpoint() to return it" in msg, msg
    C.check_reads_quantized_checkpoint(C.Subject("toy_stored_declared"))
    for method in ("fp8", "int8"):
        C.check_reads_quantized_checkpoint(C.Subject(method))
    with pytest.raises(pytest.skip.Exception, match="declares no quantized_checkpoint_keys"):
        C.check_reads_quantized_checkpoint(C.Subject("toy_ok"))


def test_a_weight_loader_left_none_is_named_as_such(toys) -> None:
    msg = failure(C.check_weight_fidelity, C.Subject("toy_none_loader"), "replicated")
    assert "[contract: create_weights: weight_loader]" in msg, msg
    assert "left 1 parameter without a weight_loader" in msg, msg
    assert "'weight' (ModelWeightParameter, weight_loader None)" in msg, msg
    assert "build ['weight'] with weight_loader=extra_weight_attrs['weight_loader']" in msg, msg
    assert "set_weight_attrs" not in msg, msg  # (for plain nn.Parameters: toy_plain_v1)


def test_calibration_declared_false_but_read_is_caught(toys) -> None:
    """uses_calibration() False makes fvq quantize refuse --calibration: a quantize_weight that reads activations
    anyway is a contract failure naming the tensor that changed; the same method declaring True passes."""
    msg = failure(C.check_calibration_declared, C.Subject("toy_reads_calibration"))
    assert "[contract: uses_calibration] method 'toy_reads_calibration', ReadsCalibrationConfig.quantize_weight(" \
           "weight [128, 256], prefix='conformance.replicated')" in msg, msg
    assert "ReadsCalibrationConfig.uses_calibration() returns False" in msg and "refuses --calibration" in msg, msg
    assert "with activations=x [8, 256]" in msg and "differing from the call without in ['weight']" in msg, msg
    assert "how to fix: return True from uses_calibration() when quantize_weight reads activations" in msg, msg
    C.check_calibration_declared(C.Subject("toy_calibration_declared"))


def test_requires_calibration_is_checked_against_the_call_without_activations(toys) -> None:
    """requires_calibration() True makes fvq quantize refuse a run without --calibration before reading: a method
    that refuses without activations must say so, and one that says so must refuse; the right one passes."""
    msg = failure(C.check_calibration_declared, C.Subject("toy_requires_undeclared"))
    assert "[contract: requires_calibration] method 'toy_requires_undeclared'" in msg, msg
    assert "without activations it raised ConfigError: toy_needs_calibration conformance.replicated: needs " \
           "calibration activations [tokens, in], but requires_calibration() is False" in msg, msg
    assert "how to fix: return True from requires_calibration() under the settings that need activations" in msg, msg
    msg = failure(C.check_calibration_declared, C.Subject("toy_requires_needlessly"))
    assert "[contract: requires_calibration] method 'toy_requires_needlessly'" in msg, msg
    assert "requires_calibration() is True, but without activations it returned tensors" in msg, msg
    C.check_calibration_declared(C.Subject("toy_needs_calibration"))


def test_activations_refused_by_an_undeclared_method_are_caught(toys) -> None:
    msg = failure(C.check_calibration_declared, C.Subject("toy_refuses_activations"))
    assert "[contract: uses_calibration] method 'toy_refuses_activations'" in msg, msg
    assert "RefusesActivationsConfig.uses_calibration() returns None, but with activations=x [8, 256] float32 it " \
           "raised ValueError: conformance.replicated: activations must be [in_features, tokens]" in msg, msg
    assert "accept activations=[tokens, in]" in msg and "return False from uses_calibration()" in msg, msg


def test_calibration_check_skips_a_config_that_cannot_quantize(toys, monkeypatch) -> None:
    """Skips: a config without quantize_weight, and a method unavailable here whose quantize_weight needs what is
    missing (passing where it runs, as an unavailable method's other checks that need no layer do)."""
    with pytest.raises(pytest.skip.Exception, match="NoQuantizeWeightConfig cannot quantize checkpoints"):
        C.check_calibration_declared(C.Subject("toy_no_quantize_weight"))
    C.check_calibration_declared(C.Subject("toy_unavailable"))

    def needs_accelerator(self, weight, *, prefix="", activations=None):
        raise ModuleNotFoundError("No module named 'toy_accelerator'")

    monkeypatch.setattr(toys.UnavailableConfig, "quantize_weight", needs_accelerator)
    with pytest.raises(pytest.skip.Exception, match=r"'toy_unavailable' is unavailable here: needs the toy-accelerator "
                                                    r"package.*\(quantize_weight raised ModuleNotFoundError"):
        C.check_calibration_declared(C.Subject("toy_unavailable"))


def test_misspelled_suite_attributes_are_found() -> None:
    from fastvideo_quant.testing.conformance.fixtures import misspelled_attributes

    class Mine(C.ConformanceTests):
        method = "unquantized"
        weight_rel_err = 0.02
        input_sise = 512
        output_size = 256  # right
        reference_images = 3  # the author's own: close to nothing the suite reads
        _input_size = 1  # private

        def tokenz(self):  # a method, not a setting
            return 1

    assert misspelled_attributes(Mine) == {"weight_rel_err": "weight_rel_error", "input_sise": "input_size"}


# --- bugs the suite's mutation test found passing (each toy is the unquantized method with one bug) ---------------
def test_apply_modifying_its_input_in_place_is_named(toys) -> None:
    """A method scaling the activations in place (x.div_(s)) computes the right output but corrupts the caller's x
    (a residual connection): before, only test_deepcopy failed, blaming the layer's state."""
    msg = failure(C.check_apply, C.Subject("toy_input_mutating"), "column", torch.bfloat16)
    assert "[contract: apply: input unchanged] method 'toy_input_mutating', ColumnParallelLinear(" in msg, msg
    assert "apply modified its input x [8, 256] torch.bfloat16 in place: 2048 of 2048 values changed" in msg, msg
    assert "how to fix: compute on a new tensor (x / s, x.to(...), not x.div_(s)" in msg, msg


@pytest.mark.parametrize(("method", "found"), [
    ("toy_input_mutating_large", "x [65, 256]"),  # (the first token-count input above 16 rows)
    ("toy_input_mutating_3d", "x [2, 3, 256]"),
    ("toy_input_mutating_nobias", "x [8, 256]"),  # (apply(x, None), beside apply(x, bias), for the bias check)
])
def test_apply_modifying_only_some_inputs_in_place_is_named(toys, method: str, found: str) -> None:
    """Only the first 2-D call with a bias was checked: a method modifying large, 3-D (the video shape) or bias-less
    inputs conformed, or the 3-D one read as a 3-D shape bug. Every call the suite makes now checks its input."""
    msg = failure(C.check_apply, C.Subject(method), "replicated", torch.float32)
    assert f"[contract: apply: input unchanged] method '{method}', ReplicatedLinear(" in msg, msg
    assert f"apply modified its input {found} torch.float32 in place:" in msg, msg
    assert "how to fix: compute on a new tensor" in msg, msg


def test_apply_on_a_non_contiguous_input(toys) -> None:
    msg = failure(C.check_apply, C.Subject("toy_view_only"), "replicated", torch.float32)
    assert "[contract: apply: non-contiguous input] method 'toy_view_only', ReplicatedLinear(" in msg, msg
    assert "apply on a non-contiguous input [2, 3, in] (strides [256, 512, 1]" in msg, msg
    assert "raised RuntimeError: view size is not compatible" in msg, msg
    assert "use x.reshape(-1, x.shape[-1]) (not x.view)" in msg, msg


def test_a_parameter_in_the_wrong_dtype_kind_is_told_as_such(toys) -> None:
    """The weight created in params_dtype where quantize_weight writes int8: the loading failure's fix names the
    dtype (it named shapes and sharding attributes), and the mis-shaped check tests shapes, not that dtype."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_float_weight_int8"), "replicated")
    assert "[contract: loading] method 'toy_float_weight_int8'" in msg, msg
    assert "how to fix: create parameter 'weight' in the dtype quantize_weight writes (torch.int8), not " in msg, msg
    C.check_rejects_misshaped(C.Subject("toy_float_weight_int8"), "replicated")


def test_an_accuracy_bug_reads_as_one_not_as_a_strided_input_one(toys) -> None:
    """apply and dequantize_weight disagree at every input: the failure is the accuracy check's (it ran after the
    non-contiguous one, whose message then said 'contiguous it is within tolerance')."""
    msg = failure(C.check_apply, C.Subject("toy_unscaled_dequant"), "replicated", torch.float32)
    assert "[contract: apply: accuracy] method 'toy_unscaled_dequant', ReplicatedLinear(" in msg, msg
    assert "non-contiguous" not in msg, msg


@pytest.mark.parametrize(("method", "rows"), [("toy_gemv_path", 1), ("toy_tiled", 65)])
def test_apply_on_other_row_counts(toys, method: str, rows: int) -> None:
    """Kernels dispatch on the row count: a single-token path without the bias, a tiled path dropping the last
    partial tile. The suite's 8-row (and [2, 3, in]) inputs take neither."""
    msg = failure(C.check_apply, C.Subject(method), "replicated", torch.bfloat16)
    assert f"[contract: apply: token count] method '{method}', ReplicatedLinear(" in msg, msg
    assert f"with {rows} input rows (the 8-row input is within tolerance)" in msg, msg
    assert "relative error" in msg and "a single-token GEMV path, a large-batch GEMM path" in msg, msg


def test_a_checkpoint_format_copy_left_behind_is_memory(toys) -> None:
    """process_weights_after_loading registering the kernel's copy and keeping the checkpoint-format weight: the
    layer holds twice the float weight's bytes."""
    msg = failure(C.check_tensors_registered, C.Subject("toy_keeps_copy"), "merged")
    assert "[contract: module state: memory] method 'toy_keeps_copy', MergedColumnParallelLinear(" in msg, msg
    assert ("the layer holds 393216 bytes of parameters and buffers besides the bias, 2.00x the 196608 bytes of the "
            "float weight it replaces ([192, 256] float32)") in msg, msg
    assert ("and weight[192, 256] float32 and weight_t[256, 192] float32 hold the float weight's 49152 elements (its "
            "shape, the transpose, or a flat or blocked layout of it): a float copy of the weight kept next to the "
            "kernel's tensors") in msg, msg
    assert "del layer.weight, or register the new tensor under the old name" in msg, msg


def test_an_int8_layer_keeping_the_float_weight_is_memory(toys) -> None:
    msg = failure(C.check_tensors_registered, C.Subject("toy_keeps_float_int8"), "replicated")
    assert "[contract: module state: memory] method 'toy_keeps_float_int8', ReplicatedLinear(" in msg, msg
    assert ("1.25x the 131072 bytes of the float weight it replaces ([128, 256] float32), and weight[128, 256] "
            "float32 holds the float weight's 32768 elements") in msg, msg
    assert "(weight_q[128, 256] int8, weight_scale[128, 1] float32)" in msg, msg


@pytest.mark.parametrize(("method", "copy"), [("toy_keeps_flat_copy", "weight_flat[32768]"),
                                              ("toy_keeps_tiled_copy", "weight_tiles[8, 16, 256]")])
def test_a_copy_in_another_layout_is_memory(toys, method: str, copy: str) -> None:
    """A float copy flattened, or tiled for a kernel, kept next to the checkpoint-format weight: neither has the
    weight's 2-D shape, and both passed 'module state: memory' before."""
    msg = failure(C.check_tensors_registered, C.Subject(method), "replicated")
    assert f"[contract: module state: memory] method '{method}', ReplicatedLinear(" in msg, msg
    assert "2.00x the 131072 bytes of the float weight it replaces ([128, 256] float32)" in msg, msg
    assert f"and weight[128, 256] float32 and {copy} float32 hold the float weight's 32768 elements" in msg, msg


@pytest.mark.parametrize(("method", "dtypes"), [("toy_padded_int8", (torch.bfloat16, torch.float16)),
                                                ("toy_rotated_int8", (torch.float32,))])
def test_extra_bytes_that_are_no_copy_of_the_weight_pass_memory(toys, method: str, dtypes) -> None:
    """More bytes than the float weight, but no float copy of it: int8 rows padded to 256 (1.02x of bfloat16) and an
    [in, in] rotation buffer (2.25x of float32) failed 'module state: memory' before."""
    subject = C.Subject(method, act_dtypes=dtypes)
    for kind in ("replicated", "merged", "qkv"):
        C.check_tensors_registered(subject, kind)
    C.check_online_quantization(subject, "replicated")


def test_a_square_layer_tells_a_rotation_from_a_copy(toys) -> None:
    """At in == out an [in, in] rotation has the weight's shape; it failed 'module state: memory' as a "copy". A
    transposed copy of a square weight still fails."""
    square = {"input_size": 128, "output_size": 128}
    C.check_tensors_registered(C.Subject("toy_rotated_int8", act_dtypes=(torch.float32,), **square), "replicated")
    msg = failure(C.check_tensors_registered, C.Subject("toy_keeps_copy", **square), "replicated")
    assert "[contract: module state: memory] method 'toy_keeps_copy', ReplicatedLinear(" in msg, msg
    assert "weight[128, 128] float32 and weight_t[128, 128] float32 hold the float weight's 16384 elements" in msg, msg


def test_online_quantization_keeping_the_float_weight_is_memory(toys, monkeypatch) -> None:
    """On the quantize-on-load path the same bug is reported as itself, not as a wrong online_quantization."""
    msg = failure(C.check_online_quantization, C.Subject("toy_keeps_copy"), "replicated")
    assert msg.startswith("[contract: module state: memory] method 'toy_keeps_copy', ReplicatedLinear("), msg
    assert "quantized on load from a float checkpoint: after process_weights_after_loading" in msg, msg


def test_a_weight_bar_far_looser_than_measured_is_refused(toys) -> None:
    """An exact method declaring weight_rel_error 0.05: a scale 5% off would pass. A suite class's own looser bar is
    refused the same way; the built-in bars (1.3x to 1.8x what they measure) pass (tests/plugins)."""
    msg = failure(C.check_weight_fidelity, C.Subject("toy_loose_bar"), "column")
    assert "[contract: loading: weight_rel_error declared] method 'toy_loose_bar', ColumnParallelLinear(" in msg, msg
    assert "= 0, but LooseBarConfig.weight_rel_error is 0.05, infinitely many times that (more than 4x)" in msg, msg
    assert "a scale written up to ~5% off would pass" in msg, msg
    msg = failure(C.check_weight_fidelity, C.Subject("toy_ok", weight_rel_error=0.2), "row")
    assert "the suite class's weight_rel_error is 0.2" in msg, msg
    C.check_weight_fidelity(C.Subject("toy_ok", weight_rel_error=1e-4), "row")  # tight: fine


def test_quantize_weight_modifying_its_input_is_named(toys) -> None:
    msg = failure(C.check_quantize_weight_inputs, C.Subject("toy_quantize_in_place"))
    assert ("[contract: quantize_weight: input unchanged] method 'toy_quantize_in_place', QuantizeInPlaceConfig."
            "quantize_weight(weight [128, 256] float32, prefix='conformance.replicated', activations=x [8, 256] "
            "float32)") in msg, msg
    assert "modified the weight it was given in place:" in msg and "w = weight.float().clone()" in msg, msg


def test_quantize_weight_must_take_checkpoint_dtypes(toys) -> None:
    """fvq quantize passes bfloat16 / float16 tensors as stored; the other checks quantize float32 only."""
    msg = failure(C.check_quantize_weight_inputs, C.Subject("toy_numpy_quantize"))
    assert ("[contract: quantize_weight: checkpoint dtypes] method 'toy_numpy_quantize', NumpyQuantizeConfig."
            "quantize_weight(weight [128, 256] bfloat16, prefix='conformance.replicated', activations=x [8, 256] "
            "float32): raised TypeError") in msg, msg
    assert "(the float32 weight quantizes)" in msg and "no numpy, which has no bfloat16" in msg, msg


def test_quantize_weight_inputs_passes_calibration_where_it_may_be_read(toys) -> None:
    """A config whose setting needs calibration activations (uses_calibration() True; fp8's static activation
    scheme) gets them in every call; called without, it failed as 'accept a float weight of any dtype'."""
    C.check_quantize_weight_inputs(C.Subject("toy_needs_calibration"))
    C.check_quantize_weight_inputs(C.Subject("fp8", config={"quant_method": "fp8", "is_checkpoint_fp8_serialized": True,
                                                            "activation_scheme": "static"}))


def test_quantize_weight_refusing_the_float32_weight_is_no_dtype_problem(toys) -> None:
    """Declaring False, the config gets no activations, and refuses the float32 weight: said as that."""
    msg = failure(C.check_quantize_weight_inputs, C.Subject("toy_needs_calibration_undeclared"))
    assert ("[contract: quantize_weight] method 'toy_needs_calibration_undeclared', NeedsCalibrationUndeclaredConfig."
            "quantize_weight(weight [128, 256] float32, prefix='conformance.replicated'): raised ConfigError") in msg, msg
    assert "without activations: uses_calibration() returns False" in msg, msg
    assert "checkpoint dtypes" not in msg and "any dtype" not in msg and "quantizes)" not in msg, msg


def test_apply_in_grad_mode(toys) -> None:
    """An input that requires grad (trainable modules in front of the layer): an apply writing with out= raises."""
    msg = failure(C.check_apply, C.Subject("toy_out_arg"), "replicated", torch.float32)
    assert "[contract: apply: grad mode] method 'toy_out_arg', ReplicatedLinear(" in msg, msg
    assert "apply on an input [8, 256] torch.float32 that requires grad, in grad mode" in msg, msg
    assert "don't support automatic differentiation" in msg and "no out= arguments" in msg, msg


def test_a_parameter_that_requires_grad_and_gets_no_gradient(toys) -> None:
    """model.requires_grad_(True), then a backward that leaves a parameter's .grad None: an optimizer skips it
    without a word (fp8's float8 weight did so)."""
    msg = failure(C.check_apply, C.Subject("toy_detached_weight"), "replicated", torch.float32)
    assert "[contract: apply: parameters that require grad] method 'toy_detached_weight', ReplicatedLinear(" in msg, msg
    assert "with the layer's parameters ['weight'] requiring grad" in msg, msg
    assert "gives ['weight'] no gradient" in msg and "check_frozen_storage" in msg, msg


def test_a_scale_created_in_a_narrower_dtype_than_written(toys) -> None:
    """quantize_weight writes float32 scales, create_weights makes float16 parameters: the loader cast them without a
    word, and the rounding (~5e-4) is inside the int8 method's error, so no accuracy check saw it."""
    msg = failure(C.check_apply, C.Subject("toy_fp16_scale"), "replicated", torch.float32)
    assert "[contract: loading: dtypes] method 'toy_fp16_scale', ReplicatedLinear(" in msg, msg
    assert "quantize_weight writes 'conformance.replicated.weight_scale' as torch.float32, but create_weights made " in msg, msg
    assert "'weight_scale' torch.float16 (not the layer's params_dtype torch.float32)" in msg, msg
    assert "values change, by up to " in msg and "create 'weight_scale' in torch.float32" in msg, msg


def test_the_dtype_check_of_loads_compares_float8_values_in_float64() -> None:
    """float8 has no arithmetic on CPU: the check raised torch's NotImplementedError for a float8 tensor."""
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.testing.conformance.checkpoint import Entry, _rounding_cast

    layer = ReplicatedLinear(8, 8, params_dtype=torch.bfloat16)
    t = torch.linspace(-3, 3, 64).reshape(8, 8).to(torch.float8_e4m3fn)
    wide = torch.nn.Parameter(torch.empty(8, 8, dtype=torch.float32), requires_grad=False)
    assert _rounding_cast(layer, Entry("weight", "x.weight", t, None, False), wide) is None  # (exact)
    narrow = torch.nn.Parameter(torch.empty(8, 8, dtype=torch.float8_e5m2), requires_grad=False)
    said = _rounding_cast(layer, Entry("weight", "x.weight", t, None, False), narrow)
    assert said is not None and said.endswith("(relative)") and "of 64 values change" in said, said


def test_a_parameter_created_trainable_by_processing(toys) -> None:
    """Parameter(scale) in process_weights_after_loading: requires grad by torch's default, so an optimizer built from
    the parameters that require grad (a LoRA's) also trained the scale; the suite passed it."""
    msg = failure(C.check_apply, C.Subject("toy_trainable_scale"), "replicated", torch.float32)
    assert "[contract: processing: parameters frozen] method 'toy_trainable_scale', ReplicatedLinear(" in msg, msg
    assert "the layer's parameters ['weight_scale'] require grad" in msg, msg
    assert "torch.nn.Parameter(t, requires_grad=False)" in msg, msg


def test_a_parameter_that_gets_no_gradient_on_the_small_m_path_only(toys) -> None:
    """A kernel path by M that reads weight.data at small M: at the suite's 8 rows the weight got its gradient."""
    msg = failure(C.check_apply, C.Subject("toy_small_m_detached"), "replicated", torch.float32)
    assert "[contract: apply: parameters that require grad] method 'toy_small_m_detached'" in msg, msg
    assert "apply on 1 row(s) in grad mode ran, but its output gives ['weight'] no gradient" in msg, msg


def test_a_parameter_refused_by_name_in_grad_mode_passes() -> None:
    """fp8 refuses its float8 weight and float32 scales when they require grad, naming them: conformant."""
    C.check_apply(C.Subject("fp8"), "replicated", torch.float32)


def test_a_setting_read_and_dropped_by_from_config(toys) -> None:
    """from_config reads 'bits' (so the unread-key check passes) and keeps its default: to_dict() says 8 for the 4
    asked; the round trip alone passes, both sides having lost it."""
    msg = failure(C.check_config_round_trip, C.Subject("toy_setting_dropped", config={"bits": 4}))
    assert "[contract: config round-trip] method 'toy_setting_dropped', SettingDroppedConfig.from_config({'bits': 4})" \
        in msg, msg
    assert "to_dict() writes bits=8 for the bits=4 it was given, as from_config writes without the key" in msg, msg
    assert "store what from_config reads (cfg.setting = config['setting'])" in msg, msg
    C.check_config_round_trip(C.Subject("toy_setting_dropped", config={"bits": 8}))


@pytest.mark.parametrize("config", [{"modules_to_not_convert": ["proj_out", "embed", "proj_out"]},
                                    {"modules_to_not_convert": None, "dtype": "bf16"}])
def test_a_config_normalising_its_settings_keeps_them(toys, config) -> None:
    """A sorted, deduplicated skip list, None written as [], "bf16" as "bfloat16": to_dict() writes another value
    than the one given, but not the default. The check demanded the given value before."""
    C.check_config_round_trip(C.Subject("toy_sorted_skip", config=config))


def test_kv_heads_replicated_over_ranks(toys) -> None:
    """Fewer KV heads than ranks: each rank loads a whole KV head, shared with another rank. A loader that never
    replicates fails test_tp_replicated_kv_heads (the default sizes, 2 KV heads at TP=2, never take that path); a
    correct method passes with num_kv_heads=1 set on the class (the suite's per-rank shapes and gathering used to
    fail it)."""
    msg = failure(C.check_tp_replicated_kv, C.Subject("toy_no_kv_replica"))
    assert ("[contract: loading] method 'toy_no_kv_replica', QKVParallelLinear(in=256, heads=4, kv_heads=1, "
            "head_size=16, tp=2, dtype=float32) rank 0 (rank(s) [1] failed too):") in msg, msg
    assert msg.count("how to fix") == 1, msg  # (the loading failure on the rank, not quoted inside another)
    assert "expected size 32 along dim 0 of the checkpoint tensor, found shape (16, 256)" in msg, msg
    C.check_tp_layer(C.Subject("toy_no_kv_replica"), "qkv")  # 2 KV heads at TP=2: no replication, no bug seen
    ok = C.Subject("toy_ok", num_kv_heads=1)
    C.check_tp_layer(ok, "qkv")


def test_apply_returning_a_buffer_it_writes_again(toys) -> None:
    """One output buffer reused by every call: the caller's earlier output changes under it. Before, it failed as
    'bias applied once' (apply(x, None) overwrote apply(x, bias)) and as a deepcopy failure."""
    msg = failure(C.check_apply, C.Subject("toy_reused_output"), "replicated", torch.float32)
    assert "[contract: apply: output kept] method 'toy_reused_output', ReplicatedLinear(" in msg, msg
    assert "the output of one apply call changed when apply was called again with another input" in msg, msg
    assert "return a new tensor from each call" in msg, msg


def test_an_output_one_feature_short_is_the_output_shape_contract_in_every_check_that_applies(toys) -> None:
    """apply returning out[..., :-1]: each check that runs apply fails on the shape, not inside the suite on the
    sizes (the online-quantization check raised the comparison's RuntimeError; a plugin author's review)."""
    s = C.Subject("toy_narrow_output")
    expected = "[contract: apply: output shape] method 'toy_narrow_output'"
    for check, args in ((C.check_online_quantization, ("column",)), (C.check_serialization, ("column",)),
                        (C.check_apply_before_processing, ("row",)), (C.check_apply, ("qkv", torch.float32))):
        msg = failure(check, s, *args)
        assert msg.startswith(expected) and "gave [8, 127], expected [8, 128]" in msg, (check.__name__, msg)


def test_a_config_of_two_modes_writes_checkpoints_in_its_quantized_mode(toys) -> None:
    """quantized_checkpoint_keys {"toy_serialized": True} and a to_dict() writing the mode the config is in: the suite
    builds the writer as fvq quantize does (the keys set), so its checkpoints load pre-quantized; it built it with
    from_config({}), in the online mode, and failed 'create_weights registered no parameter' (a plugin author's
    review). A to_dict() leaving the mode out is told so."""
    s = C.Subject("toy_two_modes")
    assert s.quant_config().toy_serialized and s.checkpoint_config().toy_serialized
    for kind in ("replicated", "qkv"):
        C.check_weight_fidelity(s, kind)
        C.check_apply(s, kind, torch.float32)
        C.check_online_quantization(s, kind)
    C.check_config_round_trip(s)
    msg = failure(C.check_weight_fidelity, C.Subject("toy_two_modes_forgetful"), "column")
    assert msg.startswith("[contract: quantize_weight matches create_weights] method 'toy_two_modes_forgetful'"), msg
    assert ("how to fix: TwoModesForgetfulConfig was built with its quantized_checkpoint_keys {'toy_serialized': True} "
            "(as fvq quantize builds the config that writes a checkpoint), but its to_dict() writes {'toy_serialized': "
            "'<not written>'}, so from_config(to_dict()), the config a model loading that checkpoint builds, is in the "
            "mode that quantizes float weights on load") in msg, msg


def test_the_rank_that_raised_is_reported_not_its_peers_broken_collective() -> None:
    """first_failure: a rank whose collective failed because its peer left (gloo's "Connection closed by peer") is
    not the one to read."""
    from fastvideo_quant.testing.conformance.tensor_parallel import first_failure

    gone = "RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234"
    assert first_failure([gone, "IndexError: index 1 is out of bounds"]) == (
        1, "IndexError: index 1 is out of bounds", " (rank(s) [0] failed too, in the collective this rank left)")
    assert first_failure(["ValueError: a", None]) == (0, "ValueError: a", "")
    assert first_failure([gone, gone]) == (0, gone, " (rank(s) [1] failed too)")


@pytest.mark.slow
def test_an_apply_raising_on_one_rank_is_reported_with_its_exception(toys) -> None:
    """apply raising on TP rank 1 only: the failure named rank 0 and its 'Connection closed by peer', and the
    IndexError never appeared (a vLLM method porter's review)."""
    msg = failure(C.check_tp_layer, C.Subject("toy_rank_one_raises"), "row")
    assert "[contract: loading at TP=2]" in msg and " rank 1 (rank(s) [0] failed too" in msg, msg
    assert "IndexError: index 1 is out of bounds for dimension 0 with size 1" in msg, msg
    assert "in apply" in msg and "broken_plugins.py" in msg, msg  # (the innermost frames: the plugin's own line)
