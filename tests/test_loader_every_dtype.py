"""Every dtype a safetensors file can hold is checked against the parameter's. Before, a tensor stored as uint16,
uint32, uint64, complex64 or float8_e8m0 (dtypes missing from the loader's table) skipped the check: a uint16 weight
loaded into a float layer silently (1 became 1.0), a complex one lost its imaginary part with torch's warning only,
and a uint16 AWQ ``qweight`` was taken although int16 is refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import SAFETENSORS_DTYPES, load_checkpoint

ODD = [torch.uint16, torch.uint32, torch.uint64, torch.complex64, torch.float8_e8m0fnu, torch.float8_e4m3fnuz]


def _model(**kw) -> torch.nn.Module:
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(8, 4, bias=False, prefix="lin", **kw)
    return model


@pytest.mark.parametrize("dtype", ODD, ids=str)
def test_a_weight_of_another_kind_is_refused_and_nothing_loaded(tmp_path, dtype) -> None:
    save_file({"lin.weight": torch.ones(4, 8).to(dtype)}, str(tmp_path / "model.safetensors"))
    model = _model(params_dtype=torch.bfloat16)
    before = model.lin.weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    text = str(info.value)
    assert "'lin.weight'" in text and f"found {dtype}" in text, text
    assert "expected a float tensor (torch.bfloat16)" in text or "float8 formats are not converted" in text, text
    assert torch.equal(model.lin.weight.detach().view(torch.int16), before.view(torch.int16))  # (nothing half-loaded)


def test_the_table_holds_every_dtype_safetensors_writes_from_torch() -> None:
    """The loader's table against what safetensors itself writes for each torch dtype it can store."""
    from safetensors.torch import _TYPES  # (private: read here only to hold our table to it)

    missing = {name: dtype for name, dtype in _TYPES.items() if SAFETENSORS_DTYPES.get(name) != dtype}
    assert not missing, missing


def test_a_uint16_awq_qweight_is_refused_like_int16(tmp_path) -> None:
    from fvq_awq.config import AWQConfig
    from fvq_awq.quantizer import quantize_weight

    tensors = {f"lin.{k}": v for k, v in quantize_weight(torch.randn(16, 256) / 16, None, group_size=128).items()}
    tensors["lin.qweight"] = tensors["lin.qweight"].to(torch.uint16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(256, 16, bias=False, params_dtype=torch.bfloat16, quant_config=AWQConfig(group_size=128),
                                 prefix="lin")
    with pytest.raises(CheckpointError, match=r"'lin\.qweight': expected a torch\.int32 tensor, found torch\.uint16: a "
                                              r"16-bit integer cannot hold"):
        load_checkpoint(model, tmp_path)


def test_a_dtype_torch_cannot_hold_is_named(tmp_path, monkeypatch) -> None:
    """A dtype string with no torch dtype (F4, F6_E2M3 of newer writers) is a CheckpointError naming the tensor."""
    import fastvideo_quant.loader.files as files

    save_file({"lin.weight": torch.ones(4, 8, dtype=torch.uint16)}, str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(files, "SAFETENSORS_DTYPES", {k: v for k, v in files.SAFETENSORS_DTYPES.items() if k != "U16"})
    with pytest.raises(CheckpointError, match=r"checkpoint tensor 'lin\.weight' is stored as safetensors dtype 'U16', "
                                              r"which has no torch dtype here"):
        load_checkpoint(_model(), tmp_path)
