"""A checkpoint whose parts of one fused layer are stored differently (``fvq quantize --skip to_q`` without ``--fuse
to_qkv=...``: ``to_q`` float, ``to_k``/``to_v`` quantized) fits no model that fuses them, whatever its skip list. The
load used to advise adding the fused layer to the skip list, and then (once added) taking it out again; it now says
which parts are float and which quantized, and that the checkpoint must be quantized again with its parts alike."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import ONE_SCHEME_PER_LAYER, CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

PARTS = ["to_q", "to_k", "to_v"]
HIDDEN = 128


class Attn(torch.nn.Module):
    def __init__(self, quant_config, prefix: str) -> None:
        super().__init__()
        self.to_qkv = QKVParallelLinear(HIDDEN, 32, 4, bias=False, quant_config=quant_config, prefix=f"{prefix}.to_qkv",
                                        params_dtype=torch.bfloat16)
        self.to_out = ReplicatedLinear(HIDDEN, HIDDEN, bias=False, quant_config=quant_config, prefix=f"{prefix}.to_out",
                                       params_dtype=torch.bfloat16)


class Model(torch.nn.Module):
    packed_modules_mapping = {"to_qkv": PARTS}

    def __init__(self, quant_config) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({"attn": Attn(quant_config, f"blocks.{i}.attn")})
                                          for i in range(2))


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    tensors = {f"blocks.{i}.attn.{m}.weight": torch.randn(HIDDEN, HIDDEN, dtype=torch.bfloat16) / 10
               for i in range(2) for m in [*PARTS, "to_out"]}
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    return src


def _error(ckpt, **resolve) -> str:
    model = Model(resolve_quant_config(checkpoint=ckpt, **resolve))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, ckpt)
    return str(info.value)


def _mixed_line(msg: str) -> str:
    line = next((ln for ln in msg.splitlines() if "have their parts stored differently" in ln), None)
    assert line is not None, msg
    return line


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_parts_stored_differently_are_named_with_the_fix(tmp_path, source, method) -> None:
    ckpt = tmp_path / "q"
    quantize_checkpoint(source, ckpt, method, skip=["to_q"])
    msg = _error(ckpt)
    line = _mixed_line(msg)
    assert ("fused layer(s) 'blocks.0.attn.to_qkv', 'blocks.1.attn.to_qkv' have their parts stored differently: "
            "'to_q' unquantized (a float weight, no scale), 'to_k', 'to_v' quantized") in line, msg
    assert ONE_SCHEME_PER_LAYER in line, msg
    assert "--skip blocks.0.attn.to_q --skip blocks.0.attn.to_k --skip blocks.0.attn.to_v" in line, msg
    assert "--fuse to_qkv=to_q,to_k,to_v" in line, msg
    # (not the advice that contradicts itself: add the fused layer to the skip list, then take it out)
    assert "to the quantization config's skip list" not in msg and "take them out of" not in msg, msg


def test_the_fused_layer_added_to_the_skip_list_is_told_the_same(tmp_path, source) -> None:
    ckpt = tmp_path / "q"
    quantize_checkpoint(source, ckpt, "fp8", skip=["to_q"])
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"]["ignored_layers"] += ["blocks.0.attn.to_qkv", "blocks.1.attn.to_qkv"]
    (ckpt / "config.json").write_text(json.dumps(config))
    msg = _error(ckpt)
    assert "'to_q' unquantized (a float weight, no scale), 'to_k', 'to_v' quantized" in _mixed_line(msg), msg
    assert "take them out of ignored_layers" not in msg, msg
    assert msg.count("have their parts stored differently") == 1, msg  # (two hints gave it: said once)


def test_following_the_fix_loads(tmp_path, source) -> None:
    ckpt = tmp_path / "q"
    quantize_checkpoint(source, ckpt, "fp8", skip=["blocks.0.attn.to_qkv"], packed_modules_mapping={"to_qkv": PARTS})
    model = Model(resolve_quant_config(checkpoint=ckpt))
    load_checkpoint(model, ckpt)
    assert not model.blocks[0]["attn"].to_qkv._quantized() and model.blocks[1]["attn"].to_qkv._quantized()
