"""Packed integer parameters hold codes: a narrower integer than the parameter's is refused, naming both dtypes
(other integers widen), and an integer scale is refused for a float scale. Before, an AWQ ``qweight`` cast to uint8 /
int16 / int8 (same shape: a broken export) loaded and the model computed with cut codes (output off by up to 2.7), and
an fp8 ``weight_scale`` stored as int64 ``1`` loaded as scale 1.0 (the real one 0.0011)."""

from __future__ import annotations

import pytest
import torch
from fvq_awq.config import AWQConfig
from fvq_awq.quantizer import quantize_weight
from fvq_fp8.config import Fp8Config
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins import ensure_registered

ensure_registered("awq", "fvq_awq.hooks")
ensure_registered("fp8", "fvq_fp8.hooks")


class One(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.proj = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)[0]


def _awq_model() -> One:
    return One(ReplicatedLinear(256, 16, bias=False, params_dtype=torch.bfloat16, quant_config=AWQConfig(group_size=128),
                                prefix="proj"))


def _awq_checkpoint(path, edit=None):
    tensors = {f"proj.{k}": v for k, v in quantize_weight(torch.randn(16, 256) / 16, None, group_size=128).items()}
    if edit is not None:
        edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("name", ["qweight", "qzeros"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int8])
def test_packed_words_in_a_narrower_integer_are_refused(tmp_path, name, dtype) -> None:
    def narrow(tensors):
        tensors[f"proj.{name}"] = tensors[f"proj.{name}"].to(dtype)

    model = _awq_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, _awq_checkpoint(tmp_path, narrow))
    text = str(info.value)
    assert "nothing was loaded" in text, text
    bits = dtype.itemsize * 8
    assert (f"'proj.{name}': expected a torch.int32 tensor, found {dtype}: a {bits}-bit integer cannot "
            "hold this parameter's packed 32-bit words (their codes would be cut)") in text, text
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).all() for k in before)


def test_packed_words_in_a_wider_integer_load_as_the_same_codes(tmp_path) -> None:
    """int64 words of the same values (a tool that widened them) are the same codes: taken."""
    def widen(tensors):
        for name in ("qweight", "qzeros"):
            tensors[f"proj.{name}"] = tensors[f"proj.{name}"].to(torch.int64)

    want, got = _awq_model(), _awq_model()
    torch.manual_seed(0)
    load_checkpoint(want, _awq_checkpoint(tmp_path))
    (tmp_path / "wide").mkdir()
    torch.manual_seed(0)
    load_checkpoint(got, _awq_checkpoint(tmp_path / "wide", widen))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    assert torch.equal(want(x), got(x))


def _serialized() -> Fp8Config:
    return Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="dynamic")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_an_integer_fp8_scale_is_refused(tmp_path, dtype) -> None:
    layer = QKVParallelLinear(64, 16, 4, 2, bias=False, params_dtype=torch.bfloat16,
                              quant_config=_serialized(), prefix="proj")
    w = torch.randn(128, 64)
    tensors = {f"proj.{k}": v for k, v in _serialized().quantize_weight(w).items()}
    tensors["proj.weight_scale"] = torch.ones((), dtype=dtype)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"'proj.weight_scale' \(model.safetensors\) → 'proj.weight_scale': "
                                              rf"PerTensorScaleParameter: expected a float tensor \(torch.float32\), "
                                              rf"found {dtype}"):
        load_checkpoint(One(layer), tmp_path)


def test_other_integers_widen(tmp_path) -> None:
    """Only packed words refuse a narrower integer: an int32 position_ids or num_batches_tracked into an int64 buffer
    (JAX/Flax conversions) loads as before."""
    model = One(ReplicatedLinear(8, 4, bias=False, params_dtype=torch.float32, prefix="proj"))
    model.register_buffer("position_ids", torch.zeros(1, 6, dtype=torch.int64))
    ids = torch.arange(6, dtype=torch.int32).reshape(1, 6)
    save_file({"proj.weight": torch.randn(4, 8), "position_ids": ids}, str(tmp_path / "model.safetensors"))
    load_checkpoint(model, tmp_path)
    assert model.position_ids.dtype == torch.int64 and torch.equal(model.position_ids, ids.long())
