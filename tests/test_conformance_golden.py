"""The conformance suite's golden checkpoints: a convention wrong the same way in a plugin's writer and reader passes
every check built on the plugin's own checkpoints and fails against tensors written from the format's definition."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastvideo_quant.testing.conformance import ConformanceFailure, GoldenCheckpoint, GoldenModule, Subject
from fastvideo_quant.testing.conformance.golden import check_golden, check_golden_tp, claimed_by, library_goldens
from fastvideo_quant.testing.conformance.golden_library import library
from fastvideo_quant.testing.conformance.loading import check_weight_fidelity


def _awq_golden(group_size: int = 32) -> GoldenCheckpoint:
    return next(g for g in library() if g.quantization_config.get("quant_method") == "awq"
                and g.quantization_config.get("group_size") == group_size)


def test_every_library_golden_is_read_by_a_builtin_method() -> None:
    claimed = {g.name: claimed_by(g) for g in library()}
    assert all(m in ("awq", "fp8", "int8") for m in claimed.values()), claimed
    assert {m for m in claimed.values()} == {"awq", "fp8", "int8"}
    assert library_goldens("awq") and library_goldens("fp8") and library_goldens("int8")
    assert library_goldens("unquantized") == []


def test_awq_nibble_order_wrong_both_ways_passes_self_checks_and_fails_the_golden(monkeypatch) -> None:
    from fvq_awq import format as awq_format

    natural = tuple(range(8))
    monkeypatch.setattr(awq_format, "AWQ_ORDER", natural)  # the bug: packing and unpacking in bit order
    monkeypatch.setattr(awq_format, "AWQ_REVERSE_ORDER", natural)
    subject = Subject("awq", config={"group_size": 32}, weight_rel_error=0.11)
    check_weight_fidelity(subject, "qkv")  # the plugin's own checkpoints still load "right"
    with pytest.raises(ConformanceFailure) as caught:
        check_golden(subject, _awq_golden(), "replicated", own=False)
    message = str(caught.value)
    assert "[contract: golden: weight]" in message
    assert "output rows are the golden's in another order" in message, message
    assert "AutoAWQ" in message  # the golden's name or source says whose format it is


def test_builtin_awq_reads_the_golden_at_every_layer_class_and_tp2() -> None:
    subject = Subject("awq", config={"group_size": 32})
    for kind in ("replicated", "column", "merged", "qkv", "row"):
        check_golden(subject, _awq_golden(), kind, own=False)
    check_golden_tp(subject, [_awq_golden()], "qkv")


def test_a_golden_meaning_another_scale_reports_the_gain() -> None:
    golden = _awq_golden()
    off = dataclasses.replace(golden, name="awq x1.05", modules=tuple(
        GoldenModule(m.tensors, m.weight * 1.05, m.bias) for m in golden.modules))
    with pytest.raises(ConformanceFailure, match=r"times a gain \(least squares\) of 0\.952"):
        check_golden(Subject("awq"), off, "column", own=True)


def test_an_own_golden_another_method_claims_is_a_failure_naming_both() -> None:
    fp8 = next(g for g in library() if claimed_by(g) == "fp8")
    with pytest.raises(ConformanceFailure) as caught:
        check_golden(Subject("awq"), fp8, "replicated", own=True)
    message = str(caught.value)
    assert "[contract: golden: format claimed]" in message and "selects method 'fp8'" in message, message
    assert "override_quantization_method" in message


def test_tensor_names_the_layer_does_not_have_are_named() -> None:
    golden = _awq_golden()
    renamed = dataclasses.replace(golden, modules=tuple(
        GoldenModule({("qweight_packed" if s == "qweight" else s): t for s, t in m.tensors.items()}, m.weight)
        for m in golden.modules))
    with pytest.raises(ConformanceFailure) as caught:
        check_golden(Subject("awq"), renamed, "row", own=True)
    message = str(caught.value)
    assert "[contract: golden: tensor names]" in message
    assert "no parameter is named ['qweight_packed']" in message and "nothing loads ['qweight']" in message


def test_folder_round_trip(tmp_path) -> None:
    golden = dataclasses.replace(_awq_golden(), weight_rel_error=0.05)
    back = GoldenCheckpoint.from_folder(golden.to_folder(tmp_path / "awq"), source="AutoAWQ")
    assert back.quantization_config == golden.quantization_config and back.name == golden.name  # (golden.json)
    assert back.source == "AutoAWQ" and back.weight_rel_error == 0.05  # (an argument over golden.json)
    assert GoldenCheckpoint.from_folder(tmp_path / "awq").source == golden.source
    for a, b in zip(golden.modules, back.modules, strict=True):
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[s], b.tensors[s]) for s in a.tensors)
        assert torch.equal(a.weight, b.weight)
    check_golden(Subject("awq"), back, "merged", own=True)


def test_folder_problems_are_named(tmp_path) -> None:
    root = _awq_golden().to_folder(tmp_path / "g")
    (root / "reference.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no reference.safetensors"):
        GoldenCheckpoint.from_folder(root)
    from safetensors.torch import save_file

    save_file({"m0.weight": torch.zeros(64, 256)}, root / "reference.safetensors")
    with pytest.raises(ValueError, match=r"missing \['m1.weight', 'm2.weight'\]"):
        GoldenCheckpoint.from_folder(root)


def test_modules_of_different_shapes_are_refused() -> None:
    a = GoldenModule({"weight": torch.zeros(4, 8)}, torch.zeros(4, 8))
    b = GoldenModule({"weight": torch.zeros(4, 16)}, torch.zeros(4, 16))
    with pytest.raises(ValueError, match=r"one shape \[out, in\], found \[\(4, 8\), \(4, 16\)\]"):
        GoldenCheckpoint("two shapes", {"quant_method": "fp8"}, (a, b))


def test_relabeled_levels_names_a_level_standing_for_another() -> None:
    from fastvideo_quant.testing.conformance.golden import relabeled_levels

    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(-8, 8, (16, 64), generator=gen)
    scale = torch.rand(16, 1, generator=gen) + 0.5
    stored = codes + 8  # the format: nibble = code + 8; read back as two's complement instead
    misread = torch.where(stored >= 8, stored - 16, stored)
    said = relabeled_levels((misread * scale).float(), (codes * scale).float())
    assert "one value stands for each of the golden row's values wherever it occurs" in said, said
    assert "(row 0, golden -> loaded:" in said and "an offset of 8 stored or two's complement" in said, said
    assert relabeled_levels((codes * scale).flip(1).float(), (codes * scale).float()) == ""  # moved, not relabelled
    assert relabeled_levels(torch.randn(16, 64), (codes * scale).float()) == ""


def test_qkv_goldens_take_heads_that_split_over_the_ranks() -> None:
    from fastvideo_quant.testing.conformance.golden import golden_subject, tp_shape_problem

    golden = _awq_golden()
    for tp in (1, 2, 4):
        gs = golden_subject(Subject("awq", tp_size=tp), golden)
        assert gs.num_heads % tp == 0 and gs.num_heads * gs.head_size == golden.shape[0]
    assert tp_shape_problem(Subject("awq", tp_size=3), golden) is not None
    assert tp_shape_problem(Subject("awq", tp_size=4), golden) is None


def test_a_bias_in_model_safetensors_is_the_modules_bias_and_modules_sort_naturally(tmp_path) -> None:
    golden = _awq_golden()
    modules = tuple(GoldenModule(m.tensors, m.weight, torch.full((m.weight.shape[0],), float(i)))
                    for i, m in enumerate(golden.modules * 4))  # 12 modules: m10 and m11 sort after m9
    root = dataclasses.replace(golden, modules=modules).to_folder(tmp_path / "g")
    from safetensors.torch import load_file

    assert "m0.bias" in load_file(root / "model.safetensors") and "m0.bias" not in load_file(root / "reference.safetensors")
    back = GoldenCheckpoint.from_folder(root)
    assert [float(m.bias[0]) for m in back.modules] == [float(i) for i in range(12)]
    assert all("bias" not in m.tensors for m in back.modules)
    check_golden(Subject("awq"), back, "qkv", own=True)  # loads the biases into the layer and applies them


def test_a_golden_failing_at_tp1_is_reported_as_that_at_tp2_without_a_spawn(monkeypatch) -> None:
    from fastvideo_quant.testing.conformance import golden as G

    broken = ConformanceFailure("golden: weight", "awq", "here", "the TP=1 problem", "fix")
    monkeypatch.setattr(G, "golden_failure", lambda *a, **k: broken)
    monkeypatch.setattr("fastvideo_quant.testing.distributed.run_distributed",
                        lambda *a, **k: pytest.fail("spawned ranks for a golden that fails at TP=1"))
    with pytest.raises(ConformanceFailure, match=r"the TP=1 check of this golden and layer class fails too "
                       r"\(test_golden_checkpoints\[column\]\): \[golden: weight\] the TP=1 problem"):
        check_golden_tp(Subject("awq"), [_awq_golden()], "column")


def test_results_are_kept_per_layer_class_and_per_setting(monkeypatch) -> None:
    from fastvideo_quant.testing.conformance import golden as G

    golden = _awq_golden()
    calls = []
    monkeypatch.setattr(G, "_RESULTS", {})
    monkeypatch.setattr(G, "check_golden", lambda subject, g, kind, own: calls.append((subject.tokens, kind)))
    for tokens, kind in [(8, "row"), (8, "row"), (8, "column"), (9, "row")]:
        assert G.golden_failure(Subject("awq", tokens=tokens), golden, kind, own=False) is None
    assert calls == [(8, "row"), (8, "column"), (9, "row")]  # (the second (8, row) from the cache)
    assert G._key(Subject("awq", config={"fp8_compute": True})) != G._key(Subject("awq"))


def test_a_suite_class_load_time_option_loads_the_goldens_with_it() -> None:
    from fastvideo_quant.testing.conformance.golden import _golden_config

    config = _golden_config(Subject("awq", config={"group_size": 32, "fp8_compute": True}), _awq_golden(), "here",
                            own=False)
    assert config.fp8_compute is True and config.group_size == 32
    assert _golden_config(Subject("awq"), _awq_golden(), "here", own=False).fp8_compute is False


def test_int8s_triton_backend_reads_the_threshold_0_golden_and_leaves_out_the_one_it_refuses() -> None:
    """int8's fvq_backend is a load-time key: the Triton suite class loads the goldens with it. It runs threshold 0
    only, so the bitsandbytes golden at transformers' default 6.0 is left out, named, and the threshold-0 one read."""
    from fastvideo_quant.testing.conformance.golden import _golden_config, options_problem

    goldens = {g.name: g for g in library() if claimed_by(g) == "int8"}
    at6, at0 = goldens["bitsandbytes LLM.int8() (row format)"], \
        goldens["bitsandbytes LLM.int8(), llm_int8_threshold 0 (row format)"]
    triton = Subject("int8", config={"fvq_backend": "triton"})
    assert options_problem(Subject("int8"), at6) == options_problem(Subject("int8"), at0) == ""
    assert options_problem(triton, at0) == ""
    problem = options_problem(triton, at6)
    assert problem.startswith("golden checkpoint 'bitsandbytes LLM.int8() (row format)': its quantization_config "
                              "loads, but not with load_options={'fvq_backend': 'triton'} (ConfigError: "), problem
    assert "runs threshold 0 only" in problem, problem
    config = _golden_config(triton, at0, "here", own=False)
    assert config.backend == "triton" and config.threshold == 0.0
    assert _golden_config(Subject("int8"), at6, "here", own=False).backend == "auto"


