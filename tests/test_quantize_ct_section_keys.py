"""``fvq quantize`` given the ``quantization_config`` of a real llm-compressor checkpoint, pasted whole: the keys that
describe the checkpoint it came from are accepted and not written; the ones asking for work the writer does not do are
refused when set (``fastvideo_quant.quantize.section_keys``).

(Was: every such section was refused at ``quantization_status``, then ``global_compression_ratio``, ``version`` and
``kv_cache_scheme``, as any key ``from_config`` does not read; a set ``transform_config`` or ``sparsity_config`` was
accepted and left out of the config written, and a group's ``output_activations`` too.)

The sections are what compressed-tensors' ``QuantizationConfig.model_dump`` writes into config.json for
llm-compressor's presets (``quantization/quant_scheme.py``), every field serialized; ``ignore`` names this demo
model's output layer, where an LLM's names ``lm_head``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.cli import main
from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

CFG = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=2, in_channels=32,
                 num_tokens=16)
#: The bookkeeping keys of a section written by compressed-tensors 0.12 (none set), and by 0.6 (a ratio, no more).
BOOKKEEPING = {"quantization_status": "compressed", "global_compression_ratio": None, "kv_cache_scheme": None,
               "sparsity_config": {}, "transform_config": {}, "version": "0.12.2"}
BOOKKEEPING_0_6 = {"quantization_status": "compressed", "global_compression_ratio": 1.2399, "kv_cache_scheme": None}


def _args(num_bits: int, kind: str, strategy: str, dynamic: bool = False, **more) -> dict:
    """A ``QuantizationArgs`` as ``model_dump`` writes it."""
    return {"num_bits": num_bits, "type": kind, "symmetric": True, "group_size": None, "strategy": strategy,
            "block_structure": None, "dynamic": dynamic, "actorder": None, "scale_dtype": None, "zp_dtype": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {}, **more}


def _section(fmt: str, weights: dict, activations: dict | None, bookkeeping: dict = BOOKKEEPING) -> dict:
    group = {"targets": ["Linear"], "weights": weights, "input_activations": activations, "output_activations": None,
             "format": fmt}
    return {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {"group_0": group},
            "ignore": ["proj_out"], **bookkeeping}


FP8 = _section("float-quantized", _args(8, "float", "tensor"), _args(8, "float", "tensor"))
FP8_DYNAMIC = _section("float-quantized", _args(8, "float", "channel"), _args(8, "float", "token", dynamic=True))
FP8_BLOCK = _section("float-quantized", _args(8, "float", "block", block_structure=[128, 128]),
                     _args(8, "float", "group", dynamic=True, group_size=128))
W4A16 = _section("pack-quantized", _args(4, "int", "group", group_size=128), None)
FP8_DYNAMIC_0_6 = _section("float-quantized", _args(8, "float", "channel"), _args(8, "float", "token", dynamic=True),
                           BOOKKEEPING_0_6)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    state = random_state_dict(CFG, seed=0)
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    # (FP8's static activation scales are calibrated: an input for every linear module)
    acts = {n.removesuffix(".weight"): torch.randn(8, t.shape[1]) for n, t in state.items()
            if n.endswith(".weight") and t.dim() == 2 and "embed" not in n}
    save_file(acts, str(tmp_path / "calib.safetensors"))
    return d


def _written(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())["quantization_config"]


def _without(section: dict, keys) -> dict:
    return {k: v for k, v in section.items() if k not in keys}


@pytest.mark.parametrize(("section", "method", "static"), [
    (FP8, "fp8", True), (FP8_DYNAMIC, "fp8", False), (FP8_BLOCK, "fp8", False), (W4A16, "awq", False),
    (FP8_DYNAMIC_0_6, "fp8", False),
], ids=["FP8", "FP8_DYNAMIC", "FP8_BLOCK", "W4A16", "FP8_DYNAMIC-compressed-tensors-0.6"])
def test_a_pasted_llm_compressor_section_is_written_as_without_its_bookkeeping_keys(src, tmp_path, section, method,
                                                                                    static):
    """The checkpoint written from the pasted section is the one written from the section without those keys (same
    config, same tensors), and it loads."""
    calibration = tmp_path / "calib.safetensors" if static else None
    quantize_checkpoint(src, tmp_path / "pasted", method, options=section, calibration=calibration)
    quantize_checkpoint(src, tmp_path / "bare", method, options=_without(section, {*BOOKKEEPING, *BOOKKEEPING_0_6}),
                        calibration=calibration)
    written = _written(tmp_path / "pasted")
    assert written == _written(tmp_path / "bare")
    # (quantization_status: what the written tensors are, whatever the section said; the others are left out)
    assert written["quantization_status"] == "compressed"
    assert not set(written) & ({*BOOKKEEPING, *BOOKKEEPING_0_6} - {"quantization_status"}), written
    assert (tmp_path / "pasted" / "model.safetensors").read_bytes() == (tmp_path / "bare" / "model.safetensors").read_bytes()
    model = DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=tmp_path / "pasted"))
    load_checkpoint(model, tmp_path / "pasted")
    assert type(model.blocks[0].attn.qkv_proj.quant_method).__name__ != "UnquantizedLinearMethod"


@pytest.mark.parametrize("status", ["initialized", "frozen", "compressed"])
def test_the_status_written_is_compressed_whatever_the_section_given_says(src, tmp_path, status):
    """The section written describes the checkpoint written, whose tensors are compressed: transformers sets up the
    compressed layers only for quantization_status "compressed" (a missing one reads as "initialized")."""
    quantize_checkpoint(src, tmp_path / "out", "fp8", options={**FP8_DYNAMIC, "quantization_status": status})
    assert _written(tmp_path / "out")["quantization_status"] == "compressed"


def test_the_bookkeeping_keys_are_accepted_in_a_compressed_tensors_section_only(src, tmp_path):
    """An fp8 config of fp8's own format has no such key: there it is still an option fp8 does not read."""
    quantize_checkpoint(src, tmp_path / "pasted", "fp8", options=FP8_DYNAMIC)
    with pytest.raises(ConfigError, match=r"option quantization_status=\"compressed\": Fp8Config.from_config of "
                                          r".* does not read 'quantization_status'"):
        quantize_checkpoint(src, tmp_path / "out", "fp8", options={"quantization_status": "compressed"})
    assert not (tmp_path / "out").exists()


