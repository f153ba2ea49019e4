"""Weight scales stored as their reciprocal (448 / amax where fp8 reads amax / 448 — the trap docs/formats.md warns of,
``weight_scale_inv`` being a multiplier despite its name): finite and > 0, so every check passes, and the outputs come
out ~1e5 times too large. (Was: loaded silently.) Now one Fp8ScaleWarning a load, naming the layers and the largest
implied weight (448 x scale), above fvq_fp8.plausible.IMPLAUSIBLE_WEIGHT; the load still goes through."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from fvq_fp8 import Fp8Config, plausible
from fvq_fp8.plausible import IMPLAUSIBLE_WEIGHT, Fp8ScaleWarning
from safetensors.torch import load_file, save_file

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config

SECTIONS = {"tensor": {"quant_method": "fp8", "activation_scheme": "dynamic"},
            "channel": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_scale_strategy": "channel"},
            "block": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}
NAMES = ("a", "b", "c", "d")


def _checkpoint(path, section: dict, reciprocal: tuple[str, ...] = (), scale: float = 1.0) -> None:
    config = Fp8Config.from_config(section)
    tensors = {}
    torch.manual_seed(0)
    for name in NAMES:
        w = torch.randn(256, 256) * scale
        tensors |= {f"{name}.{k}": v for k, v in config.quantize_weight(w, prefix=name).items()}
    for key in list(tensors):
        if key.rpartition(".")[0] in reciprocal and key.rpartition(".")[2] in ("weight_scale", "weight_scale_inv"):
            tensors[key] = 1.0 / tensors[key]
    path.mkdir(exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"quantization_config": section}))


def _load(path) -> tuple[torch.nn.ModuleDict, list[warnings.WarningMessage]]:
    config = resolve_quant_config(checkpoint=path)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(256, 256, bias=False, quant_config=config, prefix=n) for n in NAMES})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(model, path)
    return model, [w for w in caught if issubclass(w.category, Fp8ScaleWarning)]


@pytest.mark.parametrize("strategy", sorted(SECTIONS))
def test_reciprocal_scales_warn_once_naming_the_layers(tmp_path, strategy):
    _checkpoint(tmp_path, SECTIONS[strategy], reciprocal=("b", "c", "d"))
    model, caught = _load(tmp_path)
    assert len(caught) == 1, [str(w.message) for w in caught]  # once for the load, not once a layer
    message = str(caught[0].message)
    assert message.startswith("fp8: the weight scales of layer 'b' imply de-quantized weights up to |w| = "), message
    assert message.endswith("(the same for 2 more layer(s): 'c', 'd')"), message
    assert "'a'" not in message, message
    scale = "weight_scale_inv" if strategy == "block" else "weight_scale"
    implied = float(getattr(model["b"], scale).max()) * 448
    assert f"|w| = {implied:.3g} " in message and f"in 'b.{scale}'" in message, message
    assert "stores each scale as its reciprocal" in message and "not an error" in message, message
    assert implied > IMPLAUSIBLE_WEIGHT
    x = torch.randn(2, 256)
    assert model["b"](x)[0].abs().max() > 1e4  # (loaded as stored: the warning is what tells)
    # a second load (a fresh model) warns again: nothing is left over from the first
    assert len(_load(tmp_path)[1]) == 1


@pytest.mark.parametrize("strategy", sorted(SECTIONS))
def test_plausible_scales_do_not_warn(tmp_path, strategy):
    """Large weights that are still plausible (|w| up to ~2e3, far above real layers') load without a warning."""
    _checkpoint(tmp_path, SECTIONS[strategy], scale=500.0)
    assert _load(tmp_path)[1] == []


def test_a_failed_load_warns_nothing_and_leaves_nothing_for_the_next(tmp_path):
    """A load whose validation fails (a NaN scale in 'a') beside a reciprocal scale ('b') raises and does not warn;
    a later good load of another model is not told about the first model's layers. (Was, with the warning's notes
    kept in the module between loads: the good load warned about the failed model's layer.)"""
    bad, good = tmp_path / "bad", tmp_path / "good"
    _checkpoint(bad, SECTIONS["tensor"], reciprocal=("b",))
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["a.weight_scale"] = torch.tensor(float("nan"))
    save_file(tensors, str(bad / "model.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightLoadError):
            _load(bad)
    assert not [w for w in caught if issubclass(w.category, Fp8ScaleWarning)]
    _checkpoint(good, SECTIONS["tensor"])
    assert _load(good)[1] == []


def test_the_check_costs_nothing_on_the_forward_path(tmp_path, monkeypatch):
    _checkpoint(tmp_path, SECTIONS["tensor"], reciprocal=("a",))
    model, caught = _load(tmp_path)
    assert len(caught) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("plausible.implausible called on the forward path")

    monkeypatch.setattr(plausible, "implausible", refuse)
    model["a"](torch.randn(3, 256))


def test_tensors_set_by_hand_warn_through_process_weights_after_loading(tmp_path):
    """fastvideo_quant.processing.process_weights_after_loading(model), the route for tensors set by hand, checks them
    as a load does."""
    from fastvideo_quant.processing import process_weights_after_loading

    config = Fp8Config.from_config(SECTIONS["tensor"])
    model = torch.nn.ModuleDict({"solo": ReplicatedLinear(256, 256, bias=False, quant_config=config, prefix="solo")})
    layer = model["solo"]
    stored = config.quantize_weight(torch.randn(256, 256), prefix="solo")
    layer.weight.data.copy_(stored["weight"])
    layer.weight_scale.data.copy_(1.0 / stored["weight_scale"].reshape(-1))
    layer.weight_scale.loaded_mask.fill_(1)
    with pytest.warns(Fp8ScaleWarning, match=r"the weight scales of layer 'solo' imply") as record:
        process_weights_after_loading(model)
    assert len([w for w in record if issubclass(w.category, Fp8ScaleWarning)]) == 1


def test_a_layer_processed_by_a_direct_call_warns_for_itself():
    """vLLM's loader loop calls each layer's process_weights_after_loading: the layer's warning is issued there, once.
    (Was, for a moment: dropped, since the loader's model-wide pass issues the warnings validate_loaded_weights
    returns and the direct call had no such pass.)"""
    config = Fp8Config.from_config(SECTIONS["tensor"])
    layer = ReplicatedLinear(256, 256, bias=False, quant_config=config, prefix="solo")
    stored = config.quantize_weight(torch.randn(256, 256), prefix="solo")
    layer.weight.data.copy_(stored["weight"])
    layer.weight_scale.data.copy_(1.0 / stored["weight_scale"].reshape(-1))
    layer.weight_scale.loaded_mask.fill_(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.quant_method.process_weights_after_loading(layer)
    found = [str(w.message) for w in caught if issubclass(w.category, Fp8ScaleWarning)]
    assert len(found) == 1 and found[0].startswith("fp8: the weight scales of layer 'solo' imply"), found