def test_options_that_leave_out_every_golden_fail_and_the_classs_own_goldens_are_never_left_out(monkeypatch) -> None:
    """A reader refusing every pre-quantized section under a non-default backend would leave no golden, and the test
    would skip as passed: it is a failure naming each golden. A suite class's own golden is checked whatever the
    options (its refusal is the golden check's from_config failure)."""
    from fvq_int8.config import Int8Config

    from fastvideo_quant.errors import ConfigError
    from fastvideo_quant.testing.conformance.golden import GoldenTests

    at6 = next(g for g in library() if g.name == "bitsandbytes LLM.int8() (row format)")

    class Library(GoldenTests):
        pass

    class Own(GoldenTests):
        golden_checkpoints = (at6,)
        golden_library = False

    triton = Subject("int8", config={"fvq_backend": "triton"})
    assert [g.name for g in Library()._goldens(triton)[0]] == [
        "bitsandbytes LLM.int8(), llm_int8_threshold 0 (row format)"]  # (the 6.0 one left out, with a warning)
    assert Own()._goldens(triton)[0] == [at6]
    init = Int8Config.__init__

    def refusing(self, threshold=0.0, skip_modules=None, serialized=False, backend="auto"):
        if serialized and backend != "auto":  # the bug: pre-quantized checkpoints read by the default backend only
            raise ConfigError("int8: a pre-quantized checkpoint runs on the default backend only")
        init(self, threshold, skip_modules, serialized, backend)

    monkeypatch.setattr(Int8Config, "__init__", refusing)
    with pytest.raises(ConformanceFailure) as info:
        Library()._goldens(triton)
    msg = str(info.value)
    assert msg.startswith("[contract: golden: load-time options] method 'int8'"), msg
    assert "leave out every golden checkpoint 'int8' claims: golden checkpoint 'bitsandbytes LLM.int8() (row " \
           "format)'" in msg and "llm_int8_threshold 0" in msg and "set golden_library = False" in msg, msg


