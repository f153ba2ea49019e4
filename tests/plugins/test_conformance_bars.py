"""The weight-fidelity bar of each built-in method's conformance classes (the class's weight_rel_error, else the
config class's) is tight enough to catch a scale written 20% off (the suite's default 0.25 lets it through, and apply
is compared with the method's own dequantize_weight), and loose enough for the method itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fastvideo_quant.testing import conformance as C

HERE = Path(__file__).parent


def _classes():
    for path in sorted(HERE.glob("*/test_conformance.py")):
        spec = importlib.util.spec_from_file_location(f"_bars_{path.parent.name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # (its helpers, as its own conftest does)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        for name, cls in vars(module).items():
            if isinstance(cls, type) and issubclass(cls, C.ConformanceTests) and cls is not C.ConformanceTests:
                yield pytest.param(cls, id=f"{path.parent.name}.{name}")


def _subject(cls) -> C.Subject:
    return C.Subject(cls.method, config=getattr(cls, "config", None), weight_rel_error=cls.weight_rel_error)


@pytest.mark.parametrize("cls", list(_classes()))
def test_bar_is_set_and_the_method_meets_it(cls) -> None:
    from fastvideo_quant.testing.conformance.subject import DEFAULT_WEIGHT_REL_ERROR

    assert _subject(cls).weight_bar < DEFAULT_WEIGHT_REL_ERROR, f"{cls.__name__} keeps the default bar"
    C.check_weight_bar_declared(_subject(cls))  # declared: no skip
    if cls.method == "int8":
        pytest.importorskip("bitsandbytes")
    C.check_weight_fidelity(_subject(cls), "qkv")


@pytest.mark.parametrize("cls", [c for c in _classes() if c.values[0].method in ("fp8", "int8", "awq")])
def test_a_scale_20_percent_off_fails_the_bar(cls, monkeypatch) -> None:
    if cls.method == "int8":
        pytest.importorskip("bitsandbytes")
    config_cls = _subject(cls).config_cls()
    scales = {"fp8": ("weight_scale", "weight_scale_inv"), "int8": ("SCB",), "awq": ("scales",)}[cls.method]
    original = config_cls.quantize_weight

    def off(self, weight, **kwargs):
        tensors = original(self, weight, **kwargs)
        scale = next(name for name in scales if name in tensors)
        tensors[scale] = (tensors[scale].float() * 1.2).to(tensors[scale].dtype)  # the bug
        return tensors

    monkeypatch.setattr(config_cls, "quantize_weight", off)
    with pytest.raises(C.ConformanceFailure, match="weight fidelity"):
        C.check_weight_fidelity(_subject(cls), "qkv")
    monkeypatch.setattr(config_cls, "weight_rel_error", None)
    # (the default bar lets it through; each part's gain, 1.2, does not)
    with pytest.raises(C.ConformanceFailure, match=r"\[contract: loading: weight scale\].* of 'q': 1\.(19|20)"):
        C.check_weight_fidelity(C.Subject(cls.method, config=getattr(cls, "config", None)), "qkv")
    with pytest.raises(pytest.skip.Exception, match=r"weight fidelity checked at the default bar 0.25 only"):
        C.check_weight_bar_declared(C.Subject(cls.method, config=getattr(cls, "config", None)))
