"""A checkpoint that declares its quantization method, loaded into layers built otherwise: one diagnosis."""

from __future__ import annotations

import json

import pytest
import torch
from fvq_awq.config import AWQConfig
from safetensors.torch import load_file, save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization.selection import resolve_quant_config


def _fp8_checkpoint(path, config_json: bool = True):
    return _quantized_checkpoint(path, resolve_quant_config("fp8"), config_json)


def _net(qc) -> torch.nn.Module:
    net = torch.nn.Module()
    net.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(3))
    for i, block in enumerate(net.blocks):
        block.proj = ReplicatedLinear(32, 16, params_dtype=torch.bfloat16, quant_config=qc, prefix=f"blocks.{i}.proj")
    return net


def _lines(exc: pytest.ExceptionInfo) -> list[str]:
    return str(exc.value).splitlines()


def test_unquantized_model_and_a_quantized_checkpoint_is_one_line(tmp_path) -> None:
    ck = _fp8_checkpoint(tmp_path / "fp8")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(None), ck)
    assert len(_lines(err)) == 1
    text = str(err.value)
    assert f"checkpoint {str(ck)!r} is quantized with 'fp8' ({ck}/config.json's 'quantization_config' says so)" in text
    assert "the model's 3 layer(s) ('blocks.0.proj', 'blocks.1.proj', 'blocks.2.proj') were built without a " \
           "quant_config (unquantized)" in text
    assert f"quant_config=resolve_quant_config(checkpoint={str(ck)!r})" in text


def test_layers_of_another_method_are_named(tmp_path) -> None:
    ck = _fp8_checkpoint(tmp_path / "fp8")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(AWQConfig(group_size=32)), ck)
    assert len(_lines(err)) == 1
    assert "but the model's layers were built with 'awq' (3 layer(s): 'blocks.0.proj', 'blocks.1.proj', " \
           "'blocks.2.proj')" in str(err.value)


@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_same_method_built_for_online_quantization_is_named(tmp_path, method) -> None:
    online = resolve_quant_config(method)
    ck = _quantized_checkpoint(tmp_path / "ck", online, config_json=True)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(online), ck)
    assert len(_lines(err)) == 1
    key, value = next(iter(type(online).quantized_checkpoint_keys.items()))
    assert (f"the model's {method!r} layers were built to quantize float weights on load, while the checkpoint "
            f"stores them quantized ({key}={value!r})") in str(err.value)


def test_layers_built_from_the_checkpoint_load(tmp_path) -> None:
    ck = _fp8_checkpoint(tmp_path / "fp8")
    load_checkpoint(_net(resolve_quant_config(checkpoint=ck)), ck)


def test_a_float8_weight_with_a_scale_is_not_called_stored_unquantized(tmp_path) -> None:
    ck = _fp8_checkpoint(tmp_path / "fp8", config_json=False)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(AWQConfig(group_size=32)), ck)
    assert "stored unquantized" not in str(err.value) and "missing tensor for parameter 'blocks.0.proj.qweight'" in str(
        err.value)


def _quantized_checkpoint(path, online, config_json: bool):
    """What ``fvq quantize`` writes for ``online``'s method: three modules stored quantized."""
    stored = type(online).from_config({**online.to_dict(), **type(online).quantized_checkpoint_keys})
    path.mkdir()
    tensors = {f"blocks.{i}.proj.{k}": v for i in range(3) for k, v in stored.quantize_weight(torch.randn(16, 32)).items()}
    tensors |= {f"blocks.{i}.proj.bias": torch.randn(16) for i in range(3)}
    save_file(tensors, str(path / "model.safetensors"))
    if config_json:
        (path / "config.json").write_text(json.dumps({"quantization_config": stored.to_dict()}))
    return path


