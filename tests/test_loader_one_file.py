"""The loader's hints for a checkpoint given as one ``.safetensors`` file, about what beside it: the ``fvq quantize``
command a float file is told to run (it takes a directory: which one), and a config.json beside it that cannot be
read (a hint reads it only to advise; the load's own error is the one raised)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config

PER_TENSOR = {"quant_method": "fp8", "activation_scheme": "dynamic"}
CHANNEL = {**PER_TENSOR, "weight_scale_strategy": "channel"}
TRUNCATED = '{"quantization_config": {"quant_method": "fp8", '


def _two_layers(config, size: int = 64) -> torch.nn.Module:
    return torch.nn.ModuleDict({n: ReplicatedLinear(size, size, bias=False, params_dtype=torch.bfloat16,
                                                    quant_config=config, prefix=n) for n in ("proj_in", "proj_out")})


def _float_file(path, name: str = "model.safetensors") -> None:
    """A float checkpoint of two 128 x 128 layers (AWQ's default group size fits them, so the command named as it is
    quantizes them)."""
    save_file({n: torch.randn(128, 128).bfloat16() for n in ("proj_in.weight", "proj_out.weight")}, str(path / name))


def _lay_out(path, layout: str) -> None:
    """What sits beside the float file ``path / 'wan.safetensors'``."""
    if layout != "no config.json":
        (path / "config.json").write_text({"broken config.json": TRUNCATED,
                                           "config.json declares awq": json.dumps({"quantization_config": {
                                               "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                               "version": "gemm"}})}.get(layout, "{}"))
    if layout == "another model's file beside it":
        save_file({"decoder.conv.weight": torch.randn(8, 8, 3, 3).bfloat16()}, str(path / "vae.safetensors"))


def _follow(hint: str, ckpt, tmp_path, built=None) -> None:
    """Run the ``fvq quantize`` command ``hint`` names (DIR: a directory of the file's own, with a config.json that
    declares no method, as the hint says) and load DST into layers built from it, and into layers built with
    ``built`` (the config of the layers whose load gave the hint) where given."""
    from fastvideo_quant.cli import main

    command = re.search(r"fvq quantize (\S+) (--method .*?) --out DST", hint)
    assert command is not None, hint
    src = command.group(1)
    if src == "DIR":
        src = tmp_path / "own"
        src.mkdir()
        shutil.copy(ckpt / "wan.safetensors", src)
        (src / "config.json").write_text("{}")
    else:
        src = ast.literal_eval(src)
    dst = tmp_path / "dst"
    assert main(["quantize", str(src), *shlex.split(command.group(2)), "--out", str(dst), "--no-progress"]) == 0
    load_checkpoint(_two_layers(resolve_quant_config(checkpoint=dst), 128), dst)
    if built is not None:
        load_checkpoint(_two_layers(built, 128), dst)


@pytest.mark.parametrize("layout", ["no config.json", "config.json, no other weight file", "another model's file beside it",
                                    "broken config.json", "config.json declares awq"])
def test_a_float_file_into_awq_layers_is_told_to_quantize_its_directory(tmp_path, layout) -> None:
    """fvq quantize takes a directory with a config.json declaring no method and reads every weight file there: the
    file's directory is named only where that is this file alone; else the file goes in a directory of its own (was:
    the directory always, "with its config.json" — refused without one, or quantized with the other model's file)."""
    from fvq_awq import AWQConfig

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _float_file(ckpt, "wan.safetensors")
    _lay_out(ckpt, layout)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(AWQConfig(), 128), ckpt / "wan.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("the checkpoint was given as one file, so no config.json was read, and it stores "), first
    if layout == "config.json, no other weight file":
        assert first.endswith(f"quantize the checkpoint first (fvq quantize {str(ckpt)!r} --method awq --out DST: "
                              "the file's directory, whose config.json and this one weight file are what it reads) "
                              "and load DST"), first
    else:
        why = {"no config.json": f"{str(ckpt)!r} has no config.json",
               "another model's file beside it": f"in {str(ckpt)!r} it would read 'vae.safetensors', "
                                                 "'wan.safetensors' as one checkpoint",
               "broken config.json": f"the config.json beside it could not be read ({ckpt / 'config.json'} is not "
                                     "valid JSON: ",
               "config.json declares awq": f"{ckpt / 'config.json'}'s 'quantization_config' beside it declares "
                                           "'awq' (fvq quantize takes a float checkpoint's)"}[layout]
        assert ("quantize the checkpoint first: fvq quantize takes a directory with the model's config.json and reads "
                f"its weight files, and {why}") in first, first
        assert first.endswith("put 'wan.safetensors' and its model's config.json (no quantization_config) in a directory "
                              "of their own, run fvq quantize DIR --method awq --out DST on it, and load DST"), first
    _follow(first, ckpt, tmp_path)


