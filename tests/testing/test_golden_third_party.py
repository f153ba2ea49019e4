"""Golden checkpoints of a third-party plugin's own format: the toyq plugin (``toyq_plugin``) against tensors written here
from its format definition, with no plugin code.

A convention wrong the same way in toyq's writer and reader (:data:`toyq_plugin.BUG`) passes the checks built on its
own ``quantize_weight`` and fails the golden, naming what is wrong; a golden's author's mistakes (reference weights
transposed, tensor names, a misspelled quant_method, one module for a fused layer) are named as such. The checks are
called directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.quantization.selection import resolve_quant_config
from fastvideo_quant.testing.conformance import (
    LAYER_KINDS,
    ConformanceFailure,
    GoldenCheckpoint,
    GoldenModule,
    GoldenTests,
    Subject,
)
from fastvideo_quant.testing.conformance.golden import (
    check_golden,
    check_golden_tp,
    golden_layer_checkpoint,
    golden_subject,
    load_golden,
    tp_shape_problem,
)
from fastvideo_quant.testing.conformance.loading import check_weight_fidelity
from fastvideo_quant.testing.conformance.report import rel_error

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
import toyq_plugin  # noqa: E402
from broken_plugins import failure  # noqa: E402

OUT, IN = 64, 256
SOURCE = "toyq format definition (written in test_golden_third_party.py)"
#: The start of the first line of a failure of the golden 'toyq' in a replicated layer.
WHERE = "method 'toyq', ReplicatedLinear(in=256, out=64, tp=1, dtype=float32) loading golden checkpoint 'toyq'"


@pytest.fixture(scope="module", autouse=True)
def toyq():
    with broken_plugins.registered({"toyq": toyq_plugin}):
        yield


def _word(nibbles: list[int]) -> int:
    """The int32 holding ``nibbles[i]`` in bits 4i..4i+3."""
    w = sum(v << (4 * i) for i, v in enumerate(nibbles))
    return w - (1 << 32) if w >= 1 << 31 else w


def _module(gen: torch.Generator) -> GoldenModule:
    """One module as the format defines it: input 8j+i in nibble i of word j, nibble = code + 8, W = code * scale."""
    codes = torch.randint(-8, 8, (OUT, IN), generator=gen).tolist()
    scales = (0.005 + 0.015 * torch.rand(OUT, generator=gen, dtype=torch.float64)).half()
    qweight = torch.tensor([[_word([row[8 * j + i] + 8 for i in range(8)]) for j in range(IN // 8)] for row in codes],
                           dtype=torch.int32)
    weight = torch.tensor([[c * float(scales[r]) for c in row] for r, row in enumerate(codes)], dtype=torch.float64)
    return GoldenModule({"qweight": qweight, "scales": scales}, weight.float())


def _first_line(golden: GoldenCheckpoint, kind: str = "replicated") -> str:
    """The first line of the failure ``check_golden`` of toyq must raise on ``golden`` (its contract, where, problem)."""
    return failure(lambda: check_golden(Subject("toyq"), golden, kind, own=True)).splitlines()[0]


def _golden() -> GoldenCheckpoint:
    """Three modules of different content (a fused layer's parts land apart), 64 x 256."""
    gen = torch.Generator().manual_seed(1234)
    return GoldenCheckpoint("toyq", {"quant_method": "toyq", "bits": 4}, tuple(_module(gen) for _ in range(3)),
                            source=SOURCE)


@pytest.fixture(scope="module")
def golden() -> GoldenCheckpoint:
    return _golden()


def test_a_suite_class_gives_its_own_goldens_and_may_leave_the_library_out(golden) -> None:
    """The class attributes a plugin's tests set (the pytest plugin builds a suite class's method at collection, before
    this module's registration of toyq, so the class is made here)."""
    own = type("OwnGoldens", (GoldenTests,), {"method": "toyq", "golden_checkpoints": (golden,), "golden_library": False})
    assert own()._goldens(Subject("toyq"))[0] == [golden]
    awq = type("AwqGoldens", (GoldenTests,), {"method": "awq", "golden_checkpoints": (golden,)})
    assert [g.name for g in awq()._goldens(Subject("awq"))[0]][:2] == ["toyq", "AutoAWQ GEMM int4, group 32"]
    none = type("NoGoldens", (GoldenTests,), {"method": "awq", "golden_library": False})
    with pytest.raises(pytest.skip.Exception, match="sets golden_library = False and gives no golden_checkpoints"):
        none()._goldens(Subject("awq"))


def test_the_correct_plugin_reads_the_golden_at_every_layer_class_and_tp2(golden) -> None:
    subject = Subject("toyq")
    for kind in LAYER_KINDS:
        check_golden(subject, golden, kind, own=True)
    check_golden_tp(subject, [golden], "qkv")  # (the one spawn: 2 ranks)


@pytest.mark.parametrize(("bug", "contract", "diagnosis"), [
    ("a", "golden: weight", "its input columns are the golden's in another order"),
    ("b", "golden: weight", "the loaded weight is the golden weight times a gain (least squares) of"),
    ("c", "golden: weight", "one value stands for each of the golden row's values wherever it occurs, mostly values the "
                            "golden row holds too (row 0, golden -> loaded: -0.1132 -> 0, "),
    ("d", "golden: loading", "the golden's tensors (each module: {'qweight': [64, 32], 'scales': [64]}) do not load"),
], ids=["a-nibble-order", "b-reciprocal-scale", "c-twos-complement", "d-output-packing"])
def test_a_bug_in_writer_and_reader_passes_own_checkpoints_and_fails_the_golden(monkeypatch, golden, bug: str,
                                                                                contract: str, diagnosis: str) -> None:
    monkeypatch.setattr(toyq_plugin, "BUG", bug)
    subject = Subject("toyq")
    check_weight_fidelity(subject, "qkv")  # the plugin's own checkpoints load "right"
    with pytest.raises(ConformanceFailure) as caught:
        check_golden(Subject("toyq"), golden, "replicated", own=True)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"[contract: {contract}] {WHERE}: "), first
    assert diagnosis in first, first
    assert "look transposed" not in first, first
    assert f"(the format as defined by: {SOURCE})" in caught.value.fix, caught.value.fix  # the source, in the fix