@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_a_quantized_checkpoint_without_its_config_into_online_layers_says_how_to_build_them(tmp_path, method) -> None:
    """A checkpoint stored quantized whose config.json is gone (nothing declares its method) loaded into layers built
    to quantize float weights on load: one diagnosis first, with the config the checkpoint needs."""
    online = resolve_quant_config(method)
    ck = _quantized_checkpoint(tmp_path / "ck", online, config_json=False)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(online), ck, strict=False)
    first = _lines(err)[1].strip()
    weight = load_file(str(ck / "model.safetensors"))["blocks.0.proj.weight"]
    key, value = next(iter(type(online).quantized_checkpoint_keys.items()))
    written = type(online).from_config({**online.to_dict(), key: value}).to_dict()
    assert first.startswith("modules 'blocks.0.proj', 'blocks.1.proj', 'blocks.2.proj' are stored quantized "
                            f"(their weight is {weight.dtype}), but the model built them as {method!r} layers that "
                            "quantize float weights on load"), first
    assert f"({key}={value!r}): quant_config=resolve_quant_config(hf_config={{'quantization_config': {written!r}}})" \
        in first
    built = resolve_quant_config(hf_config={"quantization_config": written})
    assert built.reads_quantized_checkpoint() and not online.reads_quantized_checkpoint()
    load_checkpoint(_net(built), ck)  # the config the hint names loads the checkpoint


def test_an_unreadable_declaration_is_a_warning_naming_the_file_not_silence(tmp_path) -> None:
    """A config.json that is not JSON: the declared-method check cannot run. The float tensors still load (each is
    checked), with a CheckpointWarning that names the checkpoint and what could not be read."""
    from fastvideo_quant.errors import CheckpointWarning

    net = _net(None)
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({f"blocks.{i}.proj.{k}": torch.randn(v.shape).to(v.dtype) for i, b in enumerate(net.blocks)
               for k, v in b.proj.state_dict().items()}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text('{"quantization_config": {"quant_method": "fp8",}')
    with pytest.warns(CheckpointWarning, match=rf"could not read checkpoint {str(ck)!r}'s quantization declaration, "
                                               r"so whether it matches the layers' method was not checked: .*JSON"):
        load_checkpoint(_net(None), ck)


def _float_checkpoint(path):
    path.mkdir()
    save_file({f"blocks.{i}.proj.{k}": v for i in range(3)
               for k, v in {"weight": torch.randn(16, 32).bfloat16(), "bias": torch.randn(16).bfloat16()}.items()},
              str(path / "model.safetensors"))
    return path


def test_a_float_checkpoint_into_layers_reading_a_quantized_one_is_summed_up_first(tmp_path) -> None:
    """Layers built from an fp8 checkpoint's config, given a bf16 checkpoint with no config.json: the per-tensor lines
    (a float8 weight expected, a weight_scale missing) follow one line that names the cause and the call."""
    fp8 = resolve_quant_config(checkpoint=_fp8_checkpoint(tmp_path / "fp8"))
    ck = _float_checkpoint(tmp_path / "bf16")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(fp8), ck)
    first = _lines(err)[1].strip()
    assert first == (
        "the checkpoint declares no quantization method (no config.json quantization_config) and stores the weights of "
        "the model's 'fp8' layers ('blocks.0.proj', 'blocks.1.proj', 'blocks.2.proj') as torch.bfloat16, but those "
        "layers were built to read a checkpoint stored quantized (is_checkpoint_fp8_serialized=True): to quantize this "
        "float checkpoint on load, build them with quant_config=resolve_quant_config('fp8') (from "
        "fastvideo_quant.quantization)"), first
    load_checkpoint(_net(resolve_quant_config("fp8")), ck)  # the call the line names loads it


def test_a_float_checkpoint_into_awq_layers_says_to_quantize_it_first(tmp_path) -> None:
    ck = _float_checkpoint(tmp_path / "bf16")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(AWQConfig(group_size=32)), ck)
    first = _lines(err)[1].strip()
    assert first.startswith("the checkpoint declares no quantization method (no config.json quantization_config) and "
                            "stores the weights of the model's 'awq' layers ('blocks.0.proj', 'blocks.1.proj', "
                            "'blocks.2.proj') as torch.bfloat16, but those layers were built to read a checkpoint "
                            f"stored quantized: 'awq' cannot quantize on load: quantize the checkpoint first (fvq "
                            f"quantize {str(ck)!r} --method awq --option group_size=32 --out DST)"), first


