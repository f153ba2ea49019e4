"""fp8 with a static activation scale (``activation_scheme: static``): a non-finite activation (+inf, -inf, NaN) gives
a non-finite output row — as ``F.linear`` and the dynamic path do — instead of the clamp's finite ``±448 * scale``;
finite activations past ``448 * scale`` still saturate (vLLM's behaviour, docs/methods/fp8.md), and the other tokens'
rows are untouched. On the layer (CPU: the torch reference; CUDA: the Triton kernel) and on the Triton kernel itself
(under the interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import fp8_layer
from fvq_fp8.kernels.ops import static_quant_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"
K, N, M = 64, 32, 20  # M > 16: past the CUDA small-M path, which does not quantize the activations
BAD = {1: float("inf"), 4: float("-inf"), 7: float("nan")}  # row -> value put in one of its columns
HUGE = 9  # a row with a finite value far past 448 * scale: saturates, stays finite


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with the non-finite rows and the huge row, the same x with the non-finite rows zeroed)."""
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    x[HUGE, 3] = 3e38 if dtype != torch.float16 else 6e4
    clean = x.clone()
    for row, value in BAD.items():
        x[row, row + 2] = value
        clean[row] = 0
    return x.to(DEV, dtype), clean.to(DEV, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nonfinite_activation_gives_nonfinite_row(dtype):
    if DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) / K**0.5
    layer = fp8_layer(w, {"quant_method": "fp8", "activation_scheme": "static"}, dtype=dtype,
                      activations=torch.randn(256, K, generator=g), device=DEV)
    assert layer.input_scale is not None
    x, clean = _inputs(dtype)
    out = layer.quant_method.apply(layer, x)
    for row in BAD:
        assert not bool(torch.isfinite(out[row]).any()), (row, out[row])
    good = [r for r in range(M) if r not in BAD]
    assert bool(torch.isfinite(out[good]).all())
    assert torch.equal(out[good], layer.quant_method.apply(layer, clean)[good])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (numpy under the interpreter, on the inf inputs)
def test_triton_static_kernel_maps_nonfinite_to_nan():
    """The GPU static kernel (interpreted on CPU, small shapes) against the torch reference: NaN exactly where ``x``
    is not finite, every other code bit for bit, ±448 where a finite value saturates."""
    pytest.importorskip("triton")
    if DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    from fvq_fp8.kernels import act_quant_triton

    scale = torch.tensor([0.013], device=DEV)
    for dtype in (torch.bfloat16, torch.float32):
        x, _ = _inputs(dtype)
        x = x[:, :40].contiguous()
        x[HUGE, 5] = -x[HUGE, 3]
        q, ref = act_quant_triton.static_quant(x, scale).float(), static_quant_ref(x, scale).float()
        bad = ~torch.isfinite(x)
        assert int(bad.sum()) == len(BAD)
        assert bool(q[bad].isnan().all()) and bool(ref[bad].isnan().all()), (q[bad], ref[bad])
        assert bool(torch.isfinite(q[~bad]).all())
        assert torch.equal(q[~bad], ref[~bad])
        assert q[HUGE, 3].item() == 448.0 and q[HUGE, 5].item() == -448.0
