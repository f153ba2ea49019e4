"""apply imports its kernels once: later calls run no import statement (host time matters at small M)."""

from __future__ import annotations

import builtins

import pytest
import torch
from fvq_int8 import Int8Config
from int8_helpers import TRITON, config, load

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading


def _imports_during(fn, monkeypatch) -> list[str]:
    seen: list[str] = []
    real = builtins.__import__

    def spy(name, *args, **kwargs):
        # The plugin's own imports; Triton's interpreter (CPU runs) imports its internals per launch.
        if name.startswith(("fvq_", "bitsandbytes")):
            seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    try:
        fn()
    finally:
        monkeypatch.setattr(builtins, "__import__", real)
    return seen


@pytest.mark.parametrize("backend", ["bitsandbytes", TRITON])
def test_apply_imports_nothing_after_the_first_call(backend, monkeypatch):
    layer = ReplicatedLinear(64, 32, bias=False, quant_config=config(fvq_backend=backend), prefix="l")
    load(layer, Int8Config().quantize_weight(torch.randn(32, 64)))
    process_weights_after_loading(layer)
    # Triton runs CUDA tensors natively, CPU tensors only under the interpreter (conftest sets it without CUDA).
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    layer.to(device)
    x = torch.randn(4, 64, device=device)
    layer(x)  # first call may import the kernels
    assert _imports_during(lambda: layer(x), monkeypatch) == []


def test_only_bitsandbytes_unused_4bit_warning_is_dropped():
    """Importing bitsandbytes through the plugin drops its 4-bit CPU-kernel warning (int8 never uses that kernel)
    and nothing else it logs."""
    import logging

    from fvq_int8.bnb_path import bnb_functional

    bnb_functional()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, ("x",), None)

    assert not logger.filter(record("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ..."))
    assert logger.filter(record("Failed to load something else: %s"))
