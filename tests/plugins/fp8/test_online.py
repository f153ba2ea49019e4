"""Online fp8 (float checkpoint quantized at load): every weight_scale_strategy, including block."""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import fp8_layer, reference, rel_err
from fvq_fp8.config import Fp8Config

from fastvideo_quant.layers.linear import ReplicatedLinear

N, K = 96, 200  # not multiples of the [32, 64] block: edge tiles are partial
ONLINE = {"quant_method": "fp8", "is_checkpoint_fp8_serialized": False}


def _online_layer(w: torch.Tensor, extra: dict, dtype=torch.bfloat16) -> ReplicatedLinear:
    cfg = Fp8Config.from_config({**ONLINE, **extra})
    assert not cfg.is_checkpoint_fp8_serialized
    layer = ReplicatedLinear(K, N, bias=False, params_dtype=dtype, quant_config=cfg, prefix="l")
    layer.weight.weight_loader(layer.weight, w.to(dtype))
    layer.quant_method.process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("extra", [{}, {"weight_scale_strategy": "channel"}, {"weight_block_size": [32, 64]}],
                         ids=["tensor", "channel", "block"])
def test_online_equals_serialized_checkpoint(extra):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(torch.bfloat16)
    x = torch.randn(3, 7, K, generator=g).to(torch.bfloat16)
    online = _online_layer(w, extra)
    serialized = fp8_layer(w, {"quant_method": "fp8", **extra})
    out = online.quant_method.apply(online, x)
    assert torch.equal(out, serialized.quant_method.apply(serialized, x))
    assert torch.equal(online.quant_method.dequantize_weight(online),
                       serialized.quant_method.dequantize_weight(serialized))
    assert rel_err(out, reference(online, x)) < 3e-2


@pytest.mark.parametrize("value, found", [(0.0, "all zero"), (float("nan"), "not finite")])
def test_static_input_scale_from_zero_or_nan_activations_is_refused(value, found):
    """input_scale = max(amax, 1e-12) / 448 wrote 2.2e-15 for all-zero activations: every real input then saturated to
    448 * 2.2e-15 and the layer's output was ~0 (relative error 1.0)."""
    from fastvideo_quant.errors import ConfigError

    cfg = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static"})
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) / K**0.5
    with pytest.raises(ConfigError, match=rf"fp8 quantize_weight 'blocks.0.proj': .*given \(\[4, {K}\]\) are {found}"
                                          r".*calibration data that reaches the module.*'dynamic'"):
        cfg.quantize_weight(w, prefix="blocks.0.proj", activations=torch.full((4, K), value))
    tiny = cfg.quantize_weight(w, prefix="blocks.0.proj", activations=torch.full((4, K), 1e-6))
    assert torch.allclose(tiny["input_scale"], torch.tensor(1e-6 / 448))  # a small range is the data's: kept
