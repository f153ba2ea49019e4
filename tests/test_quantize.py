"""`fvq quantize`: selection rule, sharded streaming output, refusal and atomicity, config round trip, loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import toy_method
from demo_checkpoints import tensors_of
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.checkpoint_writer import parse_size
from fastvideo_quant.cli import quantize as cli_quantize
from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import QuantizeError, SelectionRule, quantize_checkpoint

CFG = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=2,
                 in_channels=32, num_tokens=16)


@pytest.fixture(autouse=True)
def toy_plugin():
    plugins.register_plugin(toy_method.ToyPlugin(), name="toy")
    toy_method.ToyConfig.calls.clear()
    yield
    plugins.unregister_plugin("toy")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """The demo checkpoint in 3 shards with a Hugging Face index, written without our writer."""
    d = tmp_path / "src"
    d.mkdir()
    sd = random_state_dict(CFG, seed=0)
    names = sorted(sd)
    weight_map = {}
    for i in range(3):
        part = names[i::3]
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: sd[n] for n in part}, str(d / fname))
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    (d / "README.md").write_text("demo\n")
    return d


def run_model(ckpt: Path, dtype=torch.float32) -> torch.Tensor:
    qc = resolve_quant_config(checkpoint=ckpt)
    model = DemoDiT(CFG, dtype, qc)
    load_checkpoint(model, ckpt)
    x = torch.randn(1, CFG.num_tokens, CFG.in_channels, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(x.to(dtype)).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_rule_is_explicit():
    rule = SelectionRule(skip=("mlp",), include=("patch_embed",))
    assert rule.decide("blocks.0.attn.q_proj.weight", (8, 8), torch.bfloat16)[0]
    assert not rule.decide("blocks.0.attn.q_proj.bias", (8,), torch.bfloat16)[0]
    assert not rule.decide("blocks.0.norm1.weight", (8,), torch.bfloat16)[0]
    assert not rule.decide("embed_tokens.weight", (8, 8), torch.bfloat16)[0]
    assert not rule.decide("conv.weight", (8, 8, 3, 3), torch.bfloat16)[0]
    assert not rule.decide("x.weight", (8, 8), torch.int8)[0]
    assert not rule.decide("blocks.0.mlp.up_proj.weight", (8, 8), torch.bfloat16)[0]
    assert rule.decide("patch_embed.weight", (8, 8), torch.bfloat16)[0]  # included despite "embed"
    with pytest.raises(ConfigError, match="--skip .* and --include"):
        SelectionRule(skip=("mlp",), include=("up_proj",)).decide("mlp.up_proj.weight", (8, 8), torch.float32)


def test_sharded_input_to_sharded_output_loads_and_matches(src: Path, tmp_path: Path):
    dst = tmp_path / "q"
    report = quantize_checkpoint(src, dst, "toy-int8", max_shard_bytes=40_000)
    files = sorted(p.name for p in dst.iterdir())
    assert "model.safetensors.index.json" in files and "README.md" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2
    for f in shards:  # bounded: a shard exceeds the limit only when one tensor alone does
        with safe_open(str(dst / f), framework="pt") as h:
            sizes = [h.get_tensor(n).numel() * h.get_tensor(n).element_size() for n in h.keys()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1
    out = tensors_of(dst)
    assert out["blocks.0.attn.q_proj.weight"].dtype == torch.int8
    assert out["blocks.0.attn.q_proj.weight_scale"].dtype == torch.float32
    assert out["patch_embed.weight"].dtype == torch.bfloat16  # "embed": default rule
    assert out["blocks.0.norm1.weight"].dtype == torch.bfloat16
    assert report.tensors_quantized == 7 * CFG.num_layers + 1
    assert report.quantized_bytes_out < 0.6 * report.quantized_bytes_in
    section = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert section == {"quant_method": "toy-int8", "skip_modules": ["patch_embed"]}
    ref, got = run_model(src), run_model(dst)
    assert 0 < rel(got, ref) < 2e-2


def test_nonempty_destination_refused_without_force(src: Path, tmp_path: Path):
    dst = tmp_path / "q"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty; pass --force"):
        quantize_checkpoint(src, dst, "toy-int8")
    assert (dst / "keep.txt").read_text() == "x"
    quantize_checkpoint(src, dst, "toy-int8", force=True)
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()
    (tmp_path / "empty").mkdir()
    quantize_checkpoint(src, tmp_path / "empty", "toy-int8")  # an empty directory is fine


def test_a_progress_that_is_not_callable_is_refused_before_anything_is_written(src: Path, tmp_path: Path):
    """progress=False ('no bar') was TypeError: 'bool' object is not callable after the first tensor."""
    with pytest.raises(TypeError, match=r"progress must be None or a callable progress\(done, total, tensor_name\), "
                                        r"found bool False"):
        quantize_checkpoint(src, tmp_path / "q", "toy-int8", progress=False)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing_half_written(src: Path, tmp_path: Path, monkeypatch, exc):
    dst = tmp_path / "q"
    calls = []

    def progress(done, total, name):
        calls.append(name)
        if done == total // 2:
            raise exc

    with pytest.raises(type(exc)):
        quantize_checkpoint(src, dst, "toy-int8", max_shard_bytes=40_000, progress=progress)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temporary directory left
    # Replacing an existing checkpoint: a failure keeps the old one intact.
    quantize_checkpoint(src, dst, "toy-int8", skip=["mlp"])
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    with pytest.raises(type(exc)):
        quantize_checkpoint(src, dst, "toy-int8", force=True, progress=progress)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "src"]


def test_quantize_error_names_tensor_and_cleans_up(src: Path, tmp_path: Path, monkeypatch):
    def boom(self, weight, *, prefix="", activations=None):
        raise ValueError("unsupported shape")

    monkeypatch.setattr(toy_method.ToyConfig, "quantize_weight", boom)
    with pytest.raises(QuantizeError, match=r"could not quantize tensor '[a-z0-9_.]+_proj\.weight'.*--skip"):
        quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_skip_patterns_recorded_and_honoured_on_load(src: Path, tmp_path: Path):
    dst = tmp_path / "q"
    report = quantize_checkpoint(src, dst, "toy-int8", skip=["mlp", "blocks.1.attn"])
    section = json.loads((dst / "config.json").read_text())["quantization_config"]
    # Full module names, not the patterns typed (other readers match them exactly or by substring).
    mlp = [f"blocks.{i}.mlp.{m}" for i in range(CFG.num_layers) for m in ("gate_up_proj", "gate_proj", "up_proj",
                                                                           "down_proj")]
    attn = [f"blocks.1.attn.{m}" for m in ("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj")]
    assert sorted(section["skip_modules"]) == sorted([*mlp, *attn, "patch_embed"])
    assert report.modules_to_not_convert == section["skip_modules"]
    out = tensors_of(dst)
    assert out["blocks.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert out["blocks.1.attn.o_proj.weight"].dtype == torch.bfloat16
    assert out["blocks.0.attn.o_proj.weight"].dtype == torch.int8
    qc = resolve_quant_config(checkpoint=dst)
    model = DemoDiT(CFG, torch.float32, qc)
    assert type(model.blocks[0].mlp.gate_up_proj.quant_method).__name__ == "UnquantizedLinearMethod"
    assert type(model.blocks[0].attn.qkv_proj.quant_method).__name__ == "ToyLinearMethod"
    assert rel(run_model(dst), run_model(src)) < 2e-2


def test_include_overrides_default_rule(src: Path, tmp_path: Path):
    quantize_checkpoint(src, tmp_path / "q", "toy-int8", include=["patch_embed"])
    assert tensors_of(tmp_path / "q")["patch_embed.weight"].dtype == torch.int8
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["skip_modules"] == []


def test_skipping_part_of_a_fused_module_is_refused(src: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"fused into 'qkv_proj'.*skip or include all of them"):
        quantize_checkpoint(src, tmp_path / "q", "toy-int8", skip=["q_proj"])
    assert not (tmp_path / "q").exists()


def test_plugin_that_drops_the_skip_list_is_refused(src: Path, tmp_path: Path):
    with pytest.raises(QuantizeError, match=r"does not round-trip modules_to_not_convert.*patch_embed"):
        quantize_checkpoint(src, tmp_path / "q", "toy-noskip")


def test_calibration_activations_passed_per_module(src: Path, tmp_path: Path):
    sd = random_state_dict(CFG)
    acts = {n[: -len(".weight")]: torch.randn(2, 5, t.shape[1]) for n, t in sd.items()
            if t.dim() == 2 and "embed" not in n}
    save_file(acts, str(tmp_path / "calib.safetensors"))
    quantize_checkpoint(src, tmp_path / "q", "toy-int8", calibration=tmp_path / "calib.safetensors")
    assert sorted(toy_method.ToyConfig.calls) == sorted((m, (10, a.shape[-1])) for m, a in acts.items())
    del acts["blocks.1.mlp.up_proj"]
    save_file(acts, str(tmp_path / "calib2.safetensors"))
    with pytest.raises(QuantizeError, match=r"no activations for 1 quantized module.*blocks\.1\.mlp\.up_proj"):
        quantize_checkpoint(src, tmp_path / "q2", "toy-int8", calibration=tmp_path / "calib2.safetensors")


def test_calibration_keyed_by_fused_layer_names_serves_their_parts(src: Path, tmp_path: Path):
    """Forward pre-hooks on a model built from our layers record qkv_proj / gate_up_proj: each part (q/k/v_proj,
    gate/up_proj) takes that input, so it is read for them; a part with neither key is still refused by name."""
    from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING

    sd = random_state_dict(CFG)
    part_of = {p: f for f, parts in DEFAULT_PACKED_MODULES_MAPPING.items() for p in parts}
    acts, want = {}, {}
    for n, t in sd.items():
        if t.dim() != 2 or "embed" in n:
            continue
        module = n[: -len(".weight")]
        parent, _, leaf = module.rpartition(".")
        key = f"{parent}.{part_of[leaf]}" if leaf in part_of else module
        acts.setdefault(key, torch.randn(2, 5, t.shape[1]))
        want[module] = (10, t.shape[1])
    assert any(k.endswith("qkv_proj") for k in acts) and any(k.endswith("gate_up_proj") for k in acts)
    save_file(acts, str(tmp_path / "calib.safetensors"))
    quantize_checkpoint(src, tmp_path / "q", "toy-int8", calibration=tmp_path / "calib.safetensors")
    assert sorted(toy_method.ToyConfig.calls) == sorted(want.items())
    del acts["blocks.1.mlp.gate_up_proj"]
    save_file(acts, str(tmp_path / "calib2.safetensors"))
    with pytest.raises(QuantizeError, match=r"no activations for 2 quantized module.*'blocks\.1\.mlp\.gate_proj', "
                                            r"'blocks\.1\.mlp\.up_proj'.*a fused layer's name \(qkv_proj, "
                                            r"gate_up_proj\) serves its parts"):
        quantize_checkpoint(src, tmp_path / "q2", "toy-int8", calibration=tmp_path / "calib2.safetensors")


def test_already_quantized_source_and_same_destination_refused(src: Path, tmp_path: Path):
    with pytest.raises(QuantizeError, match="is the source checkpoint"):
        quantize_checkpoint(src, src, "toy-int8", force=True)
    quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    with pytest.raises(QuantizeError, match="already has a 'quantization_config'"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "q2", "toy-int8")


def test_source_quantized_per_a_method_file_refused(src: Path, tmp_path: Path):
    """An AutoAWQ checkpoint says its method in quant_config.json, not config.json: still refused, naming the file."""
    (src / "quant_config.json").write_text(json.dumps({"w_bit": 4, "q_group_size": 128, "zero_point": True,
                                                      "version": "GEMM"}))
    with pytest.raises(QuantizeError, match=r"already quantized \(.*quant_config\.json.* says 'awq'"):
        quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("where", ["parent", "grandparent", "child"])
def test_destination_containing_or_inside_the_source_refused(src: Path, where: str):
    dst = {"parent": src.parent, "grandparent": src.parent.parent, "child": src / "quantized"}[where]
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(QuantizeError, match="contains the source|inside the source"):
        quantize_checkpoint(src, dst, "toy-int8", force=True)
    assert sorted(p.name for p in src.iterdir()) == before, "the source checkpoint was touched"
    assert not (src / "quantized").exists()


def test_null_quantization_config_means_unquantized(src: Path, tmp_path: Path):
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "quantization_config": None}))
    report = quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    written = json.loads((tmp_path / "q" / "config.json").read_text())
    assert written["quantization_config"] == report.quantization_config is not None
    (src / "config.json").write_text(json.dumps({**cfg, "quantization_config": "int8"}))
    with pytest.raises(ConfigError, match=r"config\.json.*'quantization_config' must be an object, found str"):
        quantize_checkpoint(src, tmp_path / "q2", "toy-int8")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size("100") == 100
    with pytest.raises(ValueError, match="not understood"):
        parse_size("5 parsecs")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fvq")
    cli_quantize.add_parser(parser.add_subparsers())
    return cli_quantize.run(parser.parse_args(["quantize", *argv]))


def test_cli_options_skip_and_refusal(src: Path, tmp_path: Path, capsys):
    dst = str(tmp_path / "q")
    assert cli(str(src), "--method", "toy-int8", "--out", dst, "--skip", "mlp", "--option",
               'skip_modules=["blocks.0.attn.o_proj", "proj_out"]', "--no-progress") == 0
    out = capsys.readouterr().out
    assert "tensors quantized" in out and "->" in out
    # --option reaches from_config (a JSON value); a skip list given there joins --skip and is honoured.
    mlp = [f"blocks.{i}.mlp.{m}" for i in range(CFG.num_layers) for m in ("gate_up_proj", "gate_proj", "up_proj",
                                                                           "down_proj")]
    assert sorted(json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["skip_modules"]) == (
        sorted([*mlp, "blocks.0.attn.o_proj", "proj_out", "patch_embed"]))
    assert tensors_of(tmp_path / "q")["proj_out.weight"].dtype == torch.bfloat16
    assert cli(str(src), "--method", "toy-int8", "--out", dst) == 1
    assert "not empty; pass --force" in capsys.readouterr().err
    assert cli(str(src), "--method", "nope", "--out", str(tmp_path / "z")) == 1
    assert "unknown quantization method 'nope'" in capsys.readouterr().err
    assert cli_quantize.parse_option("group_size=128") == ("group_size", 128)
    assert cli_quantize.parse_option("activation_scheme=dynamic") == ("activation_scheme", "dynamic")


def test_skipping_a_fused_module_by_its_fused_name_loads_it_unquantized(src: Path, tmp_path: Path):
    dst = tmp_path / "q"
    report = quantize_checkpoint(src, dst, "toy-int8", skip=["blocks.0.attn.qkv_proj"])
    assert sorted(report.modules_to_not_convert) == ["blocks.0.attn.k_proj", "blocks.0.attn.q_proj",
                                                     "blocks.0.attn.qkv_proj", "blocks.0.attn.v_proj", "patch_embed"]
    out = tensors_of(dst)
    assert all(out[f"blocks.0.attn.{p}.weight"].dtype == torch.bfloat16 for p in ("q_proj", "k_proj", "v_proj"))
    assert out["blocks.1.attn.q_proj.weight"].dtype == torch.int8
    model = DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=dst))
    assert type(model.blocks[0].attn.qkv_proj.quant_method).__name__ == "UnquantizedLinearMethod"
    assert type(model.blocks[1].attn.qkv_proj.quant_method).__name__ == "ToyLinearMethod"
    assert rel(run_model(dst), run_model(src)) < 2e-2


def test_include_by_fused_name_and_rule_matches_parts():
    rule = SelectionRule(skip=("qkv_proj",), include=("blocks.0.mlp.gate_up_proj",))
    assert rule.decide("blocks.1.attn.k_proj.weight", (8, 8), torch.float32) == (False, "--skip qkv_proj")
    assert rule.decide("blocks.0.mlp.up_proj.weight", (8, 8), torch.float32)[0] is True
    assert rule.decide("blocks.0.attn.o_proj.weight", (8, 8), torch.float32)[0] is True
