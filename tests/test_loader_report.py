"""The report of a checkpoint that does not fit the model: what explains the problems comes first and is not counted
among them, a long list is cut (the error's ``problems`` keeps every line), each line names a parameter once, and a
declaration that is not the tensors' own — another method's, or config groups whose targets name no layer — is said
in one line before the unexpected tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demo_checkpoints import tensors_of, write_demo_checkpoint
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, DemoDiT
from fastvideo_quant.errors import CheckpointError, ConfigError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.loader.load import SHOWN_PROBLEMS
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

CFG = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=2, in_channels=32,
                 num_tokens=16)
W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {"g0": {
    "targets": ["Linear"], "input_activations": None,
    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}}}


def _quantized(tmp_path: Path, method: str, options: dict | None = None, cfg: DemoConfig = CFG) -> Path:
    src = tmp_path / "src"
    if not src.exists():
        write_demo_checkpoint(src, cfg)
    dst = tmp_path / f"{method}-{len(list(tmp_path.iterdir()))}"
    quantize_checkpoint(src, dst, method, options=options)
    return dst


def _declared(ckpt: Path, section: dict) -> Path:
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "quantization_config": section}))
    return ckpt


def _refused(ckpt: Path, cfg: DemoConfig = CFG) -> CheckpointError:
    model = DemoDiT(cfg, torch.float32, resolve_quant_config(checkpoint=ckpt))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, ckpt)
    return err.value


def test_awq_tensors_under_an_fp8_declaration_are_said_to_be_awqs(tmp_path):
    """(Was: 34 lines of unexpected and missing tensors, nothing saying the tensors are AWQ's: the hint was left out
    whenever the checkpoint declares a method.)"""
    ckpt = _quantized(tmp_path, "awq", {"group_size": 64})
    fp8 = json.loads((_quantized(tmp_path, "fp8") / "config.json").read_text())["quantization_config"]
    error = _refused(_declared(ckpt, fp8))
    first = str(error).splitlines()[1].strip()
    assert first.startswith("modules 'blocks.0.attn.o_proj', 'blocks.0.attn.qkv_proj', 'blocks.0.mlp.down_proj' and "
                            "6 more are stored with qweight, qzeros, scales (the parameters of 'awq' layers), but "), first
    assert "declares 'fp8', and the model built them as 'fp8' layers from it: the declaration is not the one these " \
           "tensors were written with. Replace its quantization_config with theirs (for 'awq'" in first, first
    # (the line explains the problems; it is not one of them)
    assert error.problems[0] == first and f"({len(error.problems) - 1} problem(s); nothing was loaded)" in str(error)


def test_int8_tensors_under_an_fp8_declaration_are_named_by_the_parameters_only_int8_has(tmp_path):
    """int8's SCB and weight_format beside a weight an fp8 layer also has: some of int8's parameters, and no other
    method's."""
    pytest.importorskip("bitsandbytes")
    ckpt = _quantized(tmp_path, "int8")
    fp8 = json.loads((_quantized(tmp_path, "fp8") / "config.json").read_text())["quantization_config"]
    first = str(_refused(_declared(ckpt, fp8))).splitlines()[1].strip()
    assert "are stored with SCB, weight_format (parameters of 'int8' layers), but " in first, first
    assert "the declaration is not the one these tensors were written with" in first, first


@pytest.mark.parametrize(("targets", "said"), [
    (["Lienar"], "config_groups targets ['Lienar'], did you mean 'Linear' for 'Lienar'?"),
    (["re:.*nothing.*"], "config_groups targets ['re:.*nothing.*']"),
])
def test_w4a16_targets_naming_no_layer_are_told_at_build(tmp_path, targets, said):
    """The declared section's targets (a misspelled class, a pattern) name none of the model's layers: building the
    model from it is refused, naming the first layer and the targets, as vLLM refuses it. (Was: the layers built
    unquantized, and the load said why from the tensors, after 37 lines of unexpected and missing ones; before that,
    only those lines.)"""
    ckpt = _quantized(tmp_path, "awq", W4A16)
    section = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    section["config_groups"] = {"g0": {**section["config_groups"]["group_0"], "targets": targets}}
    with pytest.raises(ConfigError) as err:
        DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=_declared(ckpt, section)))
    assert str(err.value).startswith(
        "compressed-tensors config: no config group targets linear layer QKVParallelLinear 'blocks.0.attn.qkv_proj' "
        "(checkpoint modules ['blocks.0.attn.q_proj', 'blocks.0.attn.k_proj', 'blocks.0.attn.v_proj']) and 'ignore' "
        f"does not name it ({said}; ignore ['patch_embed']), so it has no scheme"), str(err.value)


