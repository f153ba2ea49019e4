"""A checkpoint quantized with another group_size than the config's: the shape error says what the rows mean, and a
summary line the group size the checkpoint was quantized with."""

from __future__ import annotations

import copy

import pytest
import torch
from fvq_awq.config import AWQConfig
from fvq_awq.quantizer import quantize_weight
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, ShardingError
from fastvideo_quant.layers.linear import ReplicatedLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import ensure_registered

ensure_registered("awq", "fvq_awq.hooks")


class One(torch.nn.Module):
    def __init__(self, cls, group_size: int, in_features: int = 512) -> None:
        super().__init__()
        self.proj = cls(in_features, 16, bias=False, params_dtype=torch.bfloat16, quant_config=AWQConfig(group_size=group_size),
                        prefix="proj")


def _write(path, group_size: int, edit=None):
    tensors = {f"proj.{k}": v for k, v in quantize_weight(torch.randn(16, 512) / 16, None, group_size=group_size).items()}
    if edit is not None:
        edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("cls", [ReplicatedLinear, RowParallelLinear])
def test_fewer_rows_name_the_group_size_they_mean(tmp_path, cls) -> None:
    """Each tensor's line says in a few words what its rows mean; the checkpoint's group size (256, which the kernels
    do not run) is said once, first. (Was: each line repeated the whole explanation, "the config's group_size, 128,
    is not the checkpoint's: use the one it was quantized with, from ...", and nothing said it once.)"""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(One(cls, 128), _write(tmp_path, 256))
    text = str(info.value)
    for name in ("qzeros", "scales"):
        assert f"'proj.{name}'" in text
    assert text.count("2 rows (expected in_features / group_size = 512 / 128 = 4) mean group_size 256 (not the config's "
                      "128) or in_features 256 (not the layer's 512)") == 2, text
    assert "use the one it was quantized with" not in text, text
    hint = text.splitlines()[1].strip()
    assert hint.startswith("group_size: the awq config says 128, but the stored scales and qzeros of every one of the "
                           "checkpoint's 1 quantized layer(s) have in_features / 256 rows"), text
    assert hint.endswith("the AWQ kernels do not run that group size (they run 32, 64, 128, -1): quantize the float "
                         "model again with one of those"), hint


def test_one_group_config_against_grouped_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"4 rows \(expected 1: group_size -1 is one group\) mean group_size 128 "
                                              r"\(not the config's -1\)"):
        load_checkpoint(One(ReplicatedLinear, -1), _write(tmp_path, 128))


def test_rows_that_are_no_whole_groups_are_said_so(tmp_path) -> None:
    def three_rows(tensors):
        tensors["proj.scales"] = tensors["proj.scales"][:3]

    with pytest.raises(CheckpointError, match=r"proj.scales.*: expected shape \(4, 16\), found \(3, 16\); 3 rows \(expected "
                                              r"in_features / group_size = 512 / 128 = 4\) mean in_features 384 \(not "
                                              r"the layer's 512\)$") as err:
        load_checkpoint(One(ReplicatedLinear, 128), _write(tmp_path, 128, three_rows))
    # (the loader's own "; as a whole, expected shape (4, 16), found (3, 16)" would say the same shape again)
    assert "as a whole" not in str(err.value)


def test_a_model_of_another_size_is_named_as_a_cause_beside_the_group_size(tmp_path) -> None:
    """The config from the checkpoint, a layer built for twice the inputs: the rows say either cause, and the
    weight's own error (its rows) tells which; no summary line blames the group size (the checkpoint's own rows fit
    its config)."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(One(ReplicatedLinear, 128, in_features=1024), _write(tmp_path, 128))
    text = str(info.value)
    assert "4 rows (expected in_features / group_size = 1024 / 128 = 8) mean group_size 256 (not the config's 128) or " \
           "in_features 512 (not the layer's 1024)" in text, text
    assert "'proj.qweight'" in text, text
    assert "group_size: " not in text, text


def test_a_deep_copy_loads_into_itself_through_the_group_loader(tmp_path) -> None:
    model = One(ReplicatedLinear, 128)
    twin = copy.deepcopy(model)
    load_checkpoint(twin, _write(tmp_path, 128))
    assert hasattr(twin.proj, "scales_k") and not hasattr(model.proj, "scales_k")


def test_one_group_rows_that_are_no_whole_groups_say_no_group_size():
    from fvq_awq.loading import group_rows_note

    note = group_rows_note(512, -1, 3)
    assert note == "3 rows (expected 1: group_size -1 is one group) divide in_features 512 into no whole groups", note


def test_a_config_without_group_size_says_128_was_assumed(tmp_path) -> None:
    """A checkpoint whose config lost its group_size: AutoAWQ's default 128 is taken, and where the stored scales mean
    another the error says the value was assumed and the one to give, once, first (was only 're-quantize with ...';
    then the whole note on every tensor's line); each tensor's line says in short that 128 was assumed."""
    from fastvideo_quant.quantization import resolve_quant_config

    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "awq", "bits": 4, "zero_point": true, '
                                          '"version": "gemm"}}')
    config = resolve_quant_config(checkpoint=tmp_path)
    assert config.group_size == 128 and config.group_size_assumed
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(512, 16, bias=False, params_dtype=torch.bfloat16, quant_config=config, prefix="proj")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, _write(tmp_path, 32))
    text = str(info.value)
    assert text.splitlines()[1].strip().startswith("group_size: the awq config gives none, so AutoAWQ's default 128 was assumed, "
                                           "but the stored scales and qzeros of every one of the checkpoint's 1 "
                                           "quantized layer(s) have in_features / 32 rows"), text
    assert text.splitlines()[1].strip().endswith('set "group_size": 32 in the quantization_config'), text
    assert "config.json" in text.splitlines()[2], text  # (the loader's line: where that setting is for this load)
    assert text.count("16 rows (expected in_features / group_size = 512 / 128 = 4) mean group_size 32 (not the 128 "
                      "assumed: the config gives no group_size)") == 2, text
    with pytest.raises(ShardingError, match=r"input size per rank 64 is not a multiple of group_size 128.*AutoAWQ's "
                                            r"default 128 was assumed"):
        ReplicatedLinear(64, 16, bias=False, params_dtype=torch.bfloat16, quant_config=config, prefix="small")
    assert not AWQConfig.from_config({"group_size": 128}).group_size_note()
    with pytest.raises(ShardingError) as info:  # int4 packing of the outputs: no group rule, so no note
        ReplicatedLinear(256, 36, bias=False, params_dtype=torch.bfloat16, quant_config=config, prefix="packing")
    assert "not a multiple of 8 (int4 packing)" in str(info.value) and "was assumed" not in str(info.value)
