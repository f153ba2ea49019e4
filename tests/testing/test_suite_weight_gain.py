"""The weight-fidelity check catches a scale off by a constant factor that the fidelity bound lets through.

``||dequantize_weight - w|| / ||w||`` below ``weight_rel_error`` passed any weight scaled by up to that bound: 4-bit
rounding errs ~0.10, so AWQ's bound of 0.14 passed scales 16/15 too large, and the suite's undeclared default (0.25)
passed a scale 3% off. Each checkpoint part's least-squares gain on its float weight must now be within
``max_gain_error`` (default 0.01) of 1; unbiased rounding leaves it within ~0.001.
"""

from __future__ import annotations

import dataclasses

import pytest
import toy_method

from fastvideo_quant import plugins
from fastvideo_quant.testing.conformance import ConformanceFailure, Subject, check_weight_fidelity


def _config(name: str, factor: float, part: str | None = None) -> type:
    """Toy int8 whose ``quantize_weight`` stores every scale (or the scale of fused part ``part``'s prefix) times
    ``factor``: the writer's slip, which the loader and ``dequantize_weight`` faithfully carry."""

    class Config(toy_method.ToyConfig):
        @classmethod
        def get_name(cls) -> str:
            return name

        def quantize_weight(self, weight, *, prefix="", activations=None):
            out = super().quantize_weight(weight, prefix=prefix, activations=activations)
            out["weight_scale"] = out["weight_scale"] * factor
            return out

    return Config


class Plugin:
    @plugins.hookimpl
    def register_quantization_methods(self, register) -> None:
        register(_config("toy-scale-3pct", 1.03), toy_method.ToyLinearMethod, weight_loader_v2=True)
        register(_config("toy-scale-16-15", 16 / 15), toy_method.ToyLinearMethod, weight_loader_v2=True)
        register(_config("toy-scale-exact", 1.0), toy_method.ToyLinearMethod, weight_loader_v2=True)


@pytest.fixture
def registered(fresh_plugins) -> None:
    plugins.register_plugin(Plugin(), name="toy-weight-gain")
    fresh_plugins.append("toy-weight-gain")


@pytest.mark.parametrize("kind", ["replicated", "qkv", "row"])
@pytest.mark.parametrize(("method", "gain"), [("toy-scale-3pct", "1.03"), ("toy-scale-16-15", "1.06")])
def test_a_constant_scale_slip_within_the_bound_fails_naming_the_gain(registered, kind: str, method: str,
                                                                       gain: str) -> None:
    with pytest.raises(ConformanceFailure) as err:
        check_weight_fidelity(Subject(method), kind)
    failure = err.value
    assert failure.contract == "loading: weight scale", str(failure)
    assert gain in str(failure) and "max_gain_error 0.01" in str(failure), str(failure)
    if kind == "qkv":
        assert "'q': " in str(failure) and "'v': " in str(failure), str(failure)


@pytest.mark.parametrize("kind", ["replicated", "merged", "qkv", "row"])
def test_an_exact_scale_passes(registered, kind: str) -> None:
    check_weight_fidelity(Subject("toy-scale-exact"), kind)


def test_a_method_that_clips_on_purpose_declares_its_bound(registered) -> None:
    subject = dataclasses.replace(Subject("toy-scale-3pct"), max_gain_error=0.05)
    check_weight_fidelity(subject, "qkv")
