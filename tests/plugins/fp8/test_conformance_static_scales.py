"""The conformance suite checks a method that needs calibration (fp8's static activation scheme), and catches a fused
layer that keeps the wrong one of its parts' static ``input_scale``s.

Before, the suite quantized every checkpoint without activations, so a static config failed 75 checks with the
method's own "needs calibration activations" error and could not be checked at all; and nothing gave a fused layer's
parts different input scales, so keeping q's scale (or the smallest) instead of the largest passed. Now a config whose
``requires_calibration()`` is True gets calibration activations, of a different range for each part of a fused layer
(``checkpoint.CALIBRATION_SPREAD``), as tools that calibrate each module on its own write them.
"""

from __future__ import annotations

import pytest
import torch
from fvq_fp8.config import Fp8Config
from fvq_fp8.method import Fp8LinearMethod
from torch.nn import Parameter

from fastvideo_quant import plugins
from fastvideo_quant.testing.conformance import ConformanceFailure, Subject, check_apply, check_per_shard_equals_fused
from fastvideo_quant.testing.conformance import checkpoint as ck

STATIC = {"quant_method": "fp8", "activation_scheme": "static"}


def _plugin(name: str, pick) -> object:
    """A plugin registering fp8 under ``name`` with a method that keeps ``pick(parts' input scales)`` for a fused
    layer instead of the largest."""

    class Method(Fp8LinearMethod):
        def process_weights_after_loading(self, layer) -> None:
            kept = pick(layer.input_scale.data.float().reshape(-1)).reshape(())
            super().process_weights_after_loading(layer)
            layer.input_scale = Parameter(kept, requires_grad=False)

    class Config(Fp8Config):
        @classmethod
        def get_name(cls) -> str:
            return name

        def get_quant_method(self, layer, prefix):
            return self.linear_method_or_skip(layer, prefix, lambda: Method(self))

    class Plugin:
        @plugins.hookimpl
        def register_quantization_methods(self, register) -> None:
            register(Config, Method, weight_loader_v2=True)

    return Plugin()


PICKS = {"first": lambda s: s[0], "last": lambda s: s[-1], "smallest": torch.amin, "mean": torch.mean}


@pytest.fixture
def mutants(fresh_plugins) -> None:
    for pick, fn in PICKS.items():
        plugins.register_plugin(_plugin(f"fp8-{pick}-scale", fn), name=f"fp8-{pick}-scale")
        fresh_plugins.append(f"fp8-{pick}-scale")


def test_a_static_config_gets_calibration_of_a_different_range_for_each_part() -> None:
    ckpt = ck.make_checkpoint(Subject("fp8", config=STATIC), "qkv")
    scales = [float(p.tensors["input_scale"]) for p in ckpt.parts]
    assert scales[1] > scales[2] > scales[0] > 0, scales  # (x0.25, x1.0, x0.5: the largest in the middle)
    assert scales[1] / scales[0] == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("kind", ["merged", "qkv"])
def test_the_largest_scale_passes(kind: str) -> None:
    s = Subject("fp8", config=STATIC)
    check_apply(s, kind, torch.float32)
    check_per_shard_equals_fused(s, kind)


@pytest.mark.parametrize("pick", list(PICKS))
def test_a_fused_layer_keeping_another_scale_fails_with_the_reason(mutants, pick: str) -> None:
    with pytest.raises(ConformanceFailure) as err:
        check_apply(Subject(f"fp8-{pick}-scale", config={**STATIC, "quant_method": f"fp8-{pick}-scale"}), "qkv",
                    torch.float32)
    failure = err.value
    assert failure.contract == "apply: accuracy", str(failure)
    assert "calibration activations of ranges x[0.25, 1.0, 0.5]" in str(failure), str(failure)
    assert "input_scale [" in str(failure) and "must be the largest of its parts'" in str(failure), str(failure)


def test_a_config_that_needs_no_calibration_is_quantized_without() -> None:
    """Methods that only may read activations (AWQ) keep the plain path: their checkpoints are what fvq quantize
    writes without --calibration, and the calibrated mode is their own tests' to check."""
    config = Fp8Config.from_config({"quant_method": "fp8"})
    assert ck.calibration_for(Subject("fp8"), config, "qkv", 1) is None


def test_a_merged_layer_of_more_parts_than_the_spread_lists_cycles_it() -> None:
    """A suite class may give the merged layer three parts; the spread lists two (was: IndexError)."""
    s = Subject("fp8", config=STATIC, merged_output_sizes=(64, 64, 64))
    scales = [float(p.tensors["input_scale"]) for p in ck.make_checkpoint(s, "merged").parts]
    assert scales[0] == pytest.approx(scales[2]) and scales[1] / scales[0] == pytest.approx(4.0, rel=1e-6), scales
    check_apply(s, "merged", torch.float32)


class RaisingConfig(Fp8Config):
    def requires_calibration(self) -> bool:
        raise RuntimeError("boom")


def test_a_requires_calibration_that_raises_is_named(monkeypatch) -> None:
    """Not a bare RuntimeError from every check that writes a checkpoint, nor a quantize_weight failure."""
    s = Subject("fp8", config=STATIC)
    with pytest.raises(ConformanceFailure) as err:
        ck.calibration_for(s, RaisingConfig.from_config(STATIC), "qkv", 0)
    assert err.value.contract == "requires_calibration", str(err.value)
    assert "RaisingConfig.requires_calibration()" in str(err.value) and "raised RuntimeError: boom" in str(err.value)
