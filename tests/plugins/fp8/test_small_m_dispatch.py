"""Which M take the W8A16 small-M kernel (``fastvideo_quant.kernels.small_m``, tested in tests/kernels) and the
W8A8 Triton GEMM (``fastvideo_quant.kernels.w8a8_gemm``) rather than ``torch._scaled_mm``."""

from __future__ import annotations

import pytest
import torch


def test_small_m_dispatch_and_threshold(monkeypatch):
    """fp8_linear sends CUDA bf16 M <= W8A16_MAX_M to the W8A16 kernel and everything else to W8A8."""
    from fvq_fp8.kernels import gemm

    calls = []
    monkeypatch.setattr(gemm, "w8a16_linear", lambda *a: calls.append(a[0].shape[0]) or "w8a16")
    w8a8 = lambda *a: (_ for _ in ()).throw(RuntimeError("w8a8"))  # noqa: E731
    monkeypatch.setattr(gemm, "quantize_activation", w8a8)
    monkeypatch.setattr(gemm, "triton_w8a8_linear", w8a8)
    x = torch.zeros(gemm.W8A16_MAX_M, 32, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    w = torch.zeros(16, 32, dtype=torch.float8_e4m3fn)
    assert gemm.fp8_linear(x, w, torch.ones(1, 16), None, None, None) == "w8a16"
    with pytest.raises(RuntimeError, match="w8a8"):
        gemm.fp8_linear(torch.zeros(gemm.W8A16_MAX_M + 1, 32, dtype=torch.bfloat16), w, torch.ones(1, 16), None,
                        None, None)
    with pytest.raises(RuntimeError, match="w8a8"):
        gemm.fp8_linear(x.float(), w, torch.ones(1, 16), None, None, None)
    assert calls == [gemm.W8A16_MAX_M]


def test_triton_gemm_dispatch_and_threshold(monkeypatch):
    """CUDA dynamic per-token W8A8 at M <= TRITON_GEMM_MAX_M runs the core Triton GEMM; larger M, static
    activation scales and exact accumulation (use_fast_accum=False) keep torch._scaled_mm."""
    from fvq_fp8.kernels import gemm

    calls = []
    monkeypatch.setattr(gemm, "quantize_activation", lambda x, s: (x, torch.ones(x.shape[0], 1)))
    monkeypatch.setattr(gemm, "triton_w8a8_linear", lambda x, *a: calls.append((x.shape[0], a[-1])) or "triton")
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("scaled_mm")))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    w, row = torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.ones(1, 16)
    limit = gemm.TRITON_GEMM_MAX_M
    for m, dtype in ((gemm.W8A16_MAX_M + 1, torch.bfloat16), (limit, torch.float16), (8, torch.float32)):
        assert gemm.fp8_linear(torch.zeros(m, 32, dtype=dtype), w, row, None, None, None) == "triton"
    assert calls == [(gemm.W8A16_MAX_M + 1, torch.bfloat16), (limit, torch.float16), (8, torch.float32)]
    for x, input_scale, fast in ((torch.zeros(limit + 1, 32, dtype=torch.bfloat16), None, True),
                                 (torch.zeros(64, 32, dtype=torch.bfloat16), torch.ones(()), True),
                                 (torch.zeros(64, 32, dtype=torch.bfloat16), None, False)):
        with pytest.raises(RuntimeError, match="scaled_mm"):
            gemm.fp8_linear(x, w, row, None, input_scale, None, use_fast_accum=fast)
    monkeypatch.setattr(gemm, "TRITON_GEMM_MAX_M", 0)  # what FVQ_FP8_TRITON_GEMM_MAX_M=0 sets
    with pytest.raises(RuntimeError, match="scaled_mm"):
        gemm.fp8_linear(torch.zeros(64, 32, dtype=torch.bfloat16), w, row, None, None, None)
    assert len(calls) == 3


def test_triton_gemm_under_compile_calls_the_custom_op(monkeypatch):
    """Compiled code reaches the kernels through ``fvq_fp8::per_token_quant`` and ``fvq_fp8::w8a8_gemm`` (opaque
    ops), eager code through the core W8A8 linear (its cached launch plans) with fp8 operands."""
    from types import SimpleNamespace

    from fvq_fp8.kernels import gemm, ops

    seen = []
    monkeypatch.setattr(ops, "per_token_quant", lambda x: seen.append("quant op") or (x, None))
    monkeypatch.setattr(ops, "w8a8_gemm", lambda *a: seen.append("gemm op") or "op")
    kernels = SimpleNamespace(w8a8_linear=lambda x, qdtype, *a: seen.append(qdtype) or "kernel")
    monkeypatch.setattr(gemm, "_cuda_kernels", lambda: kernels)  # (the eager entry points, imported once)
    args = (None,) * 4 + (torch.bfloat16,)
    assert gemm.triton_w8a8_linear(*args) == "kernel"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert gemm.triton_w8a8_linear(*args) == "op"
    assert seen == [torch.float8_e4m3fn, "quant op", "gemm op"]


def test_w8a8_gemm_custom_op_fake_has_the_output_shape_and_dtype():
    from fvq_fp8.kernels import ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xq = torch.empty(40, 64, dtype=torch.float8_e4m3fn)
        w = torch.empty(48, 64, dtype=torch.float8_e4m3fn)
        out = ops.w8a8_gemm(xq, torch.empty(40, 1), w, torch.empty(1, 48), None, torch.float16)
    assert out.shape == (40, 48) and out.dtype == torch.float16


def test_a_gpu_without_fp8_tensor_cores_is_refused_on_every_call(monkeypatch):
    """The capability is looked up once per device; the refusal is not (a cached False once let the second call
    through to ``torch._scaled_mm``)."""
    from fvq_fp8.kernels import gemm

    from fastvideo_quant.errors import MethodUnavailableError

    monkeypatch.setattr(gemm, "_CAPABILITY_OK", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA A100")
    for _ in range(2):
        with pytest.raises(MethodUnavailableError, match="A100 has compute capability 8.0"):
            gemm.require_fp8_gpu_index(0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    gemm.require_fp8_gpu_index(1)
    assert gemm._CAPABILITY_OK == {0: False, 1: True}