def test_bug_a_names_the_columns_moved(monkeypatch, golden) -> None:
    monkeypatch.setattr(toyq_plugin, "BUG", "a")
    first = _first_line(golden)
    assert first.startswith(f"[contract: golden: weight] {WHERE}"), first
    assert "(loaded <- golden, matched by direction, cosine >= 1.00): 0 <- 7, 1 <- 6, 2 <- 5, 3 <- 4" in first, first


def test_reference_weights_transposed_are_named(golden) -> None:
    transposed = GoldenCheckpoint("transposed", golden.quantization_config, tuple(
        GoldenModule(m.tensors, m.weight.T.contiguous()) for m in golden.modules), source=SOURCE)
    first = _first_line(transposed)
    assert first.startswith("[contract: golden: loading] method 'toyq', ReplicatedLinear(in=64, out=256, tp=1, "
                            "dtype=float32) loading "
                            "golden checkpoint 'transposed'"), first
    assert "the golden's tensors (each module: {'qweight': [64, 32], 'scales': [64]}) do not load" in first, first
    assert ("they do load into a layer of in=256, out=64: the golden's reference weights look transposed (found "
            "[256, 64]; GoldenModule.weight and reference.safetensors hold [out, in])") in first, first


def test_tensor_names_the_format_does_not_use_are_named(golden) -> None:
    renamed = GoldenCheckpoint("names", golden.quantization_config, tuple(
        GoldenModule({"weight_packed": m.tensors["qweight"], "weight_scale": m.tensors["scales"]}, m.weight)
        for m in golden.modules), source=SOURCE)
    first = _first_line(renamed)
    assert first.startswith("[contract: golden: tensor names] method 'toyq', ReplicatedLinear(in=256, out=64, tp=1, "
                            "dtype=float32) "
                            "loading golden checkpoint 'names'"), first
    assert ("the golden stores ['weight_packed', 'weight_scale']; the layer ToyqLinearMethod built has parameters "
            "['qweight', 'scales']; no parameter is named ['weight_packed', 'weight_scale']; nothing loads "
            "['qweight', 'scales']") in first, first