KV_CACHE = _args(8, "float", "tensor")


@pytest.mark.parametrize(("key", "value", "asks"), [
    ("kv_cache_scheme", KV_CACHE, "asks for the attention's KV cache to be quantized"),
    ("sparsity_config", {"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": ["Linear"],
                         "ignore": [], "global_sparsity": 0.5}, "describes a pruned model"),
    # (dense: the weights stay as stored, but the structure recorded says they are pruned, which these are not)
    ("sparsity_config", {"format": "dense", "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": [],
                         "global_sparsity": 0.5}, "describes a pruned model"),
    # (online: applied to activations at run time; offline: fused into the weights, which the writer would not rotate)
    ("transform_config", {"config_groups": {"u": {"type": "hadamard", "apply": [{"targets": ["Linear"],
                                                                                 "location": "input"}]}}},
     "asks for rotations"),
    ("transform_config", {"config_groups": {"v": {"type": "hadamard", "apply": [{"targets": ["Linear"],
                                                                                 "location": "weight_input"}]}}},
     "asks for rotations"),
])
@pytest.mark.parametrize(("section", "method"), [(FP8_DYNAMIC, "fp8"), (W4A16, "awq")], ids=["fp8", "awq"])
def test_a_set_key_asking_for_work_the_writer_does_not_do_is_refused(src, tmp_path, section, method, key, value, asks):
    with pytest.raises(ConfigError) as err:
        quantize_checkpoint(src, tmp_path / "out", method, options={**section, key: value})
    msg = str(err.value)
    assert msg.startswith(f"compressed-tensors config key {key}={json.dumps(value)[:40]}"), msg
    assert f"for method {method!r} of plugin" in msg and f": it {asks}" in msg, msg
    assert "It would not be applied, and the quantization_config written would leave it out" in msg, msg
    assert msg.endswith("Drop the key or set it to null (null or {}, what llm-compressor writes for a checkpoint "
                        "without one, is accepted)"), msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("section", "method"), [(FP8_DYNAMIC, "fp8"), (W4A16, "awq")], ids=["fp8", "awq"])
