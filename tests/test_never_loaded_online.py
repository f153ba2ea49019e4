"""A layer that quantizes its float weight on load (fp8 and int8 online) starts that weight as NaN, so processing one
no checkpoint reached is refused, saying so. Before, it was created with ``torch.empty``: processing quantized whatever
memory that held and the layer ran on garbage (passing 16 runs in 20 for fp8), or failed as a "corrupt checkpoint"
for a load that never happened."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import NotProcessedError, WeightLoadError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.processing import process_weights_after_loading
from fastvideo_quant.quantization import resolve_quant_config

METHODS = ["fp8", "int8"]


def _layer(method: str) -> ReplicatedLinear:
    return ReplicatedLinear(64, 32, bias=False, quant_config=resolve_quant_config(method),
                            params_dtype=torch.bfloat16, prefix="blocks.0.proj")


@pytest.mark.parametrize("method", METHODS)
def test_processing_a_layer_never_loaded_is_refused_as_such(method) -> None:
    layer = _layer(method)
    with pytest.raises(WeightLoadError) as info:
        process_weights_after_loading(layer)
    text = str(info.value)
    assert f"{method} layer 'blocks.0.proj': tensor 'blocks.0.proj.weight' (torch.bfloat16, shape (32, 64)): expected " \
           "every entry finite, found 2048 of 2048 that are NaN, as the method creates it until a checkpoint tensor " \
           "is loaded into it: it was never loaded" in text, text
    assert "corrupt" not in text, text
    with pytest.raises(NotProcessedError):
        layer(torch.randn(2, 64, dtype=torch.bfloat16))


@pytest.mark.parametrize("method", METHODS)
def test_a_weight_set_by_hand_then_processed_runs(method) -> None:
    """Setting the weight without a checkpoint (weight.data.copy_) is a load as far as processing goes."""
    layer = _layer(method)
    w = torch.randn(32, 64) / 8
    layer.weight.data.copy_(w)
    process_weights_after_loading(layer)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    out = layer(x)[0].float()
    ref = x.float() @ w.t()
    assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_processing_after_a_non_strict_load_that_lacked_the_weight(tmp_path, method) -> None:
    model = torch.nn.Module()
    model.a = ReplicatedLinear(64, 32, bias=False, quant_config=resolve_quant_config(method),
                               params_dtype=torch.bfloat16, prefix="a")
    model.b = ReplicatedLinear(64, 32, bias=False, quant_config=resolve_quant_config(method),
                               params_dtype=torch.bfloat16, prefix="b")
    save_file({"a.weight": torch.randn(32, 64)}, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"'b\.weight'"):  # (the load leaves 'b' unprocessed, naming it)
        load_checkpoint(model, tmp_path, strict=False)
    with pytest.raises(WeightLoadError, match=r"'b\.weight'.*that are NaN, as the method creates it until a "
                                              r"checkpoint tensor is loaded into it: it was never loaded"):
        process_weights_after_loading(model)  # (the missing tensor never copied in)


def test_a_nan_that_was_loaded_is_called_corrupt_not_never_loaded(tmp_path) -> None:
    """Only a weight the method created NaN, and that no load wrote, is "never loaded": an unquantized layer's bias
    stored as NaN (one element: all of it NaN) was reported as never loaded."""
    model = torch.nn.Module()
    model.head = ReplicatedLinear(8, 1, bias=True, prefix="head")
    save_file({"head.weight": torch.randn(1, 8), "head.bias": torch.tensor([float("nan")])},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    assert "never loaded" not in str(info.value) and "NaN or inf" in str(info.value), str(info.value)
    # (fp8 online: a float weight stored all NaN is the checkpoint's, not a load that never happened)
    model = torch.nn.Module()
    model.a = ReplicatedLinear(64, 32, bias=False, quant_config=resolve_quant_config("fp8"),
                               params_dtype=torch.bfloat16, prefix="a")
    save_file({"a.weight": torch.full((32, 64), float("nan"))}, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    assert "never loaded" not in str(info.value) and "NaN or inf" in str(info.value), str(info.value)
