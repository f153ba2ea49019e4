"""A group size every layer's stored scales imply, other than the config's: said once, first, naming the config key,
the value configured and the value implied (``AWQConfig.stored_tensor_hints``); each tensor's own line stays short.
And a scales or zero-point tensor stored transposed: said so, first, without group-size guesses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from demo_checkpoints import write_demo_checkpoint
from fvq_awq.config import AWQConfig

from fastvideo_quant.demo.model import DemoConfig, DemoDiT
from fastvideo_quant.errors import CheckpointError, CheckpointValueError, WeightLoadError
from fastvideo_quant.layers.linear import ColumnParallelLinear, QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import ensure_registered
from fastvideo_quant.quantization import resolve_quant_config

sys.path.insert(0, str(Path(__file__).parent))
from ct_helpers import quantize, section, tensors, write_demo  # noqa: E402

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


# --- a tensor stored transposed -----------------------------------------------------------------------------------
def _awq_layer(cls=ReplicatedLinear, **kwargs):
    return cls(512, 64, bias=False, params_dtype=torch.bfloat16, quant_config=AWQConfig(group_size=128), prefix="proj",
               **kwargs)


@pytest.mark.parametrize("name, stored, message", [
    ("scales", torch.ones(64, 4, dtype=torch.float16),
     "proj.scales: stored transposed: expected [in_features / group_size, out_features] = (4, 64), found (64, 4)"),
    ("qzeros", torch.zeros(8, 4, dtype=torch.int32),
     "proj.qzeros: stored transposed: expected [in_features / group_size, out_features / 8] = (4, 8), found (8, 4)"),
])
def test_a_transposed_awq_tensor_is_said_transposed_first(name, stored, message):
    """(Was: "the checkpoint's 64 rows mean group_size 8 ..., or in_features 8192 at group_size 128 ...", with
    "(transposed?)" only at the end of the load's line.)"""
    layer = _awq_layer()
    param = getattr(layer, name)
    with pytest.raises(CheckpointValueError) as info:
        param.weight_loader(param, stored)
    text = str(info.value)
    assert text.startswith(message), text
    assert "group_size 8" not in text and "in_features 8192" not in text, text


def test_a_transposed_part_of_a_fused_layer_is_said_transposed_for_its_own_shape():
    layer = QKVParallelLinear(512, 64, 2, 1, bias=False, params_dtype=torch.bfloat16,
                              quant_config=AWQConfig(group_size=128), prefix="qkv")
    with pytest.raises(CheckpointValueError, match=r"^qkv.scales shard 'k': stored transposed: expected \[in_features / "
                                                   r"group_size, out_features\] = \(4, 64\), found \(64, 4\)"):
        layer.scales.weight_loader(layer.scales, torch.ones(64, 4, dtype=torch.float16), "k")


def test_a_transposed_tensor_in_a_load_is_one_short_line(tmp_path):
    from fvq_awq.quantizer import quantize_weight
    from safetensors.torch import save_file

    model = torch.nn.Module()
    model.proj = _awq_layer()
    stored = {f"proj.{k}": v for k, v in quantize_weight(torch.randn(64, 512) / 16, None, group_size=128).items()}
    stored["proj.scales"] = stored["proj.scales"].t().contiguous()
    save_file(stored, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    (line,) = str(info.value).splitlines()[1:]
    assert "'proj.scales': stored transposed: expected [in_features / group_size, out_features] = (4, 64), found " \
           "(64, 4): store the tensor transposed back" in line, line
    assert "(transposed?)" not in line and "group_size 8" not in line and len(line) < 300, line


@pytest.mark.parametrize("name, message", [
    ("weight_scale", "proj.weight_scale: stored transposed: expected [out_features, in_features / group_size] = "
                     "(16, 4), found (4, 16)"),
    ("weight_zero_point", "proj.weight_zero_point: stored transposed: expected [out_features / 8, in_features / "
                          "group_size] = (2, 4), found (4, 2)"),
])
def test_a_transposed_compressed_tensors_tensor_is_said_transposed_first(name, message):
    layer = ColumnParallelLinear(256, 16, bias=False, quant_config=AWQConfig.from_config(section(False, group_size=64)),
                                 prefix="proj")
    q, s, z = quantize(torch.randn(16, 256), False, 64)
    tensor = tensors(q, s, z)[name].t().contiguous()
    param = getattr(layer, name)
    with pytest.raises(CheckpointValueError) as info:
        param.weight_loader(param, tensor)
    assert str(info.value).startswith(message), str(info.value)


def test_a_tensor_of_other_rows_that_is_not_its_transpose_still_says_its_rows():
    layer = _awq_layer()
    with pytest.raises(WeightLoadError, match=r"2 rows \(expected in_features / group_size = 512 / 128 = 4\) mean "
                                              r"group_size 256 \(not the config's 128\)") as info:
        layer.scales.weight_loader(layer.scales, torch.ones(2, 64, dtype=torch.float16))
    assert not isinstance(info.value, CheckpointValueError)
