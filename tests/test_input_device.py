"""An input on another device than the layer's weights is refused by the layer, naming it and both devices, the same
for every method. Before, each method answered in its own way: torch's bare 'Tensor on device cpu is not on the
expected device meta!' (unquantized, AWQ), a meta output from bitsandbytes' fake kernel (int8: no error at all), a
message naming the layer (fp8)."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.layers.linear import ColumnParallelLinear
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject

METHODS = ("unquantized", "fp8", "int8", "awq")


def _loaded(method: str, kind: str, bias: bool) -> torch.nn.Module:
    subject = Subject(method)
    return ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=bias, dtype=torch.bfloat16)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_a_meta_input_into_a_loaded_layer_is_refused_by_the_layer(method: str, kind: str, bias: bool) -> None:
    layer = _loaded(method, kind, bias)  # on the suite's device: the GPU where there is one, else the CPU
    tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
    where = str(next(t for n, t in tensors.items() if n != "bias").device)
    x = torch.empty(4, layer.input_size, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ValueError) as info:
        layer(x)
    msg = str(info.value)
    assert msg.startswith(f"{type(layer).__name__} 'conformance.{kind}': the input is on meta, the layer's weights on "
                          f"{where} ("), msg
    assert f"move the input to the layer's device (x.to('{where}')) or the model to the input's" in msg, msg
    named = msg.split(f"{where} (", 1)[1].split(")", 1)[0].strip("'")
    assert named != "bias" and named in tensors, msg
    # the same layer still runs an input on its device
    out, _ = layer(torch.randn(4, layer.input_size, dtype=torch.bfloat16, device=where))
    assert str(out.device) == where and torch.isfinite(out).all()


def test_a_layer_left_on_meta_says_its_weights_were_never_materialized() -> None:
    with torch.device("meta"):
        layer = ColumnParallelLinear(32, 16, bias=False, params_dtype=torch.float32, prefix="proj")
    with pytest.raises(ValueError, match=r"^ColumnParallelLinear 'proj': the input is on cpu, the layer's weights on "
                                         r"meta \('weight'\); .*a meta weight was never materialized: load the "
                                         r"checkpoint into the model, or to_empty\(\) it onto a device and load"):
        layer(torch.randn(2, 32))
