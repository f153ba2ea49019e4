"""A plugin's ``apply`` that returns something other than one tensor: ``None`` (a forgotten ``return``) or a tuple
(``return out, None``, the layer's own pair). The layer's forward failed with a bare ``AttributeError: 'NoneType'
object has no attribute 'dim'``, and the conformance suite with 37 failures inside its own code (``torch.equal``,
``.shape``, ``.clone``) blamed on fastvideo-quant. Now the layer raises a PluginError naming the method class, its
plugin and distribution, the layer and what was returned; the suite reports ``[contract: apply: returns one
tensor]`` from every check that calls apply."""

from __future__ import annotations

import sys

import fake_dist
import pytest
import torch

from fastvideo_quant.errors import PluginError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading
from fastvideo_quant.quantization import get_quantization_config
from fastvideo_quant.testing.conformance import (
    ConformanceFailure,
    Subject,
    check_apply,
    check_apply_before_processing,
    check_deepcopy,
    check_serialization,
    check_state_dict_round_trip,
)

METHOD = "toy-bad-return"
MODULE = "fvq_bad_return_hooks"
SOURCE = '''
import toy_method

from fastvideo_quant.plugins import hookimpl

#: What apply returns: "tensor" (correct), "none" or "tuple".
RETURNS = {"mode": "tensor"}


class BadReturnMethod(toy_method.ToyLinearMethod):
    def apply(self, layer, x, bias=None):
        out = super().apply(layer, x, bias)
        if RETURNS["mode"] == "none":
            return None
        if RETURNS["mode"] == "tuple":
            return out, None
        return out


class BadReturnConfig(toy_method.ToyConfig):
    @classmethod
    def get_name(cls):
        return "toy-bad-return"

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, BadReturnMethod)


@hookimpl
def register_quantization_methods(register):
    register(BadReturnConfig, BadReturnMethod, weight_loader_v2=True)
'''

FOUND = {"none": "None", "tuple": "a tuple of 2 (Tensor, None)"}
FIX = {"none": "end apply with return out", "tuple": "return the output tensor alone, not (out, bias)"}


@pytest.fixture
def bad_return(tmp_path, monkeypatch, fresh_plugins):
    """The plugin installed as distribution fvq-bad-return; the dict that sets what its apply returns."""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-bad-return", version="0.0.1", module=MODULE, source=SOURCE,
                      entry="bad_return")
    get_quantization_config(METHOD)  # (loads the plugins)
    returns = sys.modules[MODULE].RETURNS
    yield returns
    returns["mode"] = "tensor"


def _processed_layer() -> ReplicatedLinear:
    config = get_quantization_config(METHOD).from_config({})
    layer = ReplicatedLinear(16, 8, bias=True, quant_config=config, prefix="blocks.0.proj")
    for name, t in config.quantize_weight(torch.randn(8, 16)).items():
        getattr(layer, name).data.copy_(t)
    process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("mode", ["none", "tuple"])
def test_the_layer_names_the_method_plugin_and_what_apply_returned(bad_return, mode: str) -> None:
    layer = _processed_layer()
    out, _ = layer(torch.randn(2, 16))
    assert out.shape == (2, 8)
    bad_return["mode"] = mode
    with pytest.raises(PluginError) as err:
        layer(torch.randn(2, 16))
    msg = str(err.value)
    assert msg.startswith(f"ReplicatedLinear 'blocks.0.proj': BadReturnMethod.apply (method {METHOD!r} of plugin "
                          "'bad_return'"), msg
    assert "fvq-bad-return" in msg, msg  # its distribution
    assert f"returned {FOUND[mode]}; apply must return one tensor, the layer's output: {FIX[mode]}" in msg, msg
    assert f"(fvq check {METHOD} reports this as '[contract: apply: returns one tensor]')" in msg, msg


@pytest.mark.parametrize("mode", ["none", "tuple"])
@pytest.mark.parametrize("check", [
    lambda s: check_apply(s, "column", torch.float32),
    lambda s: check_apply_before_processing(s, "replicated"),
    lambda s: check_deepcopy(s, "replicated"),
    lambda s: check_state_dict_round_trip(s, "replicated"),
    lambda s: check_serialization(s, "replicated"),
], ids=["apply", "apply_before_processing", "deepcopy", "state_dict", "serialization"])
def test_the_suite_reports_the_contract(bad_return, mode: str, check) -> None:
    subject = Subject(METHOD)
    check(subject)  # a correct apply passes
    bad_return["mode"] = mode
    with pytest.raises(ConformanceFailure) as err:
        check(subject)
    msg = str(err.value)
    assert err.value.contract == "apply: returns one tensor", msg
    assert f"returned {FOUND[mode]}; apply must return one tensor" in msg and f"how to fix: {FIX[mode]}" in msg, msg