def test_a_plugin_hook_raising_on_a_library_section_is_a_failure_not_a_golden_left_out(monkeypatch) -> None:
    from fvq_int8.config import Int8Config

    from fastvideo_quant.testing.conformance.golden import goldens_for

    def hook(cls, section, user_quant):
        return section["config_groups"]  # the bug: a KeyError for every section without config groups

    monkeypatch.setattr(Int8Config, "override_quantization_method", classmethod(hook))
    with pytest.raises(ConformanceFailure, match=r"(?s)\[contract: golden: format claimed\].*raised KeyError: "
                       r"'config_groups'.*fix the override_quantization_method that raised"):
        goldens_for(Subject("awq"), (), True)


def test_a_golden_of_sizes_the_method_cannot_build_is_a_golden_loading_failure() -> None:
    golden = _awq_golden()
    narrow = GoldenCheckpoint("in 200", golden.quantization_config, tuple(
        GoldenModule(m.tensors, torch.zeros(64, 200)) for m in golden.modules))
    with pytest.raises(ConformanceFailure, match=r"\[contract: golden: loading\].*the method cannot build this layer "
                       r"of the golden's sizes \(out=64, in=200\)"):
        check_golden(Subject("awq"), narrow, "replicated", own=True)


def test_on_a_gpu_goldens_load_in_the_main_dtype_first_then_every_other_runnable_one(monkeypatch) -> None:
    """A loading or weight failure is reported in the dtype that judges exact values (float32), as on CPU: the third-
    party golden tests' expected messages name it, and the H100 run (at 38a79f0) reported bfloat16 first."""
    from fastvideo_quant.testing.conformance.golden import golden_dtypes

    subject = Subject("fp8")
    assert golden_dtypes(subject) == (torch.float32,)  # (CPU: the main dtype alone)
    monkeypatch.setattr(Subject, "device", lambda self: torch.device("cuda"))  # (only what golden_dtypes reads)
    dtypes = golden_dtypes(subject)
    assert dtypes[0] == subject.main_dtype() == torch.float32
    assert sorted(map(str, dtypes)) == sorted(map(str, subject.runnable_act_dtypes())) and len(dtypes) == 3


