"""The load's messages count a method's layers as those it quantized: a layer its config's skip list left unquantized
has the unquantized method. (Was: every layer built with the config — "built with 'awq' (3 layer(s): 'proj_in', ...)"
where the AWQ config skipped proj_in.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

NAMES = ["proj_in", "a", "b"]


class Model(torch.nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        for n in NAMES:
            setattr(self, n, ReplicatedLinear(128, 128, bias=False, quant_config=config, prefix=n,
                                              params_dtype=torch.bfloat16))


@pytest.fixture
def src(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "src"
    path.mkdir()
    save_file({f"{n}.weight": torch.randn(128, 128, dtype=torch.bfloat16) / 10 for n in NAMES},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({}))
    return path


def _error(model, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    return str(info.value)


def test_another_methods_layers_are_counted_without_those_its_skip_list_left(src, tmp_path) -> None:
    quantize_checkpoint(src, tmp_path / "fp8", "fp8")
    awq = resolve_quant_config("awq", hf_config={"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["proj_in"]}})
    msg = _error(Model(awq), tmp_path / "fp8")
    assert ("the model's layers were built with 'awq' (2 layer(s): 'a', 'b'; 1 more built with it but left unquantized "
            "by its skip list: 'proj_in')") in msg, msg


def test_layers_of_the_declared_method_with_other_settings_are_counted_so(src, tmp_path) -> None:
    quantize_checkpoint(src, tmp_path / "fp8", "fp8")  # (dynamic activations)
    static = resolve_quant_config("fp8", hf_config={"quantization_config": {
        "quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["proj_in"]}})
    msg = _error(Model(static), tmp_path / "fp8")
    assert ("but the model's 2 layer(s) of that method ('a', 'b'; 1 more left unquantized by its skip list: 'proj_in') "
            "were built with") in msg, msg
