"""unquantized, fp8, int8 and AWQ ``apply`` refuse an activation whose dtype is not one of the config's
``get_supported_act_dtypes()`` (integers would come back truncated, float64 silently rounded) with one TypeError
naming the layer, the dtype found and the dtypes supported."""

from __future__ import annotations

import re

import pytest
import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.subject import Subject

METHODS = {"unquantized": "unquantized", "fp8": "fp8", "int8": "int8", "awq": "AWQ"}  # method -> the label its messages use


@pytest.fixture(scope="module", params=list(METHODS))
def subject_and_layer(request):
    if request.param == "int8":
        pytest.importorskip("bitsandbytes")
    subject = Subject(method=request.param)
    layer = ck.build_loaded(subject, "column", ck.make_checkpoint(subject, "column"), bias=True, dtype=torch.float32)
    return subject, layer


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.float64, torch.bool])
@pytest.mark.parametrize("shape", [(5,), (2, 3)])  # 2-D and 3-D inputs
def test_unsupported_activation_dtype_is_refused(subject_and_layer, dtype, shape):
    subject, layer = subject_and_layer
    x = (torch.randn(*shape, subject.input_size) * 3).to(next(layer.parameters()).device, dtype)  # (fp8: GPU there)
    supported = subject.declared_act_dtypes()  # the config's get_supported_act_dtypes()
    assert dtype not in supported
    with pytest.raises(TypeError) as err:
        layer.quant_method.apply(layer, x, layer.bias)
    assert not isinstance(err.value, WeightLoadError)  # an input problem, not a checkpoint one
    msg = str(err.value)
    label = METHODS[subject.method]
    assert msg.startswith(f"{label} layer {layer.prefix!r}: input dtype {dtype} is not supported; expected one of "), msg
    assert re.search(", ".join(re.escape(str(d)) for d in supported), msg), msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unquantized_computes_in_the_inputs_float_dtype(dtype):
    """As every method's ``apply``: a bf16 layer called with float32 / float16 input computes at the input's
    precision and returns its dtype (was torch's bare dtype-mismatch error); under autocast ``F.linear`` decides."""
    subject = Subject(method="unquantized")
    layer = ck.build_loaded(subject, "row", ck.make_checkpoint(subject, "row"), bias=True, dtype=torch.bfloat16)
    x = torch.randn(3, subject.input_size, dtype=dtype, device=layer.weight.device)  # the suite's device
    out, _ = layer(x)
    want = torch.nn.functional.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))
    assert out.dtype == dtype and torch.equal(out, want)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        assert layer(x)[0].dtype == torch.bfloat16
