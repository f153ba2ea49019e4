"""A warning ``validate_loaded_weights`` returns (tensors suspect but loadable) is issued once the whole model has
passed its checks: one warning of each class, naming every layer that returned it, and none for a model whose checks
failed. The plugin keeps nothing between loads (fp8's reciprocal-scale warning is one: tests/plugins/fp8/
test_reciprocal_scales.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
import toy_method

from fastvideo_quant.errors import CheckpointWarning, WeightLoadError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading


class SuspectWarning(CheckpointWarning):
    pass


class OtherWarning(UserWarning):
    pass


class WarningMethod(toy_method.ToyLinearMethod):
    """Returns a SuspectWarning for a layer whose scale is above 100, an OtherWarning for one below 0.01, and fails
    one whose scale is negative."""

    def validate_loaded_weights(self, layer):
        scale = float(layer.weight_scale.max())
        if scale < 0:
            raise WeightLoadError(f"layer {layer.prefix!r}: a negative scale")
        if scale > 100:
            return SuspectWarning(f"layer {layer.prefix!r}: scale {scale:g} is suspect")
        if scale < 0.01:
            return OtherWarning(f"layer {layer.prefix!r}: scale {scale:g} is tiny")
        return None


class Config(toy_method.ToyConfig):
    def get_quant_method(self, layer, prefix):
        return WarningMethod()


def _model(scales: dict[str, float]) -> torch.nn.ModuleDict:
    model = torch.nn.ModuleDict({n: ReplicatedLinear(8, 8, bias=False, quant_config=Config(), prefix=n) for n in scales})
    for name, scale in scales.items():
        model[name].weight.data.fill_(1)
        model[name].weight_scale.data.fill_(scale)
    return model


def _warnings(model) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        process_weights_after_loading(model)
    return list(caught)


def test_one_warning_of_each_class_names_every_layer_that_returned_it():
    caught = _warnings(_model({"a": 1.0, "b": 500.0, "c": 1e3, "d": 1e-3, "e": 700.0}))
    assert [(w.category, str(w.message)) for w in caught] == [
        (SuspectWarning, "layer 'b': scale 500 is suspect (the same for 2 more layer(s): 'c', 'e')"),
        (OtherWarning, "layer 'd': scale 0.001 is tiny")]


def test_a_model_whose_checks_fail_warns_nothing():
    model = _model({"a": -1.0, "b": 500.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightLoadError, match="a negative scale"):
            process_weights_after_loading(model)
    assert caught == []


def test_a_warning_made_an_error_stops_before_any_layer_is_processed():
    """-W error::SuspectWarning: the warning is raised once the checks pass, before processing (nothing converted)."""
    model = _model({"a": 1.0, "b": 500.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SuspectWarning)
        with pytest.raises(SuspectWarning):
            process_weights_after_loading(model)
    from fastvideo_quant.quantization.base import weights_processed

    assert not any(weights_processed(m) for m in model.values())


class RichWarning(UserWarning):
    def __init__(self, message: str, layer: str) -> None:
        super().__init__(message)
        self.layer = layer


class OddReturnsMethod(toy_method.ToyLinearMethod):
    returns: object = None

    def validate_loaded_weights(self, layer):
        return type(self).returns(layer) if callable(type(self).returns) else type(self).returns


class OddConfig(toy_method.ToyConfig):
    def get_quant_method(self, layer, prefix):
        return OddReturnsMethod()


def _odd_model() -> torch.nn.ModuleDict:
    model = torch.nn.ModuleDict({n: ReplicatedLinear(8, 8, bias=False, quant_config=OddConfig(), prefix=n) for n in "ab"})
    for layer in model.values():
        layer.weight.data.fill_(1)
        layer.weight_scale.data.fill_(1)
    return model


def test_a_warning_class_built_otherwise_is_issued_as_returned(monkeypatch):
    """A plugin's warning class whose constructor takes more than a message: each instance is issued as returned
    (was: a TypeError from rebuilding it, after every check had passed)."""
    monkeypatch.setattr(OddReturnsMethod, "returns", staticmethod(lambda layer: RichWarning(f"{layer.prefix} odd",
                                                                                             layer.prefix)))
    caught = _warnings(_odd_model())
    assert [(w.category, str(w.message), w.message.layer) for w in caught] == [(RichWarning, "a odd", "a"),
                                                                            (RichWarning, "b odd", "b")]


def test_a_value_other_than_none_or_a_warning_is_a_failure_naming_the_method(monkeypatch):
    """validate_loaded_weights returning a string would be dropped silently: it fails the check, naming the method
    and what it returned, and no layer is processed."""
    monkeypatch.setattr(OddReturnsMethod, "returns", "layer looks odd")
    with pytest.raises(WeightLoadError, match=r"OddReturnsMethod.validate_loaded_weights returned str 'layer looks "
                                              r"odd'; it returns None, or a Warning instance"):
        process_weights_after_loading(_odd_model())