def test_a_groups_output_activations_are_refused_for_either_method(src, tmp_path, section, method):
    """fp8's reader accepted them and wrote the section without; AWQ's refused them, but as a section of another
    method ('read by method fp8, not awq')."""
    groups = {"group_0": {**section["config_groups"]["group_0"], "output_activations": KV_CACHE}}
    with pytest.raises(ConfigError, match=r"^compressed-tensors config key config_groups.group_0.output_activations="
                                          r".*: it asks for the layers' outputs to be quantized"):
        quantize_checkpoint(src, tmp_path / "out", method, options={**section, "config_groups": groups})


def test_a_pasted_section_on_the_command_line(src, tmp_path, capsys):
    """--config takes the section as config.json holds it; a set kv_cache_scheme is refused with exit status 1."""
    dst = tmp_path / "out"
    assert main(["quantize", str(src), "--method", "fp8", "--config", json.dumps(FP8_DYNAMIC), "--out", str(dst),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert "proj_out" in _written(dst)["ignore"]
    bad = json.dumps({**FP8_DYNAMIC, "kv_cache_scheme": KV_CACHE})
    assert main(["quantize", str(src), "--method", "fp8", "--config", bad, "--out", str(tmp_path / "o2"),
                 "--no-progress"]) == 1
    assert "fvq quantize: error: compressed-tensors config key kv_cache_scheme=" in capsys.readouterr().err


@pytest.mark.parametrize(("section", "method", "part"), [
    (_section("float-quantized", _args(8, "float", "channel", observer="mse"), FP8_DYNAMIC["config_groups"]["group_0"]
              ["input_activations"]), "fp8", "weights"),
    (_section("float-quantized", _args(8, "float", "tensor"), _args(8, "float", "tensor", observer="mse")), "fp8",
     "input_activations"),
    (_section("pack-quantized", _args(4, "int", "group", group_size=128, observer="mse",
                                      observer_kwargs={"maxshrink": 0.2}), None), "awq", "weights"),
], ids=["fp8-weights-mse", "fp8-static-input-mse", "awq-mse-with-kwargs"])
def test_an_observer_other_than_min_max_is_a_note_and_is_not_written(src, tmp_path, section, method, part):
    """llm-compressor's mse observer searches a clipped range; fvq quantize computes min/max scales whatever the
    section names, so the summary says so (was: accepted silently). The tensors are the ones written without the
    observer, and the section written leaves it out."""
    calibration = tmp_path / "calib.safetensors" if part == "input_activations" else None
    report = quantize_checkpoint(src, tmp_path / "mse", method, options=section, calibration=calibration)
    note = "\n".join(report.notes)
    assert f"config_groups.group_0.{part} observer=\"mse\"" in note and "does not run observers" in note
    if method == "awq":
        assert 'observer_kwargs={"maxshrink": 0.2}' in note
    plain = json.loads(json.dumps(section).replace('"mse"', '"minmax"').replace('{"maxshrink": 0.2}', "{}"))
    report = quantize_checkpoint(src, tmp_path / "minmax", method, options=plain, calibration=calibration)
    assert not any("observer" in n for n in report.notes)
    assert (tmp_path / "mse" / "model.safetensors").read_bytes() == \
        (tmp_path / "minmax" / "model.safetensors").read_bytes()
    assert "observer" not in json.dumps(_written(tmp_path / "mse"))
