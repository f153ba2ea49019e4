"""int8 (bitsandbytes) checkpoints with bad SCB, or float checkpoints with NaN/inf, are refused before any layer is
processed. Checkpoints are written with safetensors into tmp_path and read with ``load_checkpoint``."""

from __future__ import annotations

import json

import pytest
import torch
from fvq_int8 import Int8Config
from safetensors.torch import save_file

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.linear import QKVParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint

SHAPES = {"attn.q_proj": (128, 128), "attn.k_proj": (64, 128), "attn.v_proj": (64, 128), "attn.o_proj": (128, 128)}
BNB = {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0}


class Attn(torch.nn.Module):
    def __init__(self, cfg: Int8Config) -> None:
        super().__init__()
        kw = {"bias": False, "params_dtype": torch.bfloat16, "quant_config": cfg}
        self.attn = torch.nn.Module()
        self.attn.qkv_proj = QKVParallelLinear(128, 32, 4, 2, prefix="attn.qkv_proj", **kw)
        self.attn.o_proj = RowParallelLinear(128, 128, prefix="attn.o_proj", **kw)


def floats() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(*shape, generator=g) / 16 for name, shape in SHAPES.items()}


def write(path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"quantization_config": config}))


def quantized(edit=None, weights=None) -> dict[str, torch.Tensor]:
    cfg = Int8Config.from_config(BNB)
    tensors = {f"{n}.{k}": v for n, w in (weights or floats()).items() for k, v in cfg.quantize_weight(w).items()}
    if edit is not None:
        edit(tensors)
    return tensors


def processed(model):
    return [getattr(m, "_fvq_weights_processed", False) for m in model.modules() if hasattr(m, "quant_method")]


def spoil(name, row, value):
    def edit(tensors):
        t = tensors[name].clone()
        t[row] = value
        tensors[name] = t
    return edit


@pytest.mark.parametrize(("name", "row", "value", "match"), [
    ("attn.o_proj.SCB", 5, float("nan"), r"'attn\.o_proj\.SCB'.*finite and >= 0.*1 of 128 rows.*at \[5\] = nan"),
    ("attn.k_proj.SCB", 3, float("inf"),
     r"'attn\.qkv_proj\.SCB'.*at \[131\]"
     r" \(checkpoint tensor 'attn\.k_proj\.SCB' \[3\]\) = inf"),
    ("attn.v_proj.SCB", 0, -2.0, r"'attn\.qkv_proj\.SCB'.*at \[192\] \(checkpoint tensor 'attn\.v_proj\.SCB' \[0\]\) = -2\.0"),
    ("attn.q_proj.SCB", 9, 0.0,
     r"'attn\.qkv_proj\.SCB'.*> 0 where the row.*at \[9\] \(checkpoint tensor 'attn\.q_proj\.SCB' \[9\]\) = 0\.0"),
    ("attn.o_proj.SCB", 2, 3e38,  # finite but absurd (a flipped exponent bit): loaded before, the output inf
     r"'attn\.o_proj\.SCB'.*such that the de-quantized row's absolute sum .* fits the layer's torch\.\w+ \(at most "
     r"[0-9.e+]+\); beyond it the output is inf/NaN.*found 1 of 128 rows that are not, the first at \[2\] = 3\.0"),
], ids=["nan", "inf", "negative", "zero-for-nonzero-row", "huge"])
def test_bad_scb_is_named_and_nothing_is_processed(tmp_path, name, row, value, match):
    write(tmp_path, quantized(spoil(name, row, value)), BNB)
    model = Attn(Int8Config.from_config(BNB))
    with pytest.raises(WeightLoadError, match=match):
        load_checkpoint(model, tmp_path)
    assert not any(processed(model))


def test_all_zero_row_with_scb_zero_loads(tmp_path):
    weights = floats()
    weights["attn.o_proj"][7] = 0  # quantize_rows writes SCB 0 for it, as bitsandbytes' absmax would be
    tensors = quantized(weights=weights)
    assert tensors["attn.o_proj.SCB"][7] == 0
    write(tmp_path, tensors, BNB)
    model = Attn(Int8Config.from_config(BNB))
    load_checkpoint(model, tmp_path)
    assert all(processed(model))


def test_float_weight_with_inf_is_refused_before_quantizing(tmp_path):
    tensors = {f"{n}.weight": w.bfloat16() for n, w in floats().items()}
    tensors["attn.o_proj.weight"][2, 11] = float("inf")
    write(tmp_path, tensors, {"quant_method": "int8"})
    model = Attn(Int8Config.from_config({"quant_method": "int8"}))
    with pytest.raises(WeightLoadError, match=r"'attn\.o_proj\.weight'.*1 of 16384 that are NaN or inf.*\[2, 11\] = inf"):
        load_checkpoint(model, tmp_path)
    assert not any(processed(model))


class BiasedOProj(torch.nn.Module):
    def __init__(self, cfg: Int8Config) -> None:
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.o_proj = RowParallelLinear(128, 128, bias=True, params_dtype=torch.bfloat16, quant_config=cfg,
                                             prefix="attn.o_proj")


@pytest.mark.parametrize("serialized", [True, False])
def test_non_finite_bias_is_refused_before_processing(tmp_path, serialized):
    w = floats()["attn.o_proj"]
    if serialized:
        config, tensors = BNB, {f"attn.o_proj.{k}": v for k, v in Int8Config.from_config(BNB).quantize_weight(w).items()}
    else:
        config, tensors = {"quant_method": "int8"}, {"attn.o_proj.weight": w.to(torch.bfloat16)}
    cfg = Int8Config.from_config(config)
    bias = torch.randn(128).to(torch.bfloat16)
    write(tmp_path, {**tensors, "attn.o_proj.bias": bias}, config)
    load_checkpoint(BiasedOProj(cfg), tmp_path)  # a finite bias loads
    bias[3] = float("nan")
    write(tmp_path, {**tensors, "attn.o_proj.bias": bias}, config)
    model = BiasedOProj(cfg)
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    assert "int8 layer 'attn.o_proj': tensor 'attn.o_proj.bias'" in msg
    assert "found 1 of 128 that are NaN or inf, the first at [3] = nan" in msg
    assert processed(model) == [False]
