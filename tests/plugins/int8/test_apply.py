"""apply(): accuracy vs float32 of the de-quantized weight, outlier threshold, bias, shapes, dtypes, kernels."""

from __future__ import annotations

import pytest
import torch
from fvq_int8 import Int8Config
from int8_helpers import TRITON, config, load, needs_triton, rel_err

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading

K, N = 128, 64
# The Triton kernels run under the interpreter on CPU and natively on a GPU: tensors go where they run.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _layer(cfg, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) / K**0.5
    layer = ReplicatedLinear(K, N, bias=bias, params_dtype=dtype, quant_config=cfg, prefix="l")
    tensors = Int8Config().quantize_weight(w)
    if bias:
        tensors["bias"] = torch.randn(N, generator=g).to(dtype)
    load(layer, tensors)
    process_weights_after_loading(layer)
    return layer


def _ref(layer, x):
    out = x.float() @ layer.quant_method.dequantize_weight(layer).T
    return out + layer.bias.float() if layer.bias is not None else out


@pytest.mark.parametrize("backend", ["bitsandbytes", TRITON])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(7, K), (2, 5, K)])
def test_apply_matches_float32_reference(backend, dtype, shape):
    layer = _layer(config(fvq_backend=backend), dtype, bias=True).to(DEV)
    x = torch.randn(shape).to(DEV, dtype)
    out = layer(x)[0]
    assert out.dtype == dtype and out.shape == (*shape[:-1], N)
    assert rel_err(out, _ref(layer, x)) < Int8Config.tolerance.max_rel_error


@needs_triton
def test_triton_kernels_agree_with_bitsandbytes():
    # bitsandbytes' CUDA ops take fp16 only (they cast fp32 down), so on a GPU both run in fp16.
    dtype = torch.float16 if DEV == "cuda" else torch.float32
    x = torch.randn(33, K, device=DEV, dtype=dtype)
    a = _layer(config(fvq_backend="triton"), dtype).to(DEV)(x)[0]
    b = _layer(config(fvq_backend="bitsandbytes"), dtype).to(DEV)(x)[0]
    # Same integers; bitsandbytes' int8_mm_dequant multiplies by 6.200124e-05 for 1/127**2 (1.8e-5 off);
    # in fp16 the two outputs may also differ by one output rounding (2^-11 relative).
    assert rel_err(a, b) < (1e-3 if dtype == torch.float16 else 1e-4)


def test_threshold_decomposition_beats_threshold_zero_on_outlier_columns():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, K, generator=g)
    x[:, [3, 70]] *= 40.0  # planted outlier features (|x| >> 6)
    errs = {}
    for t in (0.0, 6.0):
        layer = _layer(config(llm_int8_threshold=t))
        errs[t] = rel_err(layer(x)[0], _ref(layer, x))
    assert errs[6.0] < errs[0.0] / 3, errs


def test_threshold_without_outliers_equals_threshold_zero():
    x = torch.randn(16, K).clamp(-5, 5)
    a = _layer(config(llm_int8_threshold=6.0))(x)[0]
    b = _layer(config(llm_int8_threshold=0.0))(x)[0]
    assert torch.allclose(a, b)


def test_bias_is_added_once():
    layer = _layer(config(), bias=True)
    x = torch.randn(3, K)
    no_bias = layer.quant_method.apply(layer, x, None)
    assert torch.allclose(layer(x)[0] - no_bias, layer.bias.expand(3, N), atol=1e-5)


def test_empty_input_and_wrong_width():
    layer = _layer(config())
    assert layer(torch.randn(0, K))[0].shape == (0, N)
    with pytest.raises(ValueError, match=r"input's last dim is 100, expected 128 \(input_size\)"):
        layer(torch.randn(4, 100))
    with pytest.raises(ValueError, match=r"last dim must be 128.*\(4, 100\)"):  # apply called directly
        layer.quant_method.apply(layer, torch.randn(4, 100))


def test_weight_bytes_are_half_of_bf16():
    layer = _layer(config(), torch.bfloat16)
    nbytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    assert nbytes <= 0.51 * N * K * 2 + 8 * N  # int8 weight + SCB + weight_scale


