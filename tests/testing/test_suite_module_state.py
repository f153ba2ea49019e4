"""The module-state checks for deepcopy and state_dict: a correct plugin passes, each broken one fails naming the
contract and the tensor (or the kind of tensor) its apply reads from outside the layer's persistent state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fvq_unquantized.method import UnquantizedLinearMethod

from fastvideo_quant.testing import conformance as C
from fastvideo_quant.testing.conformance.module_state import check_deepcopy, check_state_dict_round_trip

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins as bp  # noqa: E402
from broken_plugins import failure  # noqa: E402


class ClosureKernelMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        weight_t = layer.weight.detach().t().contiguous()
        layer.kernel = lambda x: x @ weight_t  # bug: a closure over a tensor; copies and load_state_dict miss it

    def apply(self, layer, x, bias=None):
        out = layer.kernel(x)
        return out + bias if bias is not None else out


class NonPersistentMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        # bug: apply reads a buffer the state_dict leaves out
        layer.register_buffer("weight_t", layer.weight.detach().t().contiguous(), persistent=False)

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight_t.t(), bias)


@pytest.fixture(scope="module")
def toys():
    mine = {"toy_closure_kernel": bp.Plugin(bp._config("toy_closure_kernel", ClosureKernelMethod, "ClosureKernelConfig"),
                                            ClosureKernelMethod, True),
            "toy_non_persistent": bp.Plugin(bp._config("toy_non_persistent", NonPersistentMethod, "NonPersistentConfig"),
                                            NonPersistentMethod, True),
            "toy_ok": bp.PLUGINS["toy_ok"]}
    with bp.registered(mine):
        yield


@pytest.mark.parametrize("kind", C.LAYER_KINDS)
def test_correct_plugin_passes(toys, kind: str) -> None:
    check_deepcopy(C.Subject("toy_ok"), kind)
    check_state_dict_round_trip(C.Subject("toy_ok"), kind)


def test_deepcopy_of_a_closure_kernel(toys) -> None:
    msg = failure(check_deepcopy, C.Subject("toy_closure_kernel"), "replicated")
    assert "[contract: module state: deepcopy]" in msg and "not the copy's" in msg and "closure" in msg, msg


def test_state_dict_of_a_closure_kernel(toys) -> None:
    msg = failure(check_state_dict_round_trip, C.Subject("toy_closure_kernel"), "merged")
    assert "[contract: module state: state_dict]" in msg and "reads a tensor outside them" in msg, msg


def test_state_dict_without_a_non_persistent_buffer(toys) -> None:
    msg = failure(check_state_dict_round_trip, C.Subject("toy_non_persistent"), "qkv")
    assert "[contract: module state: state_dict]" in msg and "weight_t (a non-persistent buffer" in msg, msg
    assert "persistent buffer" in msg, msg
    check_deepcopy(C.Subject("toy_non_persistent"), "qkv")  # a copy takes non-persistent buffers along


def test_deepcopy_sharing_a_tensor_with_the_original(toys, monkeypatch) -> None:
    real = torch.Tensor.__deepcopy__
    monkeypatch.setattr(torch.Tensor, "__deepcopy__",  # bug: buffers "copied" by reference
                        lambda self, memo: self if not isinstance(self, torch.nn.Parameter) else real(self, memo))
    msg = failure(check_deepcopy, C.Subject("toy_non_persistent"), "row")
    assert "[contract: module state: deepcopy]" in msg and "changed the original's output" in msg and "weight_t" in msg, msg
