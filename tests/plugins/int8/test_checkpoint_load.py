"""Whole-checkpoint loading of bitsandbytes int8 tensors through fastvideo_quant.loader.load_checkpoint."""

from __future__ import annotations

import torch
from int8_helpers import config
from safetensors.torch import save_file

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint

K, N = 64, 32


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = ReplicatedLinear(K, N, bias=False, params_dtype=torch.float32, quant_config=config(), prefix="proj")


def _load(tmp_path, tensors: dict[str, torch.Tensor]) -> _Model:
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file({f"proj.{k}": v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    model = _Model()
    load_checkpoint(model, tmp_path)
    return model


def test_missing_weight_format_means_row(tmp_path) -> None:
    # bitsandbytes' maybe_rearrange_weight treats a missing weight_format as "row" (docs/methods/int8.md).
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) / K**0.5
    tensors = config().quantize_weight(w)
    assert "weight_format" in tensors
    with_fmt = _load(tmp_path / "with", tensors)
    without = _load(tmp_path / "without", {k: v for k, v in tensors.items() if k != "weight_format"})
    x = torch.randn(5, K)
    assert torch.equal(with_fmt.proj(x)[0], without.proj(x)[0])
    assert torch.equal(without.proj.weight, tensors["weight"])
