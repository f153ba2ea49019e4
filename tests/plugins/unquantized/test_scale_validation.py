"""The unquantized method refuses a NaN/inf weight or bias before any layer is processed.

Checkpoints are written with safetensors into tmp_path and read with ``load_checkpoint``.
"""

from __future__ import annotations

import pytest
import torch
from fvq_unquantized import UnquantizedConfig
from safetensors.torch import save_file

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.linear import QKVParallelLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint


class Attn(torch.nn.Module):
    def __init__(self, quant_config=None) -> None:
        super().__init__()
        kw = {"params_dtype": torch.bfloat16, "quant_config": quant_config}
        self.attn = torch.nn.Module()
        self.attn.qkv_proj = QKVParallelLinear(32, 8, 4, 2, bias=False, prefix="attn.qkv_proj", **kw)
        self.attn.o_proj = RowParallelLinear(32, 32, bias=True, prefix="attn.o_proj", **kw)


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"attn.q_proj.weight": (32, 32), "attn.k_proj.weight": (16, 32), "attn.v_proj.weight": (16, 32),
              "attn.o_proj.weight": (32, 32), "attn.o_proj.bias": (32,)}
    return {n: torch.randn(*s, generator=g).to(torch.bfloat16) for n, s in shapes.items()}


def processed(model):
    return [getattr(m, "_fvq_weights_processed", False) for m in model.modules() if hasattr(m, "quant_method")]


@pytest.mark.parametrize("quant_config", [None, UnquantizedConfig()], ids=["none", "unquantized"])
@pytest.mark.parametrize(("name", "index", "value"), [
    ("attn.o_proj.weight", (2, 5), float("nan")),
    ("attn.o_proj.bias", (9,), float("inf")),
    ("attn.k_proj.weight", (0, 1), float("nan")),
])
def test_non_finite_weight_or_bias_is_refused(tmp_path, quant_config, name, index, value):
    t = tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    model = Attn(quant_config)
    load_checkpoint(model, tmp_path)  # finite: loads and runs
    assert bool(torch.isfinite(model.attn.o_proj(torch.ones(2, 32, dtype=torch.bfloat16))[0]).all())
    t[name][index] = value
    save_file(t, str(tmp_path / "model.safetensors"))
    model = Attn(quant_config)
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    layer = "attn.qkv_proj" if "k_proj" in name else "attn.o_proj"
    fused_index = [32 + index[0], index[1]] if "k_proj" in name else list(index)  # k rows follow q's 32
    param = repr(f"{layer}.{name.rsplit('.', 1)[1]}")
    at = f"{fused_index} (checkpoint tensor {name!r} {list(index)})" if "k_proj" in name else f"{fused_index}"
    assert "1 of 2 layer(s) failed" in msg and "no layer was processed" in msg
    assert f"unquantized layer {layer!r}: tensor {param} (torch.bfloat16" in msg
    assert f"found 1 of {t[name].numel() if 'o_proj' in name else 64 * 32} that are NaN or inf" in msg
    assert f"the first at {at} = {value}" in msg
    assert processed(model) == [False, False]
