"""A compressed-tensors checkpoint whose modules are stored quantized but built unquantized: the load error says which
cause holds for which modules — ``ignore`` names them, or no config group's ``targets`` names them (the targets listed).

(Was: every such module was said to be named by "the config's skip list (ignore)", also where ``ignore`` was empty and
the groups' targets left them out — as in a checkpoint ``fvq quantize`` wrote before it followed the targets, which
quantized every linear module under a config whose targets named only some.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

CFG = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=2, in_channels=32,
                 num_tokens=16)
ARGS = {"num_bits": 8, "type": "float", "symmetric": True}


def _section(targets: list[str], ignore: list[str]) -> dict:
    group = {"targets": targets, "weights": {**ARGS, "strategy": "channel", "dynamic": False},
             "input_activations": {**ARGS, "strategy": "token", "dynamic": True}}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g0": group},
            "ignore": ignore}


@pytest.fixture
def every_linear_quantized(tmp_path: Path) -> Path:
    """A checkpoint with every linear module quantized (targets ``Linear``), written by ``fvq quantize``."""
    src = tmp_path / "src"
    src.mkdir()
    save_file(random_state_dict(CFG, seed=0), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(CFG.to_dict()))
    quantize_checkpoint(src, tmp_path / "ckpt", "fp8", options=_section(["Linear"], []))
    return tmp_path / "ckpt"


def _declare(ckpt: Path, section: dict) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "quantization_config": section}))


def _first_line(ckpt: Path) -> str:
    model = DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=ckpt))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, ckpt)
    return str(err.value).splitlines()[1].strip()


def test_modules_no_group_targets_are_told_the_targets_not_the_skip_list(every_linear_quantized):
    ckpt = every_linear_quantized
    _declare(ckpt, _section(["re:.*attn.*"], []))
    first = _first_line(ckpt)
    declared = f"{ckpt / 'config.json'}'s 'quantization_config'"
    assert first == (
        "modules 'blocks.0.mlp.down_proj', 'blocks.0.mlp.gate_up_proj', 'blocks.1.mlp.down_proj' and 2 more are stored "
        "quantized (their weight is torch.float8_e4m3fn), but the model built them unquantized, though "
        f"{declared} declares 'fp8': no config group's targets name them (config_groups.g0.targets ['re:.*attn.*']; "
        "the skip list, ignore, does not either: compressed-tensors leaves a module no group targets in float): the "
        f"checkpoint stores them as 'fp8', so add them to a group's targets in {declared} (their names, or an 're:' "
        "pattern), or re-export the checkpoint with them unquantized"), first
    # the fix it gives loads the checkpoint
    _declare(ckpt, _section(["re:.*attn.*", "re:.*mlp.*", "proj_out"], []))
    load_checkpoint(DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=ckpt)), ckpt)


def test_modules_ignore_names_and_modules_no_group_targets_are_told_apart(every_linear_quantized):
    ckpt = every_linear_quantized
    _declare(ckpt, _section(["re:.*attn.*"], ["re:.*mlp.*"]))
    first = _first_line(ckpt)
    assert ("declares 'fp8': the config's skip list (ignore) names 'blocks.0.mlp.down_proj', "
            "'blocks.0.mlp.gate_up_proj', 'blocks.1.mlp.down_proj' and 1 more: the checkpoint stores them as 'fp8', so "
            "take them out of ignore (or re-export the checkpoint with them unquantized); no config group's targets "
            "name 'proj_out' (config_groups.g0.targets ['re:.*attn.*']; the skip list, ignore, does not either") in first, \
        first
    # ignore naming every module left out: the skip list's cause alone, as before
    _declare(ckpt, _section(["re:.*attn.*"], ["re:.*mlp.*", "proj_out"]))
    first = _first_line(ckpt)
    assert "the config's skip list (ignore) names them: the checkpoint stores them as 'fp8'" in first, first
    assert "targets" not in first, first