@needs_triton
def test_quant_kernel_equals_bitsandbytes_vectorwise_quant():
    import bitsandbytes.functional as bnbf
    from fvq_int8.kernels import quantize_per_token

    x = torch.randn(9, 300, device=DEV, dtype=torch.float16 if DEV == "cuda" else torch.float32)
    q, s = quantize_per_token(x)
    cq, cs, _ = bnbf.int8_vectorwise_quant(x.clone())
    assert torch.allclose(s.float() * 127, cs.float())
    if DEV == "cpu":
        assert torch.equal(q, cq)
    else:  # bitsandbytes' CUDA kernel may break ties the other way: at most one step, on few elements
        diff = (q.int() - cq.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_triton_path_matches_bitsandbytes():
    from fvq_int8.bnb_path import bnb_int8_linear

    layer = _layer(config(), torch.bfloat16, bias=True).cuda()
    x = torch.randn(300, K, device="cuda", dtype=torch.bfloat16)
    out = layer(x)[0]
    ref = bnb_int8_linear(x, layer.weight, layer.SCB, layer.bias, 0.0)
    assert rel_err(out, ref) < 5e-3 and rel_err(out, _ref(layer, x)) < Int8Config.tolerance.max_rel_error


@needs_triton
def test_small_m_dispatch_and_threshold(monkeypatch):
    """CUDA bf16/fp16 M <= W8A16_MAX_M takes the one-launch W8A16 kernel; larger M and fp32 take W8A8."""
    import fvq_int8.kernels as k

    calls = []
    monkeypatch.setattr(k, "w8a16_linear", lambda x, *a: calls.append(x.shape[0]) or "w8a16")
    monkeypatch.setattr(k, "w8a8_linear", lambda *a: (_ for _ in ()).throw(RuntimeError("w8a8")))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    w, s = torch.zeros(16, 32, dtype=torch.int8), torch.ones(16)
    x = torch.zeros(k.W8A16_MAX_M, 32, dtype=torch.bfloat16)
    assert k.int8_linear(x, w, s, None, x.dtype) == "w8a16"
    for bad in (torch.zeros(k.W8A16_MAX_M + 1, 32, dtype=torch.bfloat16), x.float()):
        with pytest.raises(RuntimeError, match="w8a8"):
            k.int8_linear(bad, w, s, None, bad.dtype)
    with pytest.raises(RuntimeError, match="w8a8"):  # an output dtype other than the input's
        k.int8_linear(x, w, s, None, torch.float32)
    assert calls == [k.W8A16_MAX_M]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 16, 32])
def test_cuda_small_m_is_weight_only(m):
    """At small M activations stay bf16: the error is the weight rounding alone, well under W8A8's."""
    layer = _layer(config(), torch.bfloat16, bias=True).cuda()
    x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
    out = layer(x)[0]
    dq = layer.quant_method.dequantize_weight(layer).float()
    exact = x.float() @ dq.T + layer.bias.float()
    assert rel_err(out, exact) < 5e-3  # W8A8 (per-token int8 activations) gives ~9e-3 here


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("k", [1, 2])
def test_one_input_feature_matches_the_reference(threshold, k):
    """A layer of one input (or a row-parallel rank's one): bitsandbytes' CPU product (torch._int_mm on AVX-512)
    returned sums off by 1e4x at K=1, silently; the TP fuzz found it at RowParallelLinear(3, N) over 3 ranks."""
    g = torch.Generator().manual_seed(3)
    layer = ReplicatedLinear(k, 8, bias=True, params_dtype=torch.float32, prefix="l",
                             quant_config=config(llm_int8_threshold=threshold))
    load(layer, {**Int8Config().quantize_weight(torch.randn(8, k, generator=g)), "bias": torch.randn(8, generator=g)})
    process_weights_after_loading(layer)
    layer = layer.to(DEV)
    x = torch.randn(5, k, generator=g).to(DEV)
    assert rel_err(layer(x)[0], _ref(layer, x)) < Int8Config.tolerance.max_rel_error
