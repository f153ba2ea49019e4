"""Stored tensors of another fp8 variant than the config declares: one hint a setting, naming the config key and the
value the tensors imply (``Fp8Config.stored_tensor_hints``). Shapes are read from real safetensors files written here.
The loader puts the hints first in a failed load's CheckpointError (before: one line a tensor — "expected a scalar,
found (256, 1)", "unexpected tensor ...input_scale" — with nothing pointing at the key)."""

from __future__ import annotations

import re

import pytest
import torch
from fvq_fp8 import Fp8Config
from safetensors import safe_open
from safetensors.torch import save_file

MODULES = {f"blocks.{i}.{m}": (256, 256) for i in range(3) for m in ("attn.q_proj", "attn.k_proj", "mlp.down_proj")}
MODULES["proj_out"] = (64, 256)


def _checkpoint(tmp_path, scale: str, input_scale: bool = False, scale_name: str = "weight_scale") -> dict:
    """name → (dtype, shape) of a checkpoint whose weight scales are ``scale``: tensor, channel or block (128x128)."""
    tensors = {}
    for module, (out, inp) in MODULES.items():
        tensors[f"{module}.weight"] = torch.zeros(out, inp, dtype=torch.float8_e4m3fn)
        shape = {"tensor": (), "channel": (out, 1), "block": (-(-out // 128), -(-inp // 128))}[scale]
        tensors[f"{module}.{scale_name}"] = torch.ones(shape)
        if input_scale:
            tensors[f"{module}.input_scale"] = torch.ones(())
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    with safe_open(str(path), "pt") as f:
        return {n: (None, tuple(f.get_slice(n).get_shape())) for n in f.keys()}


def _ct(strategy="tensor", dynamic=True, block=None):
    weights = {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": False}
    if block:
        weights["block_structure"] = block
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": weights,
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": dynamic}}}}


FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic"}


@pytest.mark.parametrize("config,stored,expected", [
    (FP8, {"scale": "channel"}, r"10 per-channel \(\[out, 1\]\) weight scale\(s\), e.g. 'blocks.0.attn.k_proj."
                                r"weight_scale' \(256, 1\).*fp8 config declares per-tensor.*strategy 'channel'; set "
                                r"\"weight_scale_strategy\": \"channel\""),
    (_ct(), {"scale": "channel"}, r"compressed-tensors config declares per-tensor.*set config_groups.<group>.weights."
                                  r"strategy to 'channel' in every config group"),
    ({**FP8, "weight_scale_strategy": "channel"}, {"scale": "tensor"}, r"strategy 'tensor'; remove "
                                                                       r"\"weight_scale_strategy\""),
    ({**FP8, "weight_block_size": [128, 128]}, {"scale": "tensor"},
     r"10 per-tensor weight scale.*declares block weight scales.*remove \"weight_block_size\""),
    (FP8, {"scale": "block", "scale_name": "weight_scale_inv"}, r"set \"weight_block_size\": \[128, 128\]"),
    (_ct("channel"), {"scale": "block"}, r"strategy to 'block' with block_structure \[128, 128\]"),
    (FP8, {"scale": "tensor", "input_scale": True}, r"10 input_scale tensor\(s\) \(static activation scales\).*declares "
                                                    r"dynamic activations.*set \"activation_scheme\": \"static\""),
    (_ct(), {"scale": "tensor", "input_scale": True}, r"input_activations.dynamic to false"),
    ({**FP8, "activation_scheme": "static"}, {"scale": "tensor"},
     r"no input_scale tensor \(dynamic activations\).*set \"activation_scheme\": \"dynamic\""),
])
def test_one_hint_names_the_key_and_the_value_the_tensors_imply(tmp_path, config, stored, expected):
    hints = Fp8Config.from_config(config).stored_tensor_hints(_checkpoint(tmp_path, **stored))
    assert len(hints) == 1, hints  # once for the checkpoint, not once a layer
    assert re.search(expected, hints[0]), hints[0]
    # where the key is set is the loader's to say: a checkpoint given as one file has no config.json read, and one
    # beside it may already say so (the hint said "in the checkpoint's config.json ... resolve_quant_config(checkpoint=...)")
    assert "config.json" not in hints[0] and "resolve_quant_config" not in hints[0], hints[0]


@pytest.mark.parametrize("config,stored", [
    (FP8, {"scale": "tensor"}),
    ({**FP8, "weight_scale_strategy": "channel"}, {"scale": "channel"}),
    ({**FP8, "weight_block_size": [128, 128]}, {"scale": "block", "scale_name": "weight_scale_inv"}),
    (_ct("block", block=[128, 128]), {"scale": "block"}),
    ({**FP8, "activation_scheme": "static"}, {"scale": "tensor", "input_scale": True}),
])
def test_no_hint_for_tensors_that_fit(tmp_path, config, stored):
    assert Fp8Config.from_config(config).stored_tensor_hints(_checkpoint(tmp_path, **stored)) == []


def test_the_loader_puts_the_hint_first(tmp_path) -> None:
    import json

    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    channel = Fp8Config.from_config({**FP8, "weight_scale_strategy": "channel"})
    tensors = {}
    for name in ("a", "b"):
        tensors |= {f"{name}.{k}": v for k, v in channel.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": FP8}))  # (says per-tensor: wrong)
    config = resolve_quant_config(checkpoint=tmp_path)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, quant_config=config, prefix=n) for n in "ab"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    lines = str(info.value).splitlines()
    assert "per-channel" in lines[1] and '"weight_scale_strategy": "channel"' in lines[1], lines[1]
    assert sum("weight_scale_strategy" in line for line in lines) == 1, lines


# --- a block size the grids do not fit ---------------------------------------------------------------------------
@pytest.mark.parametrize("config,expected", [
    ({**FP8, "weight_block_size": [64, 128]}, r"^weight_block_size: the fp8 config says \[64, 128\]; the stored "
     r"weight_scale_inv grids of all 10 layers \(each \(ceil\(out/bn\), ceil\(in/bk\)\) of its weight, e.g. "
     r"'blocks.0.attn.k_proj.weight_scale_inv' \(2, 2\) for weight \(256, 256\)\) fit \[128, 128\] and no other "
     r"power-of-two block size: set \"weight_block_size\": \[128, 128\]$"),
    ({**FP8, "weight_block_size": [256, 256]}, r"says \[256, 256\];.* fit \[128, 128\] .*: set \"weight_block_size\": "
                                               r"\[128, 128\]$"),
    (_ct("block", block=[64, 64]), r"^config_groups.<group>.weights.block_structure: the compressed-tensors config says "
                                   r"\[64, 64\]; the stored weight_scale grids .* set config_groups.<group>.weights."
                                   r"block_structure to \[128, 128\] in every config group$"),
])
def test_a_block_size_the_grids_do_not_fit_gets_the_size_they_imply(tmp_path, config, expected):
    """(Was: no hint — the load listed each grid's shape, and one line blamed packed_modules_mapping's order, "the
    mapping is positional", for a q_proj grid the wrong block size made look like k's.)"""
    scale_name = "weight_scale" if config.get("quant_method") == "compressed-tensors" else "weight_scale_inv"
    hints = Fp8Config.from_config(config).stored_tensor_hints(_checkpoint(tmp_path, "block", scale_name=scale_name))
    assert len(hints) == 1, hints
    assert re.search(expected, hints[0]), hints[0]
    assert "config.json" not in hints[0] and "resolve_quant_config" not in hints[0], hints[0]


def _grids(block: int, *shapes: tuple[int, int]) -> dict:
    """name → (dtype, shape) of fp8-format block layers of weight ``shapes`` at block size ``block``."""
    stored = {}
    for i, (out, inp) in enumerate(shapes):
        stored[f"l{i}.weight"] = (torch.float8_e4m3fn, (out, inp))
        stored[f"l{i}.weight_scale_inv"] = (torch.float32, (-(-out // block), -(-inp // block)))
    return stored


def test_a_block_size_the_grids_leave_open_is_not_guessed():
    """Grids of one block fit any block size at least the weight's: with every layer that small the size is open, so
    no size is named. (Was: the strategy hint tried [128, 128] first and named it whatever the grids allowed.)"""
    small = _grids(64, (64, 64), (48, 64))  # (1, 1) grids: bn, bk of 64 up to 4096 all fit
    assert Fp8Config.from_config({**FP8, "weight_block_size": [32, 32]}).stored_tensor_hints(small) == []
    [hint] = Fp8Config.from_config(FP8).stored_tensor_hints(small)
    assert 'set "weight_block_size": [block_n, block_k]' in hint, hint
    # one layer of several blocks settles it, for every layer
    assert 'set "weight_block_size": [64, 64]' in Fp8Config.from_config(FP8).stored_tensor_hints(
        _grids(64, (64, 64), (256, 192)))[0]
    # grids no block size gives (a fused tensor's stacked grids, a corrupt shape): no size named either
    odd = _grids(128, (256, 256)) | {"l0.weight_scale_inv": (torch.float32, (3, 2))}
    assert Fp8Config.from_config({**FP8, "weight_block_size": [64, 128]}).stored_tensor_hints(odd) == []


def test_the_loader_puts_the_block_size_hint_first(tmp_path) -> None:
    import json

    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    written = Fp8Config.from_config({**FP8, "weight_block_size": [128, 128]})
    tensors = {}
    for name in ("a", "b"):
        tensors |= {f"{name}.{k}": v for k, v in written.quantize_weight(torch.randn(256, 256), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {**FP8, "weight_block_size": [64, 128]}}))
    config = resolve_quant_config(checkpoint=tmp_path)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(256, 256, bias=False, quant_config=config, prefix=n) for n in "ab"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    lines = str(info.value).splitlines()
    assert lines[1].strip().startswith("weight_block_size: the fp8 config says [64, 128]"), lines[1]
    assert lines[1].endswith('set "weight_block_size": [128, 128]'), lines[1]


# --- input_scale for some layers only ------------------------------------------------------------------------------
@pytest.mark.parametrize("config,fix", [
    (FP8, r"declare it in a compressed-tensors config \(the fp8 format has one activation scheme for all layers\): a "
          r"config group for those layers with input_activations.dynamic false$"),
    (_ct(), r"give those layers a config group of their own with input_activations.dynamic false \(strategy 'tensor'\)$"),
])
def test_an_input_scale_of_some_layers_only_does_not_advise_static(tmp_path, config, fix):
    """(Was: "set "activation_scheme": "static"" for one stray input_scale; following it refused every other layer as
    missing its input_scale.) Static is advised only when every fp8 layer stores one; otherwise the hint names the
    layers that do and the others."""
    stored = _checkpoint(tmp_path, "tensor") | {"blocks.1.attn.q_proj.input_scale": (None, ())}
    [hint] = Fp8Config.from_config(config).stored_tensor_hints(stored)
    assert re.search(r"^the checkpoint stores an input_scale \(static activation scale\) for 1 of its 10 fp8 layers "
                     r"\('blocks.1.attn.q_proj'\) and none for the others \('blocks.0.attn.k_proj', 'blocks.0.attn."
                     r"q_proj', 'blocks.0.mlp.down_proj' and 6 more\);.* static ones would need an input_scale for every "
                     r"layer. If those tensors are stray, remove them from the checkpoint; if the checkpoint runs static "
                     r"activations for those layers only, " + fix, hint), hint
    assert "activation_scheme\": \"static" not in hint and "dynamic to false" not in hint, hint


@pytest.mark.parametrize("every_layer", [False, True], ids=["one-layer", "every-layer"])
@pytest.mark.parametrize("config", [{**FP8, "weight_block_size": [128, 128]}, _ct("block", block=[128, 128])],
                         ids=["fp8", "compressed-tensors"])
def test_input_scales_beside_block_weights_are_called_stray(tmp_path, config, every_layer):
    """Block-scaled weights run dynamic activations only: an input_scale beside them — for one layer or for every
    one — is no setting's, and the advice is to remove it. (Was: "declare static activations" / "a config group with
    input_activations.dynamic false", which the fp8 config refuses for block weights.)"""
    stored = _checkpoint(tmp_path, "block", input_scale=every_layer, scale_name="weight_scale_inv" if "weight_block_size"
                         in config else "weight_scale")
    stored |= {"blocks.1.attn.q_proj.input_scale": (None, ())}
    hints = Fp8Config.from_config(config).stored_tensor_hints(stored)
    assert len(hints) == 1 and hints[0].startswith(
        f"the checkpoint stores {10 if every_layer else 1} input_scale tensor(s) (static activation scales), e.g. "), hints
    assert hints[0].endswith("so no setting reads those tensors: remove them from the checkpoint"), hints
    assert "static\"" not in hints[0] and "dynamic false" not in hints[0], hints


def test_the_stray_input_scale_hint_is_first_in_the_load(tmp_path) -> None:
    import json

    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    config = Fp8Config.from_config(FP8)
    tensors = {}
    for name in ("a", "b"):
        tensors |= {f"{name}.{k}": v for k, v in config.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    tensors["a.input_scale"] = torch.ones(())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": FP8}))
    config = resolve_quant_config(checkpoint=tmp_path)
    model = torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, quant_config=config, prefix=n) for n in "ab"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    lines = str(info.value).splitlines()
    assert "for 1 of its 2 fp8 layers ('a') and none for the others ('b')" in lines[1], lines[1]
    assert '"activation_scheme": "static"' not in str(info.value)
