"""Every built-in method's ``apply`` against its own float32 reference (``x.float() @ dequantize_weight(layer).T +
bias``) on random small shapes — down to one input feature, one output, zero rows — within the relative bound its
config declares, taken of the terms' magnitude (``|x| @ |W|.T + |bias|``): at a few outputs a sum that cancels has
no relative accuracy for any quantized method to keep (fp8 at K=4, N=1 measured 5.6% of a near-zero output). The
conformance suite's layers have fixed sizes; int8 computed garbage at K=1 (bitsandbytes' CPU product,
``torch._int_mm`` on AVX-512), which only a TP fuzz with one input per rank found; this test fails on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading
from fastvideo_quant.plugins import ensure_registered
from fastvideo_quant.quantization import resolve_quant_config

for _name, _hooks in (("awq", "fvq_awq.hooks"), ("fp8", "fvq_fp8.hooks"), ("int8", "fvq_int8.hooks")):
    ensure_registered(_name, _hooks)

#: method → (hf quantization_config, input multiple, output multiple); AWQ needs whole int32 words of 8 values.
METHODS = {
    "fp8-online": ({"quant_method": "fp8", "activation_scheme": "dynamic"}, 1, 1),
    "fp8-channel": ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_scale_strategy": "channel"}, 1, 1),
    "int8": ({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0}, 1, 1),
    "int8-threshold": ({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0}, 1, 1),
    "awq-whole-input": ({"quant_method": "awq", "bits": 4, "group_size": -1, "zero_point": True, "version": "gemm"}, 8,
                        8),
    "awq-group-32": ({"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}, 32, 8),
}


def _config(method: str):
    if method.startswith("int8"):
        pytest.importorskip("bitsandbytes")
    return resolve_quant_config(hf_config={"quantization_config": METHODS[method][0]})


@pytest.mark.parametrize("method", list(METHODS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k_units=st.integers(1, 8), n_units=st.integers(1, 6), m=st.integers(0, 5), bias=st.booleans(),
       dtype=st.sampled_from([torch.bfloat16, torch.float32]), seed=st.integers(0, 2**16))
@example(k_units=1, n_units=1, m=3, bias=True, dtype=torch.float32, seed=0)  # one input feature (AWQ: one word)
def test_apply_matches_its_reference_on_small_shapes(method, k_units, n_units, m, bias, dtype, seed) -> None:
    config = _config(method)
    _, k_step, n_step = METHODS[method]
    k, n = k_units * k_step, n_units * n_step
    g = torch.Generator().manual_seed(seed)
    layer = ReplicatedLinear(k, n, bias=bias, params_dtype=dtype, quant_config=config, prefix="p")
    tensors = config.quantize_weight(torch.randn(n, k, generator=g) / k**0.5)  # (a checkpoint of the method)
    if bias:
        tensors["bias"] = torch.randn(n, generator=g)
    params = dict(layer.named_parameters())
    for name, tensor in tensors.items():
        params[name].weight_loader(params[name], tensor)
    process_weights_after_loading(layer)
    x = torch.randn(m, k, generator=g).to(dtype)
    out = layer(x)[0]
    assert out.shape == (m, n) and out.dtype == dtype
    if m == 0:
        return
    w = layer.quant_method.dequantize_weight(layer).float()
    ref = x.float() @ w.T
    scale = x.float().abs() @ w.abs().T  # the terms' magnitude: a sum that cancels has no relative accuracy to keep
    if bias:
        ref, scale = ref + layer.bias.float(), scale + layer.bias.float().abs()
    err = ((out.float() - ref).norm() / scale.norm().clamp_min(1e-30)).item()
    bound = config.tolerance.for_dtype(dtype).max_rel_error
    assert err <= bound, (f"{method} K={k} N={n} M={m} {dtype}: error {err:.3g} of the terms' magnitude > the declared "
                          f"relative bound {bound}")
