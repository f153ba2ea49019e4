"""A float checkpoint loaded into layers built to read a quantized one, in a model of one quantized layer: the error
says to quantize on load (or, for a method that cannot, to run ``fvq quantize``), never to add that layer to the skip
list, which would leave nothing quantized.

(Was: beside the float-checkpoint line, "module 'proj' is stored unquantized ... add 'proj' to the quantization config's
skip list": the line is left out when every quantized layer is stored float, but was counted from two layers up. A
checkpoint whose config.json declares fp8 over float weights had only that line, and from two layers up no hint.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config

SERIALIZED = {"quant_method": "fp8", "activation_scheme": "dynamic"}


def _model(config, count: int = 1) -> torch.nn.Module:
    names = ["proj", "proj_2"][:count]
    return torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, params_dtype=torch.bfloat16, prefix=n,
                                                    quant_config=config) for n in names})


def _float_checkpoint(path: Path, count: int = 1, declared: dict | None = None) -> Path:
    path.mkdir()
    save_file({f"{n}.weight": torch.randn(64, 64).bfloat16() for n in ["proj", "proj_2"][:count]},
              str(path / "model.safetensors"))
    if declared is not None:
        (path / "config.json").write_text(json.dumps({"quantization_config": declared}))
    return path


def _error(model: torch.nn.Module, path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    return str(err.value)


@pytest.mark.parametrize("one_file", [False, True], ids=["directory", "file"])
def test_a_float_checkpoint_of_one_layer_is_told_to_quantize_on_load(tmp_path, one_file):
    ckpt = _float_checkpoint(tmp_path / "ckpt")
    path = ckpt / "model.safetensors" if one_file else ckpt
    fp8 = resolve_quant_config(hf_config={"quantization_config": SERIALIZED})
    msg = _error(_model(fp8), path)
    assert "stored unquantized" not in msg and "skip list" not in msg, msg
    assert ("stores the weights of the model's 'fp8' layers ('proj') as torch.bfloat16, but those layers were built to "
            "read a checkpoint stored quantized (is_checkpoint_fp8_serialized=True): to quantize this float checkpoint "
            "on load, build them with quant_config=resolve_quant_config('fp8')") in msg, msg
    load_checkpoint(_model(resolve_quant_config("fp8")), path)  # the advice given


@pytest.mark.parametrize("count", [1, 2])
def test_a_float_checkpoint_whose_config_declares_fp8_is_told_so(tmp_path, count):
    """Its config.json declares fp8 stored quantized: the layers built from it read fp8 weights; the fix removes the
    declaration (a load of online layers checks it first), then quantizes on load."""
    ckpt = _float_checkpoint(tmp_path / "ckpt", count, SERIALIZED)
    msg = _error(_model(resolve_quant_config(checkpoint=ckpt), count), ckpt)
    layers = "('proj')" if count == 1 else "('proj', 'proj_2')"
    first = msg.splitlines()[1].strip()
    assert first == (
        f"the checkpoint declares 'fp8' ({ckpt / 'config.json'}'s 'quantization_config') but stores the weights of "
        f"every one of the model's 'fp8' layers {layers} as torch.bfloat16, none quantized, and those layers were "
        "built from its config to read a checkpoint stored quantized (is_checkpoint_fp8_serialized=True): it is a float "
        f"checkpoint (a skip list naming them all would quantize nothing). Remove {ckpt / 'config.json'}'s "
        "'quantization_config' (it declares quantized tensors the checkpoint does not hold; a load checks it first), "
        "then to quantize it on load, build them with quant_config=resolve_quant_config('fp8') (from "
        "fastvideo_quant.quantization); or load the quantized checkpoint that config was written for"), first
    assert "stored unquantized" not in msg, msg
    (ckpt / "config.json").write_text(json.dumps({}))
    load_checkpoint(_model(resolve_quant_config("fp8"), count), ckpt)  # the advice given


def test_one_module_left_float_in_a_quantized_checkpoint_is_still_told_to_skip_it(tmp_path):
    """Two layers, one stored quantized: the float one was left out of the config's skip list (AutoAWQ's way), and
    that stays the advice; no float-checkpoint line."""
    fp8 = resolve_quant_config(hf_config={"quantization_config": SERIALIZED})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tensors = {f"proj.{k}": v for k, v in fp8.quantize_weight(torch.randn(64, 64), prefix="proj").items()}
    save_file({**tensors, "proj_2.weight": torch.randn(64, 64).bfloat16()}, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({"quantization_config": SERIALIZED}))
    msg = _error(_model(resolve_quant_config(checkpoint=ckpt), 2), ckpt)
    assert "module 'proj_2' is stored unquantized ('proj_2.weight'), but the model built it as a quantized 'fp8' " \
           "layer: add 'proj_2' to the quantization config's skip list (ignored_layers" in msg, msg
    assert "float checkpoint" not in msg, msg


def _three(config) -> torch.nn.Module:
    return torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, params_dtype=torch.bfloat16, prefix=n,
                                                    quant_config=config) for n in ["proj", "proj_2", "head"]})


def test_the_float_checkpoint_line_keeps_the_skip_list_and_settings(tmp_path):
    """Layers built from a serialized fp8 config with a skip list and per-channel scales, over a float checkpoint: the
    line names only the layers built quantized, and its call keeps the skip list and the settings, so the layers built
    by it leave 'head' in float and quantize the others per channel. (Was: 'head' named among the fp8 layers, and
    resolve_quant_config('fp8'), which quantized 'head' too, per tensor.)"""
    path = tmp_path / "ckpt"
    path.mkdir()
    save_file({f"{n}.weight": torch.randn(64, 64).bfloat16() for n in ["proj", "proj_2", "head"]},
              str(path / "model.safetensors"))
    section = {**SERIALIZED, "ignored_layers": ["head"], "weight_scale_strategy": "channel"}
    msg = _error(_three(resolve_quant_config(hf_config={"quantization_config": section})), path)
    line = msg.splitlines()[1].strip()
    assert line.startswith("the checkpoint declares no quantization method (no config.json quantization_config) and "
                           "stores the weights of the model's 'fp8' layers ('proj', 'proj_2') as torch.bfloat16"), line
    call = ("resolve_quant_config(hf_config={'quantization_config': {'quant_method': 'fp8', 'activation_scheme': "
            "'dynamic', 'ignored_layers': ['head'], 'weight_scale_strategy': 'channel', "
            "'is_checkpoint_fp8_serialized': False}})")
    assert line.endswith(f"build them with quant_config={call} (from fastvideo_quant.quantization), which leaves 'head' "
                         "unquantized, as its skip list does now"), line
    model = _three(eval(call))  # noqa: S307 - the advice given, as written
    load_checkpoint(model, path)
    assert model["head"].weight.dtype == torch.bfloat16
    assert model["proj"].weight.dtype == torch.float8_e4m3fn and model["proj"].weight_scale.numel() == 64


def test_a_declared_float_checkpoint_line_keeps_the_skip_list(tmp_path):
    """The same through a config.json declaring fp8 with a skip list over float weights."""
    path = tmp_path / "ckpt"
    path.mkdir()
    save_file({f"{n}.weight": torch.randn(64, 64).bfloat16() for n in ["proj", "proj_2", "head"]},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"quantization_config": {**SERIALIZED, "ignored_layers": ["head"]}}))
    msg = _error(_three(resolve_quant_config(checkpoint=path)), path)
    line = msg.splitlines()[1].strip()
    assert "stores the weights of every one of the model's 'fp8' layers ('proj', 'proj_2') as torch.bfloat16" in line, line
    call = ("resolve_quant_config(hf_config={'quantization_config': {'quant_method': 'fp8', 'activation_scheme': "
            "'dynamic', 'ignored_layers': ['head'], 'is_checkpoint_fp8_serialized': False}})")
    assert f"then to quantize it on load, build them with quant_config={call} (from fastvideo_quant.quantization), " \
           "which leaves 'head' unquantized, as its skip list does now; or load the quantized checkpoint" in line, line
    (path / "config.json").write_text(json.dumps({}))
    model = _three(eval(call))  # noqa: S307 - the advice given, as written
    load_checkpoint(model, path)
    assert model["head"].weight.dtype == torch.bfloat16 and model["proj_2"].weight.dtype == torch.float8_e4m3fn


def test_a_compressed_tensors_configs_float_checkpoint_line_sets_the_skip_list(tmp_path):
    """A compressed-tensors section gives no section of the fp8 format on load (its settings are the config groups'):
    the advice is the method's default with the skip list set on it, which loads. (Was, briefly: "from_config of its
    section with is_checkpoint_fp8_serialized=True turned off", which a compressed-tensors section does not read.)"""
    args = {"num_bits": 8, "type": "float", "symmetric": True}
    section = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["head"], "config_groups": {
        "g0": {"targets": ["Linear"], "weights": {**args, "strategy": "channel", "dynamic": False},
               "input_activations": {**args, "strategy": "token", "dynamic": True}}}}
    path = tmp_path / "ckpt"
    path.mkdir()
    save_file({f"{n}.weight": torch.randn(64, 64).bfloat16() for n in ["proj", "proj_2", "head"]},
              str(path / "model.safetensors"))
    line = _error(_three(resolve_quant_config(hf_config={"quantization_config": section})), path).splitlines()[1]
    assert line.strip().endswith(
        "the model's 'fp8' layers ('proj', 'proj_2') as torch.bfloat16, but those layers were built to read a checkpoint "
        "stored quantized (is_checkpoint_fp8_serialized=True): to quantize this float checkpoint on load, build them with "
        "quant_config=resolve_quant_config('fp8') (from fastvideo_quant.quantization) and set its modules_to_not_convert "
        "to ['head'] before building the model, to leave those unquantized as its skip list does now"), line
    config = resolve_quant_config("fp8")
    config.modules_to_not_convert = ["head"]  # the advice given
    model = _three(config)
    load_checkpoint(model, path)
    assert model["head"].weight.dtype == torch.bfloat16 and model["proj"].weight.dtype == torch.float8_e4m3fn


def test_the_on_load_call_keeps_the_configs_load_time_settings():
    """int8's kernel backend is a load-time key: the call the float-checkpoint hint gives keeps it as load_options
    (a section without it, or the bare name, built layers on the default backend)."""
    from fvq_int8.config import Int8Config

    from fastvideo_quant.loader.config_source import online_build

    call = online_build(Int8Config(backend="bitsandbytes"))
    assert call == "resolve_quant_config('int8', load_options={'fvq_backend': 'bitsandbytes'})", call
    call = online_build(Int8Config(threshold=6.0, backend="bitsandbytes"))
    assert call.endswith("}}, load_options={'fvq_backend': 'bitsandbytes'})"), call
    built = eval(call)  # noqa: S307 - the advice given, as written
    assert built.backend == "bitsandbytes" and built.threshold == 6.0 and not built.reads_quantized_checkpoint()
    assert online_build(Int8Config()) == "resolve_quant_config('int8')"
