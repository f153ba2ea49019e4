"""The W8A16 small-M kernel (fp8 weights widened in registers), under the Triton interpreter on CPU.

Checked against float32 math of the de-quantized weight on fresh random inputs: the kernel
quantizes nothing, so the only error is its bf16/fp16 output rounding.
"""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import rel_err
from fvq_fp8.format import quantize_per_channel

triton = pytest.importorskip("triton", reason="triton not installed")
# Under the interpreter on CPU, natively on a GPU.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(m: int, k: int, n: int, dtype: torch.dtype, bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    q, s = quantize_per_channel(w)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    ref = x.float() @ (q.float() * s.reshape(-1, 1)).T + (b.float() if bias else 0)
    b = b.to(DEV) if bias else None
    return x.to(DEV), q.to(DEV), s.reshape(1, -1).float().to(DEV), b, ref.to(DEV)


@pytest.mark.parametrize("m,k,n,bias", [(1, 64, 48, False), (3, 100, 32, True), (20, 96, 64, True), (40, 64, 32, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w8a16_matches_dequantized_reference(m, k, n, bias, dtype):
    from fvq_fp8.kernels.w8a16_triton import w8a16_linear

    x, q, s, b, ref = _case(m, k, n, dtype, bias, seed=m * 1000 + k)
    y = w8a16_linear(x, q, s, b)
    assert y.dtype == dtype and y.shape == (m, n)
    # One output rounding: <= 2^-8 relative for bf16 (2^-7 where the interpreter truncates), 2^-11 for fp16.
    # Any activation quantization (W8A8) would give ~2e-2, so these bounds can fail.
    bound = 8e-3 if dtype == torch.bfloat16 else 1e-3
    assert rel_err(y, ref) < bound


def test_w8a16_rows_are_independent():
    """Row i of a batch equals the same row run alone (masking of the padded rows is right)."""
    from fvq_fp8.kernels.w8a16_triton import w8a16_linear

    x, q, s, _, _ = _case(5, 64, 32, torch.float16, False, seed=7)
    batch = w8a16_linear(x, q, s, None)
    assert torch.equal(batch[3:4], w8a16_linear(x[3:4].contiguous(), q, s, None))


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


def test_launch_cache_reuses_compiled_kernel_only_for_its_key():
    from fastvideo_quant.kernels.triton_launch import LaunchCache

    class FakeCompiled:
        packed_metadata = None

        def __init__(self):
            self.launches = []

        def __getitem__(self, grid):
            return lambda *args: self.launches.append((grid, args))

    class FakeJit:
        def __init__(self):
            self.runs = 0
            self.compiled = FakeCompiled()

        def __getitem__(self, grid):
            def run(*args, **kw):
                self.runs += 1
                return self.compiled
            return run

    jit = FakeJit()
    cache = LaunchCache(jit, ["a", "B"])
    cache.launch("k1", (2,), (1,), {"B": 4}, {"num_warps": 4})
    cache.launch("k1", (3,), (5,), {"B": 4}, {"num_warps": 4})
    cache.launch("k2", (3,), (5,), {"B": 8}, {"num_warps": 4})
    assert jit.runs == 2 and jit.compiled.launches == [((3, 1, 1), (5, 4))]
