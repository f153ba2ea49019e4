"""Our layers where torch puts new parameters in place of the old: ``load_state_dict(assign=True)`` (a meta build
filled from a state_dict) and conversions under ``torch.__future__.set_swap_module_params_on_conversion(True)`` (what
tensor-subclass and FSDP2 users turn on) or ``set_overwrite_module_params_on_conversion(True)``. Each parameter keeps
its class and attributes (``weight_loader``, ``output_dim``, ...), so the layer still loads a checkpoint, and a no-op
conversion (``.to`` the device it is on) works."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from module_state_helpers import METHODS, Net, checkpoint_maker, config, inputs, loaded

from fastvideo_quant.loader import load_checkpoint

FLAGS = ["swap", "overwrite"]
CASTS = {
    "to(its device)": lambda m: m.to("cpu"),
    "float()": lambda m: m.float(),
    "to(bfloat16)": lambda m: m.to(torch.bfloat16),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return checkpoint_maker(tmp_path_factory.mktemp("ckpt"))


@contextlib.contextmanager
def _replacing(flag: str | None) -> Iterator[None]:
    """torch's conversions replacing (``swap``, ``overwrite``) parameters meanwhile; None: torch's default."""
    if flag is None:
        yield
        return
    setter = getattr(torch.__future__, f"set_{flag}_module_params_on_conversion")
    setter(True)
    try:
        yield
    finally:
        setter(False)


def _kinds(model: torch.nn.Module) -> dict[str, tuple[type, frozenset]]:
    """Each parameter's class and attribute names (the weight loader, its dims, load records)."""
    return {n: (type(p), frozenset(vars(p))) for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cast", CASTS)
@pytest.mark.parametrize("flag", FLAGS)
def test_a_conversion_that_replaces_parameters_keeps_them_loadable(flag, cast, method, checkpoints):
    with _replacing(None):
        expected = CASTS[cast](Net(config(method)))
        load_checkpoint(expected, checkpoints(method))
    model = Net(config(method))
    objects = {n: id(p) for n, p in model.named_parameters()}
    with _replacing(flag):
        CASTS[cast](model)
    assert _kinds(model) == _kinds(Net(config(method)))
    if flag == "swap":  # (the point of swapping: the same objects, which an optimizer may hold)
        assert {n: id(p) for n, p in model.named_parameters()} == objects
    load_checkpoint(model, checkpoints(method))
    x = inputs(next(p for n, p in expected.named_parameters() if n.endswith("bias")).dtype)
    assert torch.equal(model(x), expected(x))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("flag", FLAGS)
def test_a_loaded_model_converted_under_replacement_gives_the_same_outputs(flag, method, checkpoints):
    expected = loaded(method, checkpoints(method)).to(torch.bfloat16)
    model = loaded(method, checkpoints(method))
    kinds = _kinds(model)
    with _replacing(flag):
        model.to(torch.bfloat16)
    assert _kinds(model) == kinds
    x = inputs(torch.bfloat16)
    assert torch.equal(model(x), expected(x))


@pytest.mark.parametrize("method", METHODS)
def test_load_state_dict_under_swapping_between_loaded_models(method, checkpoints):
    source, target = loaded(method, checkpoints(method, seed=0)), loaded(method, checkpoints(method, seed=1))
    kinds = _kinds(target)
    with _replacing("swap"):
        target.load_state_dict(source.state_dict())
    assert _kinds(target) == kinds
    assert torch.equal(target(inputs()), source(inputs()))


def test_assign_into_a_meta_build_keeps_parameter_classes_and_loads_a_checkpoint_later(checkpoints):
    """The low-memory way to build a float model: on meta, then its tensors assigned from a state_dict."""
    source = loaded("unquantized", checkpoints("unquantized"))
    with torch.device("meta"):
        model = Net(config("unquantized"))
    model.load_state_dict(source.state_dict(), assign=True)
    assert _kinds(model) == _kinds(Net(config("unquantized")))
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model(inputs()), source(inputs()))
    load_checkpoint(model, checkpoints("unquantized", seed=1))  # (read each fused part through its weight_loader)
    assert torch.equal(model(inputs()), loaded("unquantized", checkpoints("unquantized", seed=1))(inputs()))


@pytest.mark.parametrize("method", METHODS)
def test_assign_of_a_fresh_state_dict_keeps_a_quantized_layer_loadable(method, checkpoints):
    model = Net(config(method))
    model.load_state_dict(Net(config(method)).state_dict(), assign=True)
    assert _kinds(model) == _kinds(Net(config(method)))
    load_checkpoint(model, checkpoints(method))
    assert torch.equal(model(inputs()), loaded(method, checkpoints(method))(inputs()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("flag", FLAGS)
def test_to_empty_of_a_meta_build_under_replacement_is_a_fresh_build(flag, method, checkpoints):
    with torch.device("meta"):
        model = Net(config(method))
    with _replacing(flag):
        model.to_empty(device="cpu")
    assert _kinds(model) == _kinds(Net(config(method)))
    load_checkpoint(model, checkpoints(method))
    assert torch.equal(model(inputs()), loaded(method, checkpoints(method))(inputs()))