def test_the_same_method_with_other_settings_is_named_by_its_settings(tmp_path) -> None:
    """A dynamic-fp8 model given a static checkpoint (an input_scale per layer) and a per-tensor model given a
    per-channel one: the differing settings first, then the tensors."""
    static = type(resolve_quant_config("fp8")).from_config({"activation_scheme": "static",
                                                            "is_checkpoint_fp8_serialized": True})
    ck = tmp_path / "static"
    ck.mkdir()
    acts = torch.randn(8, 32)
    tensors = {f"blocks.{i}.proj.{k}": v for i in range(3)
               for k, v in static.quantize_weight(torch.randn(16, 32), activations=acts).items()}
    tensors |= {f"blocks.{i}.proj.bias": torch.randn(16) for i in range(3)}
    save_file(tensors, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps({"quantization_config": static.to_dict()}))
    dynamic = type(static).from_config({**static.to_dict(), "activation_scheme": "dynamic"})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(dynamic), ck)
    first = _lines(err)[1].strip()
    assert first.startswith("the checkpoint declares 'fp8' with activation_scheme='static' "
                            f"({ck}/config.json's 'quantization_config'), but the model's 3 layer(s) of that method "
                            "('blocks.0.proj', 'blocks.1.proj', 'blocks.2.proj') were built with "
                            "activation_scheme='dynamic', so their tensors differ"), first
    assert f"quant_config=resolve_quant_config(checkpoint={str(ck)!r})" in first
    load_checkpoint(_net(resolve_quant_config(checkpoint=ck)), ck)


@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_a_module_left_float_in_a_quantized_checkpoint_is_named_for_methods_whose_weight_keeps_its_name(
        tmp_path, method) -> None:
    """fp8 and int8 layers call their quantized tensor 'weight': the float weight of a module the tool left out maps
    onto it (a float-into-int8/float8 error, and a missing scale), so the hint must look at planned tensors too."""
    online = resolve_quant_config(method)
    ck = _quantized_checkpoint(tmp_path / "ck", online, config_json=True)
    tensors = load_file(str(ck / "model.safetensors"))
    for name in [n for n in tensors if n.startswith("blocks.1.proj.") and not n.endswith(".bias")]:
        del tensors[name]
    tensors["blocks.1.proj.weight"] = torch.randn(16, 32).bfloat16()
    save_file(tensors, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(resolve_quant_config(checkpoint=ck)), ck)
    assert ("module 'blocks.1.proj' is stored unquantized ('blocks.1.proj.weight'), but the model built it as a "
            f"quantized {method!r} layer: add 'blocks.1.proj' to the quantization config's skip list "
            f"({ {'fp8': 'ignored_layers', 'int8': 'llm_int8_skip_modules'}[method]}; ") in str(err.value)


def test_an_index_path_is_checked_against_its_directorys_declaration(tmp_path) -> None:
    """A checkpoint given as its ``*.safetensors.index.json`` reads the whole checkpoint the index describes, so the
    declaration beside it (its config.json) is checked as for the directory — it was skipped, as for one file — and
    the call the error names takes the directory (resolve_quant_config refuses a file)."""
    ck = _fp8_checkpoint(tmp_path / "fp8")
    (ck / "model.safetensors").rename(ck / "model-00001-of-00001.safetensors")
    names = load_file(str(ck / "model-00001-of-00001.safetensors"))
    index = ck / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_net(None), index)
    assert len(_lines(err)) == 1
    text = str(err.value)
    assert f"is quantized with 'fp8' ({ck}/config.json's 'quantization_config' says so)" in text
    assert f"quant_config=resolve_quant_config(checkpoint={str(ck)!r})" in text
    load_checkpoint(_net(resolve_quant_config(checkpoint=ck)), index)
