"""int8's Triton path under ``torch.compile(fullgraph=True)``: one custom op (``fvq_int8::linear``).

Forced onto the Triton backend, so on CPU the op runs the kernels under the Triton interpreter and the compiled
graph (``aot_eager``) is checked against eager; on a GPU with ``inductor``.
"""

from __future__ import annotations

import pytest
import torch
from int8_helpers import config, needs_triton
from test_apply import _layer

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = needs_triton


def test_custom_op_passes_opcheck():
    from fvq_int8 import ops

    g = torch.Generator().manual_seed(0)
    layer = _layer(config(fvq_backend="triton"), torch.float32).to(DEV)
    x = torch.randn(5, layer.weight.shape[1], generator=g).to(DEV)
    for bias in (None, torch.randn(layer.weight.shape[0], generator=g).to(DEV)):
        torch.library.opcheck(ops.linear, (x, layer.weight, layer.weight_scale, bias, torch.float32))


@pytest.mark.parametrize("m", [3, 40])  # (on CUDA: the small-M kernel, then quant + W8A8 GEMM)
def test_compiled_apply_is_one_graph_and_matches_eager(m, monkeypatch):
    from fvq_int8 import ops

    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    layer = _layer(config(fvq_backend="triton"), dtype, bias=True).to(DEV)
    x = torch.randn(m, layer.weight.shape[1], generator=torch.Generator().manual_seed(m)).to(DEV, dtype)
    eager = layer.quant_method.apply(layer, x, layer.bias)
    calls = []
    real = ops.linear
    monkeypatch.setattr(ops, "linear", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    fn = torch.compile(lambda t: layer.quant_method.apply(layer, t, layer.bias), fullgraph=True,
                       backend="inductor" if DEV == "cuda" else "aot_eager")
    out = fn(x)
    assert calls, "the compiled path did not go through fvq_int8::linear"
    assert out.dtype == x.dtype and out.shape == eager.shape
    assert torch.allclose(out.float(), eager.float(), rtol=1e-3, atol=1e-3)
