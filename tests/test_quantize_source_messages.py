"""``fvq quantize``'s refusals of a source it cannot read say what is wrong with it: a path that does not exist says so
(was: "is not a directory"), and a directory without config.json is told that one holding ``{}`` is enough."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.quantize import quantize_checkpoint


def test_a_source_that_does_not_exist_is_told_so(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"source checkpoint '.*nonexist' does not exist; give the checkpoint's "
                                              r"directory"):
        quantize_checkpoint(tmp_path / "nonexist", tmp_path / "out", "fp8")


def test_a_source_without_config_json_is_told_an_empty_one_is_enough(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    save_file({"a.weight": torch.randn(64, 64)}, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"has no config\.json; .* a config\.json holding \{\} is enough"):
        quantize_checkpoint(src, tmp_path / "out", "fp8")
    (src / "config.json").write_text("{}")  # (as the message says)
    quantize_checkpoint(src, tmp_path / "out", "fp8")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