@pytest.mark.parametrize("section", [
    {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"},
    {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
     "modules_to_not_convert": ["proj_out"]},
    {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
     "modules_to_not_convert": ["_out"]},
    {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {"g": {
        "targets": ["Linear"], "input_activations": None, "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                                      "strategy": "group", "group_size": 32}}}},
], ids=["awq-group-64", "awq-group-64-skip-list", "awq-substring-skip-entry", "compressed-tensors-w4a16-group-32"])
def test_the_quantize_command_carries_the_settings_the_layers_were_built_with(tmp_path, section) -> None:
    """Layers built with group 64 (or a compressed-tensors W4A16 section) are told to run fvq quantize with those
    settings, and the checkpoint it writes loads into them. (Was: the command had --method awq alone, which writes
    group 128, and the layers the user built could not load it.)"""
    config = resolve_quant_config(hf_config={"quantization_config": section})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _float_file(ckpt, "wan.safetensors")
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(config, 128), ckpt / "wan.safetensors")
    first = str(info.value).splitlines()[1].strip()
    flags = "--option group_size=64" if section["quant_method"] == "awq" else "--config '{\"quant_method\":"
    if section.get("modules_to_not_convert"):  # (was left out: the layers built proj_out float, DST stored it int4)
        flags += " --skip=proj_out"  # (the layer the entry left, not the entry: AWQ's '_out' matches by substring)
    assert f"fvq quantize {str(ckpt)!r} --method awq {flags}" in first, first
    _follow(first, ckpt, tmp_path, built=config)


def _per_channel_file(path) -> None:
    channel = resolve_quant_config(hf_config={"quantization_config": CHANNEL})
    tensors = {}
    for name in ("proj_in", "proj_out"):
        tensors |= {f"{name}.{k}": v for k, v in channel.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize("text, why", [(TRUNCATED, "is not valid JSON: "), ("[1, 2]", "must be a JSON object (a dict), "
                                                                                      "found list")],
                         ids=["truncated", "a list"])
def test_a_config_json_beside_the_file_that_cannot_be_read_is_said_so(tmp_path, text, why) -> None:
    """A config.json beside the file that does not parse: the hint said "(and none beside it declares 'fp8')" and to
    put a quantization_config into it — a file that is there and cannot be read. Now it says so, and why; the load's
    own CheckpointError is still the one raised."""
    _per_channel_file(tmp_path)
    (tmp_path / "config.json").write_text(text)
    config_json = str(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"^checkpoint .* does not fit the model") as info:
        load_checkpoint(_two_layers(resolve_quant_config(hf_config={"quantization_config": PER_TENSOR})),
                        tmp_path / "model.safetensors")
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines[1].startswith("to set the 'fp8' setting(s) above: the checkpoint was given as one file, so no "
                               f"config.json was read (and the config.json beside it could not be read ({config_json} "
                               f"{why}"), lines[1]
    assert lines[1].endswith(f"or repair {config_json!r}, put that quantization_config in it and build them with "
                             f"resolve_quant_config(checkpoint={str(tmp_path)!r})"), lines[1]
    assert "none beside it declares" not in str(info.value)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path / "model.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert f", or repair {config_json!r}, which could not be read ({config_json} {why}" in first, first
    assert first.endswith("put the quantization_config it was written with in it and build them with "
                          f"resolve_quant_config(checkpoint={str(tmp_path)!r})"), first


def test_a_config_json_beside_the_file_that_is_not_text_leaves_the_load_error(tmp_path) -> None:
    """Bytes that are not UTF-8 fail the hint's read with UnicodeDecodeError, not a ConfigError: it is said, not
    raised in place of the load's own error."""
    _per_channel_file(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"^checkpoint .* does not fit the model") as info:
        load_checkpoint(_two_layers(None), tmp_path / "model.safetensors")
    assert "which could not be read ('utf-8' codec can't decode byte 0xff" in str(info.value), str(info.value)


def test_the_quantize_flags_of_a_config_with_a_setting_no_json_holds_are_left_out() -> None:
    """A third-party config whose to_dict holds a tensor: the hint names the method alone rather than fail the load
    with a TypeError / RuntimeError from json or from comparing tensors."""
    from fvq_awq import AWQConfig

    from fastvideo_quant.loader.config_source import quantize_flags

    class Odd(AWQConfig):
        def to_dict(self):
            return {**super().to_dict(), "table": torch.arange(3) + self.group_size}

    assert quantize_flags(Odd.from_config({"group_size": 64})) == ""
