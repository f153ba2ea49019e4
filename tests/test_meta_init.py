"""A model built on the meta device (shape inference, empty init) and materialized with ``to_empty`` loads like one
built on the device: its layers come back as fresh builds there (parameter classes, weight loaders, never-loaded
placeholders), for every method. A model still on meta is refused by the loader by name."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import METHODS, Net, config, inputs, loaded, write_checkpoint

from fastvideo_quant.errors import ModelStateError, WeightLoadError
from fastvideo_quant.loader import load_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {method: write_checkpoint(method, root / method) for method in METHODS}


def _fresh(model: torch.nn.Module) -> dict[str, tuple[type, tuple, torch.dtype, frozenset]]:
    return {n: (type(p), tuple(p.shape), p.dtype, frozenset(vars(p))) for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_to_empty_after_a_meta_build_loads_like_a_model_built_on_the_device(method, checkpoints):
    with torch.device("meta"):
        model = Net(config(method))
    model.to_empty(device="cpu")
    assert _fresh(model) == _fresh(Net(config(method)))  # classes, shapes, dtypes, attributes (weight_loader, ...)
    assert not any(p.is_meta for p in model.parameters())
    load_checkpoint(model, checkpoints[method])
    assert torch.equal(model(inputs()), loaded(method, checkpoints[method])(inputs()))


def test_to_empty_keeps_a_dtype_cast_made_on_meta(checkpoints):
    with torch.device("meta"):
        model = Net(config("unquantized")).to(torch.bfloat16)
    model.to_empty(device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("method", ["fp8-channel", "int8"])
def test_a_scale_never_loaded_after_to_empty_is_still_reported(method, checkpoints, tmp_path):
    """The placeholders are the fresh build's (NaN until loaded), not uninitialised memory that could pass."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoints[method] / "model.safetensors"))
    scale = "o_proj.weight_scale" if method.startswith("fp8") else "o_proj.SCB"
    del tensors[scale]
    (tmp_path / "ck").mkdir()
    save_file(tensors, str(tmp_path / "ck" / "model.safetensors"))
    with torch.device("meta"):
        model = Net(config(method))
    model.to_empty(device="cpu")
    with pytest.warns(Warning), pytest.raises(WeightLoadError, match="o_proj"):
        load_checkpoint(model, tmp_path / "ck", strict=False, process_weights=False)
        from fastvideo_quant.loader import process_weights_after_loading

        process_weights_after_loading(model)


def test_a_model_still_on_meta_is_refused_by_name(checkpoints):
    with torch.device("meta"):
        model = Net(config("fp8-tensor"))
    with pytest.raises(ModelStateError) as info:
        load_checkpoint(model, checkpoints["fp8-tensor"])
    text = str(info.value)
    assert text.startswith("load_checkpoint: the model's tensors 'qkv_proj.weight', 'qkv_proj.weight_scale', "), text
    assert "are on the meta device" in text and "model.to_empty(device=...)" in text, text


@pytest.mark.parametrize("how", ["loader", "direct"])  # (direct: each layer's process_weights_after_loading, as vLLM)
@pytest.mark.parametrize("method", METHODS)
def test_a_loaded_model_moved_to_meta_and_back_is_a_fresh_build_that_reloads(method, checkpoints, how):
    """Its tensors are discarded on meta, so to_empty brings back a fresh build, as after a meta build: quantized
    layers refuse forward until loaded (was: NaN outputs from uninitialised kernel-format tensors, and a reload
    refused as 'already loaded'), and the checkpoint loads into it again to the same outputs."""
    from fastvideo_quant.errors import NotProcessedError

    if how == "loader":
        model = loaded(method, checkpoints[method])
    else:
        model = Net(config(method))
        load_checkpoint(model, checkpoints[method], process_weights=False)
        for m in model.modules():
            if getattr(m, "quant_method", None) is not None:
                m.quant_method.process_weights_after_loading(m)
    want = model(inputs())
    model.to("meta").to_empty(device="cpu")
    assert _fresh(model) == _fresh(Net(config(method)))
    fresh = Net(config(method))
    assert {n: set(vars(m)) for n, m in model.named_modules()} == {n: set(vars(m)) for n, m in fresh.named_modules()}
    if method != "unquantized":  # (an unquantized fresh build computes on its uninitialised weight, as torch's)
        with pytest.raises(NotProcessedError):
            model(inputs())
    load_checkpoint(model, checkpoints[method])
    assert torch.equal(model(inputs()), want)


@pytest.mark.parametrize("method", METHODS)
def test_forward_on_meta_inputs_infers_shapes_or_says_the_layer_is_not_loaded(method):
    """Shape inference on meta: an unquantized layer gives a meta output of the right shape, like torch.nn.Linear;
    a quantized one not loaded says so (was: torch's 'unknown device type for autocast' from every layer)."""
    from fastvideo_quant.errors import NotProcessedError

    with torch.device("meta"):
        model = Net(config(method))
        x = inputs().to("meta")
    if method == "unquantized":
        out = model(x)
        assert out.is_meta and out.shape == Net(config(method))(inputs()).shape
    else:
        with pytest.raises(NotProcessedError):
            model(x)


def test_a_buffer_a_method_made_off_meta_does_not_block_the_rebuild():
    """A method that makes a small buffer on an explicit device in create_weights, under torch.device("meta"): the
    parameters decide, so to_empty still rebuilds the layer (its parameter classes and placeholders kept)."""
    with torch.device("meta"):
        model = Net(config("fp8-channel"))
        layer = next(m for m in model.modules() if getattr(m, "quant_method", None) is not None)
        layer.register_buffer("table", torch.zeros(3, device="cpu"))
    model.to_empty(device="cpu")
    assert _fresh(model) == _fresh(Net(config("fp8-channel")))


def test_meta_shape_inference_with_another_float_dtype_than_the_layer():
    """An unquantized bf16 layer on meta called with float32 meta input: the input's dtype, on meta (was torch's
    autocast error from the dtype cast's autocast query)."""
    with torch.device("meta"):
        model = Net(config("unquantized"), torch.bfloat16)
        out = model(inputs().to("meta"))
    assert out.is_meta and out.dtype == torch.float32