def test_a_long_report_is_cut_and_the_error_keeps_every_problem(tmp_path):
    """A float checkpoint of 12 blocks loaded with a weight of the wrong width in every linear layer: one problem a
    tensor, the first SHOWN_PROBLEMS shown. (Was: all of them, 423 KB on a 40-block model for one wrong setting.)"""
    cfg = DemoConfig(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128, num_layers=12, in_channels=16,
                     num_tokens=8)
    src = write_demo_checkpoint(tmp_path / "src", cfg)
    tensors = {n: (t[:, :-8].contiguous() if t.dim() == 2 and ".blocks" not in n and n.startswith("blocks.") else t)
               for n, t in tensors_of(src).items()}
    save_file(tensors, str(src / "model.safetensors"))
    model = DemoDiT(cfg, torch.float32, None)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, src)
    problems = err.value.problems
    assert len(problems) > SHOWN_PROBLEMS + 2
    text = str(err.value)
    assert f"({len(problems)} problem(s); nothing was loaded)" in text
    lines = text.splitlines()[1:]
    assert [line.strip() for line in lines[:-1]] == problems[:SHOWN_PROBLEMS]
    assert lines[-1].strip() == (f"... and {len(problems) - SHOWN_PROBLEMS} more problem(s) not shown "
                                 f"({len(problems) - SHOWN_PROBLEMS} other(s); the error's .problems lists them all)")


def test_a_cut_report_shows_the_tensor_that_does_not_fit_before_the_stray_ones(tmp_path):
    """26 stray LoRA tensors and one weight of the wrong shape: the shape problem is among the lines shown, and the
    cut counts the unexpected tensors it hides. (Was: the first 20 stray tensors, the shape error only in
    .problems.)"""
    model = torch.nn.ModuleDict({f"l{i}": torch.nn.Linear(8, 16) for i in range(30)})
    tensors = {f"{n}.{k}": v.detach().clone() for n, m in model.items() for k, v in m.state_dict().items()}
    tensors |= {f"l{i}.lora_A": torch.zeros(2, 8) for i in range(26)}
    tensors["l29.weight"] = torch.zeros(16, 7)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert "(27 problem(s); nothing was loaded)" in str(err.value)
    assert lines[0].startswith("tensor 'l29.weight' (model.safetensors) → 'l29.weight': "), lines[0]
    assert lines[-1] == ("... and 7 more problem(s) not shown (7 unexpected tensor(s); the error's .problems lists "
                         "them all)"), lines[-1]


def test_a_fused_shards_problem_names_the_parameter_and_shard_once(tmp_path):
    """The weight loader's own message starts with the parameter's name and shard (for a direct call); the report's
    line has said both. (Was: "→ 'blocks.0.attn.qkv_proj.scales' shard 'q': blocks.0.attn.qkv_proj.scales shard 'q':
    GroupQuantScaleParameter shard 'q': expected ...".)"""
    ckpt = _quantized(tmp_path, "awq", {"group_size": 64})
    tensors = tensors_of(ckpt)
    tensors["blocks.0.attn.q_proj.scales"] = tensors["blocks.0.attn.q_proj.scales"].to(torch.int32)
    save_file(tensors, str(ckpt / "model.safetensors"))
    line = str(_refused(ckpt)).splitlines()[1].strip()
    assert line == ("tensor 'blocks.0.attn.q_proj.scales' (model.safetensors) → 'blocks.0.attn.qkv_proj.scales' shard "
                    "'q': GroupQuantScaleParameter: expected a float tensor (torch.float16), found torch.int32"), line


def test_a_shape_the_loaders_message_states_is_not_stated_again_as_a_whole(tmp_path):
    """A wrong group size: the AWQ loader's message for a fused part states the part's whole shape; the loader's own
    statement of it is left out. (Was: "...: expected shape (1, 64), found (2, 64); ... ; as a whole, expected shape
    (1, 64), found (2, 64)".)"""
    ckpt = _quantized(tmp_path, "awq", {"group_size": 64})
    section = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    error = _refused(_declared(ckpt, {**section, "group_size": 128}))
    lines = [p for p in error.problems if p.startswith("tensor 'blocks.0.attn.k_proj.scales'")]
    assert len(lines) == 1 and lines[0].count("expected shape (1, 64), found (2, 64)") == 1, lines
    assert "as a whole" not in lines[0], lines
