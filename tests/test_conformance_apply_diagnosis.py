"""``check_apply`` names the right culprit. An ``apply`` returning zeros was reported as a bias bug ("[contract: apply:
bias applied once] apply(x, bias) - apply(x, None) is 0.00 × bias"), since the bias check ran before the output was
compared with the reference. The bias is blamed only when the output is otherwise right (``apply(x, bias)`` itself, or
``apply(x, None)`` plus the bias once); an output that is wrong anyway is an accuracy failure, which says when the
output is all zeros or the same for every row (it does not depend on x)."""

from __future__ import annotations

import pytest
import torch
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.testing.conformance import ConformanceFailure, Subject, check_apply


class ZerosMethod(toy_method.ToyLinearMethod):
    def apply(self, layer, x, bias=None):
        return torch.zeros(*x.shape[:-1], layer.weight.shape[0], dtype=x.dtype, device=x.device)


class BiasOnlyMethod(toy_method.ToyLinearMethod):
    """The output does not depend on x: the bias alone (zeros without one)."""

    def apply(self, layer, x, bias=None):
        out = torch.zeros(*x.shape[:-1], layer.weight.shape[0], dtype=x.dtype, device=x.device)
        return out if bias is None else out + bias


class BiasIgnoredMethod(toy_method.ToyLinearMethod):
    def apply(self, layer, x, bias=None):
        return super().apply(layer, x, None)


class BiasTwiceMethod(toy_method.ToyLinearMethod):
    def apply(self, layer, x, bias=None):
        out = super().apply(layer, x, bias)
        return out if bias is None else out + bias


METHODS = {"toy-zeros": ZerosMethod, "toy-bias-only": BiasOnlyMethod, "toy-bias-ignored": BiasIgnoredMethod,
           "toy-bias-twice": BiasTwiceMethod}


def _config(name: str, method_cls: type) -> type:
    class Config(toy_method.ToyConfig):
        @classmethod
        def get_name(cls) -> str:
            return name

        def get_quant_method(self, layer, prefix):
            return self.linear_method_or_skip(layer, prefix, method_cls)

    Config.__name__ = Config.__qualname__ = f"{method_cls.__name__}Config"
    return Config


class Plugin:
    @plugins.hookimpl
    def register_quantization_methods(self, register) -> None:
        for name, method_cls in METHODS.items():
            register(_config(name, method_cls), method_cls, weight_loader_v2=True)


@pytest.fixture
def registered(fresh_plugins) -> None:
    plugins.register_plugin(Plugin(), name="toy-apply-diagnosis")
    fresh_plugins.append("toy-apply-diagnosis")


def _failure(method: str, kind: str = "column") -> ConformanceFailure:
    with pytest.raises(ConformanceFailure) as err:
        check_apply(Subject(method), kind, torch.float32)
    return err.value


@pytest.mark.parametrize("kind", ["replicated", "qkv"])
def test_an_all_zero_output_is_an_accuracy_failure_not_a_bias_one(registered, kind: str) -> None:
    failure = _failure("toy-zeros", kind)
    assert failure.contract == "apply: accuracy", str(failure)
    assert "apply returned all zeros" in str(failure) and "× bias" not in str(failure), str(failure)


def test_an_output_that_ignores_x_is_an_accuracy_failure(registered) -> None:
    failure = _failure("toy-bias-only")
    assert failure.contract == "apply: accuracy", str(failure)
    assert "every row of the output is the same" in str(failure), str(failure)


@pytest.mark.parametrize("method, k", [("toy-bias-ignored", "0.00"), ("toy-bias-twice", "2.00")])
def test_a_bias_bug_is_still_the_bias_contract(registered, method: str, k: str) -> None:
    failure = _failure(method)
    assert failure.contract == "apply: bias applied once", str(failure)
    assert f"apply(x, bias) - apply(x, None) is {k} × bias (expected 1)" in str(failure), str(failure)


def test_the_correct_toy_method_passes(fresh_plugins) -> None:
    plugins.register_plugin(toy_method.ToyPlugin(), name="toy")
    fresh_plugins.append("toy")
    check_apply(Subject("toy-int8"), "column", torch.float32)
