"""Block scales stored fused on disk as one grid over all the fused rows, with a part starting inside a block: the
layer keeps a grid per part, so the stored grid cannot be split, and the error says why (was "expected size 3 along
dim 0 of the checkpoint tensor, found shape (2, 2)"). The same weights stored as separate parts load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import quantize_checkpoint

K, SIZES = 160, [200, 56]


class M(torch.nn.Module):
    def __init__(self, qc) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(K, SIZES, bias=False, params_dtype=torch.bfloat16,
                                                       quant_config=qc, prefix="gate_up_proj")


def _quantized(tmp_path, tensors):
    src, dst = tmp_path / "float", tmp_path / "fp8"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "x"}))
    quantize_checkpoint(src, dst, "fp8", options={"weight_block_size": [128, 128]})
    return dst


def test_one_grid_over_parts_not_whole_blocks_says_why(tmp_path) -> None:
    w = torch.randn(sum(SIZES), K, generator=torch.Generator().manual_seed(0)) / K ** 0.5
    dst = _quantized(tmp_path, {"gate_up_proj.weight": w})
    with pytest.raises(CheckpointError, match=r"gate_up_proj.weight_scale_inv \(fused on disk\): the checkpoint holds "
                                              r"one grid of 2 block rows over the 256 fused rows \(bn=128\), but the "
                                              r"layer keeps a grid per part \(3 block rows\): part 1 starts at row 200, "
                                              r"inside a block, .* Store the parts as separate tensors"):
        load_checkpoint(M(resolve_quant_config(checkpoint=dst)), dst)


def test_the_same_parts_stored_apart_load(tmp_path) -> None:
    w = torch.randn(sum(SIZES), K, generator=torch.Generator().manual_seed(0)) / K ** 0.5
    dst = _quantized(tmp_path, {"gate_proj.weight": w[:200].contiguous(), "up_proj.weight": w[200:].contiguous()})
    model = M(resolve_quant_config(checkpoint=dst))
    load_checkpoint(model, dst)
    x = torch.randn(3, K).bfloat16()
    ref = x.float() @ w.T
    assert ((model.gate_up_proj(x)[0].float() - ref).norm() / ref.norm()).item() < 0.05
