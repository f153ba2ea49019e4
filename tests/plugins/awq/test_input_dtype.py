"""AWQ ``apply`` refuses an activation whose dtype is not one of the config's ``get_supported_act_dtypes()``
(integers would come back truncated, float64 silently rounded) with a TypeError naming the layer, the dtype found and
the dtypes supported — the same words in the int8, AWQ and fp8 plugins."""

from __future__ import annotations

import re

import pytest
import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.subject import Subject

SUBJECT = Subject(method="awq")


@pytest.fixture(scope="module")
def layer():
    return ck.build_loaded(SUBJECT, "column", ck.make_checkpoint(SUBJECT, "column"), bias=True, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.float64, torch.bool])
@pytest.mark.parametrize("shape", [(5,), (2, 3)])  # 2-D and 3-D inputs
def test_unsupported_activation_dtype_is_refused(layer, dtype, shape):
    x = (torch.randn(*shape, SUBJECT.input_size) * 3).to(dtype)
    supported = SUBJECT.declared_act_dtypes()  # the config's get_supported_act_dtypes()
    assert dtype not in supported
    with pytest.raises(TypeError) as err:
        layer.quant_method.apply(layer, x, layer.bias)
    assert not isinstance(err.value, WeightLoadError)  # an input problem, not a checkpoint one
    msg = str(err.value)
    assert msg.startswith(f"AWQ layer {layer.prefix!r}: input dtype {dtype} is not supported; expected one of "), msg
    assert re.search(", ".join(re.escape(str(d)) for d in supported), msg), msg

