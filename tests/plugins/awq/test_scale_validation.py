"""AWQ: bad scales refused before any layer is processed, TP advice that is true, a clear error for a wrong input.

Checkpoints are written with safetensors into tmp_path and read with ``load_checkpoint``.
"""

from __future__ import annotations

import json

import pytest
import torch
from fvq_awq.config import AWQConfig
from safetensors.torch import save_file

from fastvideo_quant.errors import ShardingError, WeightLoadError
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import ensure_registered

ensure_registered("awq", "fvq_awq.hooks")
SHAPES = {"mlp.gate_proj": (128, 256), "mlp.up_proj": (128, 256), "mlp.down_proj": (256, 128)}


class Mlp(torch.nn.Module):
    def __init__(self, cfg: AWQConfig) -> None:
        super().__init__()
        kw = {"bias": False, "params_dtype": torch.bfloat16, "quant_config": cfg}
        self.mlp = torch.nn.Module()
        self.mlp.gate_up_proj = MergedColumnParallelLinear(256, [128, 128], prefix="mlp.gate_up_proj", **kw)
        self.mlp.down_proj = RowParallelLinear(128, 256, prefix="mlp.down_proj", **kw)


def write(path, edit=None) -> None:
    cfg = AWQConfig(group_size=64)
    g = torch.Generator().manual_seed(0)
    tensors = {f"{name}.{k}": v for name, shape in SHAPES.items()
               for k, v in cfg.quantize_weight(torch.randn(*shape, generator=g) / 16).items()}
    if edit is not None:
        edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"quantization_config": cfg.to_dict()}))


def processed(model):
    return [getattr(m, "_fvq_weights_processed", False) for m in model.modules() if hasattr(m, "quant_method")]


def spoil(name, index, value):
    def edit(tensors):
        t = tensors[name].clone()
        t[index] = value
        tensors[name] = t
    return edit


@pytest.mark.parametrize(("name", "index", "value", "match"), [
    ("mlp.down_proj.scales", (1, 7), float("nan"),
     r"down_proj\.scales' \(torch\.float16, shape \(2, 256\)\).*1 of 512.*\[1, 7\] = nan"),
    ("mlp.up_proj.scales", (0, 3), float("inf"),
     r"gate_up_proj\.scales' .*\[0, 131\]"
     r" \(checkpoint tensor 'mlp\.up_proj\.scales' \[0, 3\]\) = inf"),
    ("mlp.gate_proj.scales", (2, 0), -0.5,
     r"gate_up_proj\.scales' .*\[2, 0\]"
     r" \(checkpoint tensor 'mlp\.gate_proj\.scales' \[2, 0\]\) = -0\.5"),
    ("mlp.gate_proj.scales", (3, 5), 0.0,
     r"gate_up_proj\.scales' .*\[3, 5\]"
     r" \(checkpoint tensor 'mlp\.gate_proj\.scales' \[3, 5\]\) = 0\.0"),
], ids=["nan", "inf", "negative", "zero"])
def test_bad_scale_is_named_and_nothing_is_processed(tmp_path, name, index, value, match):
    write(tmp_path, spoil(name, index, value))
    model = Mlp(AWQConfig(group_size=64))
    with pytest.raises(WeightLoadError, match=match):
        load_checkpoint(model, tmp_path)
    assert not any(processed(model))


def test_good_checkpoint_loads(tmp_path):
    write(tmp_path)
    model = Mlp(AWQConfig(group_size=64))
    load_checkpoint(model, tmp_path)
    assert all(processed(model))


@pytest.mark.parametrize("cls", [RowParallelLinear, ReplicatedLinear, ColumnParallelLinear])
def test_input_not_a_multiple_of_the_group_says_no_tp_size_fixes_it(cls):
    with pytest.raises(ShardingError) as err:
        cls(192, 256, bias=False, params_dtype=torch.bfloat16, quant_config=AWQConfig(group_size=128), prefix="ff.o")
    msg = str(err.value)
    assert "TP sizes that keep" not in msg
    assert "No TP size fixes this layer" in msg and "group_size in [32, 64, -1]" in msg
    assert "list 'ff.o' in modules_to_not_convert" in msg


def test_listed_tp_sizes_all_work():
    from fvq_awq.method import _problems, _rank_sizes, _working_tp_sizes

    row = RowParallelLinear(768, 256, bias=False, quant_config=None, prefix="r")
    works = _working_tp_sizes(row, 128)
    assert works == [1, 2, 3, 6]  # 768/tp a multiple of 128
    assert all(not _problems(*_rank_sizes(row, tp), 128) for tp in works)


def test_apply_with_wrong_input_size_is_a_clear_error(tmp_path):
    write(tmp_path)
    model = Mlp(AWQConfig(group_size=64))
    load_checkpoint(model, tmp_path)
    x = torch.randn(3, 100, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"RowParallelLinear 'mlp\.down_proj': input's last dim is 100, expected 128"):
        model.mlp.down_proj(x)
    layer = model.mlp.down_proj
    with pytest.raises(ValueError, match=r"'mlp\.down_proj'.*must be 128.*found shape \(3, 100\)"):  # apply directly
        layer.quant_method.apply(layer, x)


class BiasedDown(torch.nn.Module):
    def __init__(self, cfg: AWQConfig) -> None:
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = RowParallelLinear(128, 256, bias=True, params_dtype=torch.bfloat16, quant_config=cfg,
                                               prefix="mlp.down_proj")


def test_non_finite_bias_is_refused_before_processing(tmp_path):
    cfg = AWQConfig(group_size=64)
    w = torch.randn(256, 128, generator=torch.Generator().manual_seed(0)) / 16
    tensors = {f"mlp.down_proj.{k}": v for k, v in cfg.quantize_weight(w).items()}
    bias = torch.randn(256).to(torch.bfloat16)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": cfg.to_dict()}))
    save_file({**tensors, "mlp.down_proj.bias": bias}, str(tmp_path / "model.safetensors"))
    load_checkpoint(BiasedDown(cfg), tmp_path)  # a finite bias loads
    bias[5] = float("-inf")
    save_file({**tensors, "mlp.down_proj.bias": bias}, str(tmp_path / "model.safetensors"))
    model = BiasedDown(cfg)
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    assert "AWQ layer 'mlp.down_proj': tensor 'mlp.down_proj.bias'" in msg
    assert "found 1 of 256 that are NaN or inf, the first at [5] = -inf" in msg
    assert processed(model) == [False]
