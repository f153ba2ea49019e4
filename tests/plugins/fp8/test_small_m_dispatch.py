"""Which M take the W8A16 small-M kernel (``fastvideo_quant.kernels.small_m``, tested in tests/kernels)."""

from __future__ import annotations

import pytest
import torch


def test_small_m_dispatch_and_threshold(monkeypatch):
    """fp8_linear sends CUDA bf16 M <= W8A16_MAX_M to the W8A16 kernel and everything else to W8A8."""
    from fvq_fp8.kernels import gemm

    calls = []
    monkeypatch.setattr(gemm, "w8a16_linear", lambda *a: calls.append(a[0].shape[0]) or "w8a16")
    monkeypatch.setattr(gemm, "quantize_activation", lambda *a: (_ for _ in ()).throw(RuntimeError("w8a8")))
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