def test_a_bias_in_model_safetensors_loads_as_the_bias(tmp_path, golden) -> None:
    gen = torch.Generator().manual_seed(5)
    stored, reference, biases = {}, {}, []
    for i, m in enumerate(golden.modules):
        biases.append(torch.randn(OUT, generator=gen).half())
        stored.update({f"model.layers.{i}.proj.{s}": t for s, t in m.tensors.items()})
        stored[f"model.layers.{i}.proj.bias"] = biases[-1]  # (beside its tensors, as checkpoints store it)
        reference[f"model.layers.{i}.proj.weight"] = m.weight
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "toyq", "bits": 4}}))
    save_file(stored, tmp_path / "model.safetensors")
    save_file(reference, tmp_path / "reference.safetensors")
    loaded = GoldenCheckpoint.from_folder(tmp_path, name="biased", source=SOURCE)
    assert [set(m.tensors) for m in loaded.modules] == [{"qweight", "scales"}] * 3
    assert all(torch.equal(m.bias, b) for m, b in zip(loaded.modules, biases, strict=True))
    subject = Subject("toyq")
    check_golden(subject, loaded, "replicated", own=True)

    gs = golden_subject(subject, loaded)
    config = resolve_quant_config(hf_config={"quantization_config": dict(loaded.quantization_config)})
    layer = load_golden(gs, loaded, "replicated", golden_layer_checkpoint(gs, loaded, "replicated"), config, "biased")
    x = torch.randn(8, IN, generator=gen)
    out = layer(x.to(device=gs.device(), dtype=gs.main_dtype()))[0].float().cpu()  # (the layer is on the GPU there)
    unbiased = x @ golden.modules[0].weight.T
    assert rel_error(out, unbiased + biases[0].float()) < 2e-2
    assert rel_error(out, unbiased) > 0.3  # (the bias is a good part of the output)


def test_a_golden_of_one_module_warns_for_the_qkv_layer(golden) -> None:
    one = GoldenCheckpoint("one", golden.quantization_config, golden.modules[:1], source=SOURCE)
    with pytest.warns(UserWarning, match=r"golden checkpoint 'one' has 1 module, so the qkv layer's 3 parts repeat it: "
                                         r"a part loaded into another part's rows is not seen"):
        check_golden(Subject("toyq"), one, "qkv", own=True)


def test_a_misspelled_quant_method_says_no_loaded_plugin_registers_it(golden) -> None:
    misspelled = GoldenCheckpoint("misspelled", {"quant_method": "toy_q", "bits": 4}, golden.modules, source=SOURCE)
    first = _first_line(misspelled)
    assert first.startswith("[contract: golden: format claimed] method 'toyq', ReplicatedLinear(in=256, out=64, tp=1) "
                            "loading golden checkpoint 'misspelled'"), first
    assert ("a load of a checkpoint whose quantization_config is {'quant_method': 'toy_q', 'bits': 4} must select "
            "'toyq'") in first, first
    assert "but it selects method 'toy_q', which no loaded plugin registers" in first, first


def test_at_tp4_the_qkv_golden_takes_heads_divisible_by_4(golden) -> None:
    subject = Subject("toyq", tp_size=4)
    gs = golden_subject(subject, golden)
    assert (gs.num_heads, gs.num_kv_heads, gs.head_size) == (4, 4, 16)
    assert [size for _, size in gs.part_sizes("qkv")] == [OUT] * 3
    assert tp_shape_problem(subject, golden) is None


def test_apply_returning_the_wrong_shape_is_a_contract_failure_not_a_bare_error(monkeypatch, golden) -> None:
    original = toyq_plugin.ToyqLinearMethod.apply

    def short(self, layer, x, bias=None):  # the bug: the last output column dropped
        return original(self, layer, x, bias)[..., :-1]

    monkeypatch.setattr(toyq_plugin.ToyqLinearMethod, "apply", short)
    first = _first_line(golden)
    assert first == f"[contract: apply: output shape] {WHERE}: input [8, 256] gave [8, 63], expected [8, 64]", first
