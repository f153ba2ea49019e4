"""``check_rejects_misshaped`` on a method whose ``quantize_weight`` names a tensor no parameter of the layer has
(``qweight`` for a parameter ``weight``): it raised a bare ``KeyError: 'qweight'`` from the suite's own lookup, where
every other loading test reports ``[contract: quantize_weight matches create_weights]``. It reports that too."""

from __future__ import annotations

import pytest
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.testing.conformance import ConformanceFailure, Subject, check_rejects_misshaped
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS

METHOD = "toy-qweight-name"


class QweightConfig(toy_method.ToyConfig):
    """Bug: the checkpoint's weight is written as 'qweight', but create_weights registers 'weight'."""

    @classmethod
    def get_name(cls) -> str:
        return METHOD

    def quantize_weight(self, weight, *, prefix="", activations=None):
        out = super().quantize_weight(weight, prefix=prefix, activations=activations)
        return {"qweight": out.pop("weight"), **out}


class QweightPlugin:
    @plugins.hookimpl
    def register_quantization_methods(self, register) -> None:
        register(QweightConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)


@pytest.fixture
def qweight(fresh_plugins) -> Subject:
    plugins.register_plugin(QweightPlugin(), name=METHOD)
    fresh_plugins.append(METHOD)
    return Subject(METHOD)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_a_tensor_name_no_parameter_has_is_the_names_contract(qweight: Subject, kind: str) -> None:
    with pytest.raises(ConformanceFailure) as err:
        check_rejects_misshaped(qweight, kind)
    msg = str(err.value)
    assert err.value.contract == "quantize_weight matches create_weights", msg
    assert "quantize_weight returned ['qweight'], but create_weights registered no parameter of that name " \
           "(parameters: ['weight', 'weight_scale'])" in msg, msg


def test_the_toy_method_itself_passes(fresh_plugins) -> None:
    plugins.register_plugin(toy_method.ToyPlugin(), name="toy")
    fresh_plugins.append("toy")
    check_rejects_misshaped(Subject("toy-int8"), "qkv")