def test_apply_on_a_golden_is_judged_against_the_loaded_weight_not_the_golden_one() -> None:
    """A golden whose reference weights a reader meets within its weight bound (4e-3) but not exactly: apply is judged,
    as everywhere in the suite, against x @ dequantize_weight.T, so a float32 bound of 1e-5 does not fail a weight off by
    1e-4 (it did when apply was judged against the golden weight)."""
    golden = _awq_golden()
    gen = torch.Generator().manual_seed(7)
    near = dataclasses.replace(golden, name="awq, reference off by 1e-4", modules=tuple(
        GoldenModule(m.tensors, m.weight * (1 + 1e-4 * torch.randn(m.weight.shape, generator=gen)), m.bias)
        for m in golden.modules))
    assert Subject("awq").tolerance().for_dtype(torch.float32).max_rel_error == 1e-5
    for kind in ("column", "qkv", "row"):
        check_golden(Subject("awq"), near, kind, own=True)


def test_one_part_of_a_fused_layer_off_is_caught_though_the_whole_is_within_the_bound() -> None:
    """The v part 0.6% off (its reference weights perturbed): the whole QKV weight is 0.35% off, within 0.004, but the
    part is not, and the failure lists each part."""
    golden = _awq_golden()
    gen = torch.Generator().manual_seed(11)
    mods = list(golden.modules)
    mods[2] = GoldenModule(mods[2].tensors, mods[2].weight * (1 + 0.006 * torch.randn(mods[2].weight.shape,
                                                                                      generator=gen)), mods[2].bias)
    off = dataclasses.replace(golden, name="awq, v off", modules=tuple(mods))
    with pytest.raises(ConformanceFailure) as info:
        check_golden(Subject("awq"), off, "qkv", own=True)
    msg = str(info.value)
    assert "[contract: golden: weight]" in msg and "bound 0.004 on each part and the whole" in msg, msg
    whole = float(msg.split("||golden weight|| = ")[1].split(" ")[0])
    assert whole < 0.004 and "(per part: 'q': 0, 'k': 0, 'v': 0.00598)" in msg, msg
    check_golden(Subject("awq"), off, "column", own=True)  # (a column layer holds the first module only: exact)
