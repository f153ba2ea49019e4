"""AWQ's GPU dispatcher under ``torch.compile(fullgraph=True)``: one custom op (``fvq_awq::linear``).

On CPU the op runs the Triton kernels under the interpreter (opcheck, and a compiled call against eager); on a GPU
the layer's ``apply`` itself is compiled with ``inductor`` (the CPU ``apply`` is plain torch, covered by the
conformance suite's compile check).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from fvq_awq import ops  # noqa: E402

from fastvideo_quant.testing.conformance import checkpoint as ck  # noqa: E402
from fastvideo_quant.testing.conformance.subject import Subject  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _loaded_layer(dtype: torch.dtype, bias: bool = True) -> torch.nn.Module:
    """A loaded AWQ ColumnParallelLinear (256 -> 128, group 128) built the way the conformance suite builds it."""
    subject = Subject(method="awq")
    return ck.build_loaded(subject, "column", ck.make_checkpoint(subject, "column"), bias=bias, dtype=dtype).to(DEV)


@pytest.mark.parametrize("m", [1, 20])  # GEMV, then the fused GEMM / de-quantize routes
def test_custom_op_passes_opcheck_and_compiles_to_one_graph(m):
    dtype = torch.float16 if DEV == "cuda" else torch.float32
    layer = _loaded_layer(dtype)
    lay, w = layer.awq_layout, layer.quant_method.dequantize_weight(layer)
    x = torch.randn(m, lay.in_features, generator=torch.Generator().manual_seed(m)).to(DEV, dtype)
    bias = layer.bias
    args = (x, layer.qweight_k, layer.zeros_k, layer.scales_k, bias, lay.in_features, lay.out_features, lay.group,
            lay.bk8)
    torch.library.opcheck(ops.linear, args)
    eager = ops.linear(*args)
    torch._dynamo.reset()
    out = torch.compile(lambda t: ops.linear(t, *args[1:]), fullgraph=True,
                        backend="inductor" if DEV == "cuda" else "aot_eager")(x)
    assert out.shape == (m, lay.out_features) and out.dtype == dtype
    assert torch.allclose(out.float(), eager.float(), rtol=1e-3, atol=1e-3)
    ref = x.float() @ w.T + bias.float()
    assert ((eager.float() - ref).norm() / ref.norm()).item() < 5e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU apply is plain torch)")
def test_compiled_cuda_apply_goes_through_the_op(monkeypatch):
    layer = _loaded_layer(torch.float16)
    x = torch.randn(16, layer.awq_layout.in_features, device="cuda", dtype=torch.float16)
    calls = []
    real = ops.linear
    monkeypatch.setattr(ops, "linear", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    out = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True)(x)
    assert calls and torch.allclose(out, layer.quant_method.apply(layer, x, layer.bias), rtol=1e-3, atol=1e-3)
