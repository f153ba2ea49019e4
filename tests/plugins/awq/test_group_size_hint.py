"""A group size every layer's stored scales imply, other than the config's: said once, first, naming the config key,
the value configured and the value implied (``AWQConfig.stored_tensor_hints``); each tensor's own line stays short."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from demo_checkpoints import write_demo_checkpoint
from fvq_awq.config import AWQConfig

from fastvideo_quant.demo.model import DemoConfig, DemoDiT
from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import ensure_registered
from fastvideo_quant.quantization import resolve_quant_config

sys.path.insert(0, str(Path(__file__).parent))
from ct_helpers import section, write_demo  # noqa: E402

ensure_registered("awq", "fvq_awq.hooks")

CFG = DemoConfig(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256, num_layers=2, in_channels=64,
                 num_tokens=16)


def _awq(layers: dict[str, tuple[int, int, int]]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """AutoAWQ tensors' (dtype, shape) for modules of (in_features, out_features, groups)."""
    out = {}
    for name, (k, n, g) in layers.items():
        out |= {f"{name}.qweight": (torch.int32, (k, n // 8)), f"{name}.qzeros": (torch.int32, (g, n // 8)),
                f"{name}.scales": (torch.float16, (g, n))}
    return out


# --- the summary line, from the stored shapes ---------------------------------------------------------------------
def test_the_key_the_config_gave_is_the_one_named():
    """AutoAWQ's quant_config.json says q_group_size: the line names it, with the value configured and the one the
    rows imply. (Was: no summary line — AWQConfig.stored_tensor_hints returned [] for AutoAWQ configs.)"""
    config = AWQConfig.from_config({"w_bit": 4, "q_group_size": 128, "zero_point": True, "version": "GEMM"})
    hints = config.stored_tensor_hints(_awq({"a": (256, 64, 4), "b": (512, 32, 8)}))
    assert hints == ["q_group_size: the awq config says 128, but the stored scales and qzeros of every one of the "
                     "checkpoint's 2 quantized layer(s) have in_features / 64 rows (e.g. 'a.scales' (4, 64) at "
                     "in_features 256): it was quantized with group_size 64, which is why each of those tensors is "
                     "refused below; set \"q_group_size\": 64 in the quantization_config"], hints


@pytest.mark.parametrize("configured, layers, says", [
    (64, {"a": (256, 64, 1), "b": (512, 64, 1)}, '1 row each (one group over the whole input) (e.g. '),
    (-1, {"a": (256, 64, 2), "b": (512, 64, 4)}, 'in_features / 128 rows'),
    (64, {"a": (128, 64, 1), "b": (128, 64, 1)}, 'in_features / 128 rows'),  # (-1 or 128: the size is named)
])
def test_the_group_size_implied_is_named(configured, layers, says):
    """-1 where each layer has one row (different in_features); a size where every layer fits it."""
    implied = "-1" if "each" in says else "128"
    (hint,) = AWQConfig(group_size=configured).stored_tensor_hints(_awq(layers))
    assert says in hint and hint.endswith(f'set "group_size": {implied} in the quantization_config'), hint


def test_a_group_size_the_kernels_do_not_run_is_to_be_quantized_again():
    (hint,) = AWQConfig(group_size=128).stored_tensor_hints(_awq({"a": (512, 64, 2), "b": (1024, 64, 4)}))
    assert "it was quantized with group_size 256" in hint, hint
    assert hint.endswith("the AWQ kernels do not run that group size (they run 32, 64, 128, -1): quantize the float "
                         "model again with one of those"), hint


@pytest.mark.parametrize("layers", [
    {"a": (256, 64, 4), "b": (256, 64, 2)},  # layers of two group sizes: each tensor's own line says what it means
    {"a": (256, 64, 2), "b": (512, 64, 4)},  # the config's own group size: the problem is elsewhere
    {"a": (256, 64, 3)},  # rows that are no whole groups
])
def test_no_line_where_no_one_other_group_size_fits_every_layer(layers):
    assert AWQConfig(group_size=128).stored_tensor_hints(_awq(layers)) == []


def test_a_transposed_scales_tensor_says_nothing_of_the_group_size():
    """Its output dim is not its weight's: passed over, so the qzeros (of the config's size) give no line."""
    stored = _awq({"a": (256, 64, 2)})
    stored["a.scales"] = (torch.float16, (64, 2))
    assert AWQConfig(group_size=128).stored_tensor_hints(stored) == []


@pytest.mark.parametrize("configured, stored_groups, fix", [
    ({"group_size": 128}, 4, "set config_groups.<group>.weights.group_size to 64"),
    ({"strategy": "channel", "group_size": None}, 4, "set config_groups.<group>.weights.group_size to 64 and "
                                                     "strategy to 'group'"),
    ({"group_size": 64}, 1, "set config_groups.<group>.weights.strategy to 'channel' and group_size to null"),
])
def test_a_compressed_tensors_config_is_told_its_group_fields(configured, stored_groups, fix):
    config = AWQConfig.from_config(section(False, **configured))
    stored = {"a.weight_packed": (torch.int32, (64, 32)), "a.weight_scale": (torch.bfloat16, (64, stored_groups)),
              "a.weight_zero_point": (torch.int32, (8, stored_groups))}
    (hint,) = config.stored_tensor_hints(stored)
    assert hint.startswith("group_size: the compressed-tensors config declares "), hint
    assert "the stored weight_scale and weight_zero_point of every one of the checkpoint's 1 quantized layer(s)" in hint
    assert hint.endswith(fix), hint


def _note(line: str) -> str:
    """What the group loader adds to a tensor's line (between the parameter's shapes and the loader's whole-shape
    statement)."""
    return line.split("; ")[1]


# --- end to end: one line first, short lines per tensor -----------------------------------------------------------
def test_an_awq_checkpoint_of_another_group_size_is_said_once_first(tmp_path):
    """The demo model quantized with group_size 64, its config.json edited to say 128. (Was: one ~750-character line
    per scales/qzeros tensor, each repeating the same explanation, and no summary line.)"""
    from fastvideo_quant.quantize import quantize_checkpoint

    src = write_demo_checkpoint(tmp_path / "bf16", CFG)
    dst = tmp_path / "awq"
    quantize_checkpoint(src, dst, "awq", options={"group_size": 64})
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"]["group_size"] = 128
    (dst / "config.json").write_text(json.dumps(config))
    model = DemoDiT(CFG, dtype=torch.bfloat16, quant_config=resolve_quant_config(checkpoint=dst))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, dst)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines[0].startswith("group_size: the awq config says 128, but the stored scales and qzeros of every one of "
                               "the checkpoint's 15 quantized layer(s) have in_features / 64 rows"), lines[0]
    assert lines[0].endswith('set "group_size": 64 in the quantization_config'), lines[0]
    tensor_lines = [line for line in lines if line.startswith("tensor ")]
    assert tensor_lines and all("mean group_size 64 (not the config's 128)" in line for line in tensor_lines), lines
    assert max(len(_note(line)) for line in tensor_lines) < 150, max(tensor_lines, key=len)
    assert "use the one it was quantized with" not in str(info.value)


def test_a_compressed_tensors_checkpoint_of_another_group_size_is_said_once_first(tmp_path):
    write_demo(tmp_path, section(False, group_size=64))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    from ct_helpers import CFG as CT_CFG

    model = DemoDiT(CT_CFG, quant_config=resolve_quant_config(checkpoint=tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines[0].startswith("group_size: the compressed-tensors config declares 128, but the stored weight_scale "
                               "and weight_zero_point of every one of the checkpoint's"), lines[0]
    assert lines[0].endswith("set config_groups.<group>.weights.group_size to 64"), lines[0]
    tensor_lines = [line for line in lines if line.startswith("tensor ")]
    assert tensor_lines and all("columns (expected in_features / group_size = " in line and "mean group_size 64 (not "
                                "the config's 128)" in line for line in tensor_lines), tensor_lines
    assert max(len(_note(line)) for line in tensor_lines) < 150, max(tensor_lines, key=len)
