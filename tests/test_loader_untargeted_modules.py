"""A compressed-tensors checkpoint whose modules are stored quantized but that its config does not build quantized:
modules no config group targets (and ``ignore`` does not name) are refused when the model is built, naming the targets;
modules ``ignore`` names are built unquantized, and the load error says the skip list names them.

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
from fastvideo_quant.errors import CheckpointError, ConfigError
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


def test_modules_no_group_targets_are_refused_at_build(every_linear_quantized):
    """A config whose groups target the attention only, over a checkpoint that quantized every linear module: the
    first layer neither targeted nor in ``ignore`` is refused when the model is built (vLLM's rule), naming the targets.
    (Was: built unquantized, and the load's error named the modules no group targets and the targets.)"""
    ckpt = every_linear_quantized
    _declare(ckpt, _section(["re:.*attn.*"], []))
    with pytest.raises(ConfigError) as err:
        DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=ckpt))
    assert str(err.value).startswith(
        "compressed-tensors config: no config group targets linear layer ReplicatedLinear 'patch_embed' and 'ignore' "
        "does not name it (config_groups targets ['re:.*attn.*']; ignore []), so it has no scheme"), str(err.value)
    # targets naming every module stored quantized, and ignore the one stored in float: it loads
    _declare(ckpt, _section(["re:.*attn.*", "re:.*mlp.*", "proj_out"], ["patch_embed"]))
    load_checkpoint(DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=ckpt)), ckpt)


def test_modules_ignore_names_but_the_checkpoint_stores_quantized_are_told_the_skip_list(every_linear_quantized):
    ckpt = every_linear_quantized
    _declare(ckpt, _section(["re:.*attn.*"], ["re:.*mlp.*", "proj_out", "patch_embed"]))
    first = _first_line(ckpt)
    assert "the config's skip list (ignore) names them: the checkpoint stores them as 'fp8'" in first, first
    assert "targets" not in first, first
