"""A model built from our layers under copy.deepcopy, pickling, state_dict round trips and dtype casts, per method (CPU)."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, Net, checkpoint_maker, config, inputs, loaded

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.parameter import ModelWeightParameter

LAYERS = {
    "replicated": lambda qc: ReplicatedLinear(64, 64, quant_config=qc, prefix="a"),
    "column": lambda qc: ColumnParallelLinear(64, 64, quant_config=qc, prefix="a"),
    "row": lambda qc: RowParallelLinear(64, 64, quant_config=qc, prefix="a"),
    "merged": lambda qc: MergedColumnParallelLinear(64, [64, 64], quant_config=qc, prefix="a"),
    "qkv": lambda qc: QKVParallelLinear(64, 16, 4, 2, quant_config=qc, prefix="a"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One checkpoint of :class:`Net` per method (written once, on first use)."""
    return checkpoint_maker(tmp_path_factory.mktemp("ckpt"))


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _bound_to(loader) -> object:
    """The object a parameter's weight_loader finally calls into (through functools.partial wrappers)."""
    while not isinstance(loader, types.MethodType):
        loader = loader.args[0] if hasattr(loader, "args") else loader.func
    return loader.__self__


# --- copy.deepcopy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", LAYERS)
def test_deepcopy_fresh_layer_keeps_parameter_classes_and_attributes(kind, method):
    layer = LAYERS[kind](config(method))
    twin = copy.deepcopy(layer)
    originals, copies = dict(layer.named_parameters()), dict(twin.named_parameters())
    assert list(copies) == list(originals)
    for name, param in originals.items():
        new = copies[name]
        assert type(new) is type(param), name
        assert new.shape == param.shape and new.dtype == param.dtype and new.data_ptr() != param.data_ptr()
        assert set(vars(new)) == set(vars(param)), name
        for attr in ("output_dim", "input_dim", "packed_dim", "packed_factor", "block_size"):
            assert getattr(new, attr, None) == getattr(param, attr, None), (name, attr)
        if "loaded_mask" in vars(param):
            assert torch.equal(new.loaded_mask, param.loaded_mask) and new.loaded_mask is not param.loaded_mask
        assert _bound_to(new.weight_loader) is twin, f"{name}.weight_loader still points to the original layer"


def _pickled(how: str, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` through ``copy.deepcopy``, ``torch.save``/``torch.load``, torch.multiprocessing's pickler or pickle."""
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions with ForkingPickler)

    if how == "deepcopy":
        return copy.deepcopy(model)
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)
    if how == "ForkingPickler":
        return pickle.loads(ForkingPickler.dumps(model))
    return pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("how", ["deepcopy", "torch.save", "ForkingPickler", "pickle"])
@pytest.mark.parametrize("method", METHODS)
def test_a_copy_of_a_fresh_model_loads_into_the_copy_only(method, how, checkpoints):
    """A fresh model's parameters keep their classes (their load_* methods) and their weight_loaders are bound to
    the copy's layers, however it was copied (deepcopy: ``parameter.deepcopy_parameter``; pickles:
    ``BasevLLMParameter.__reduce_ex__``)."""
    model = Net(config(method))
    with torch.no_grad():
        for t in _tensors(model).values():
            t.zero_()  # known contents (a fresh model holds uninitialised memory)
    if how == "pickle" and _has_float8(model):
        pytest.skip("torch cannot unpickle float8 tensors (test_plain_pickle_of_a_float8_tensor_still_fails_in_torch)")
    twin = _pickled(how, model)
    assert {n: type(p) for n, p in twin.named_parameters()} == {n: type(p) for n, p in model.named_parameters()}
    if how == "ForkingPickler":
        # torch.multiprocessing rebuilds a plain Parameter (the bias) without its attributes: the copy cannot load,
        # and the loader says so (docs/guide/loading.md: send loaded models, or build and load in the worker)
        with pytest.raises(CheckpointError, match=r"'qkv_proj.bias' shard 'q': the parameter has no weight_loader, so "
                                                  r"nothing can place shard 'q' of this fused layer. The layer gives "
                                                  r"its bias one when it is built, so the parameter lost its "
                                                  r"attributes on the way here: torch.multiprocessing"):
            load_checkpoint(twin, checkpoints(method))
        return
    load_checkpoint(twin, checkpoints(method))
    assert all(not t.any() for t in _tensors(model).values()), "loading the copy wrote into the original"
    assert not any(getattr(m, "_fvq_weights_processed", False) for m in model.modules())
    assert torch.equal(twin(inputs()), loaded(method, checkpoints(method))(inputs()))


@pytest.mark.parametrize("method", METHODS)
def test_deepcopy_of_a_loaded_model_is_identical_and_independent(method, checkpoints):
    model = loaded(method, checkpoints(method))
    x = inputs()
    expected = model(x)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), expected)
    with torch.no_grad():
        for t in _tensors(twin).values():
            if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
                t.mul_(2)  # scales and biases (the quantized weights' dtypes have no arithmetic on CPU)
    assert not torch.equal(twin(x), expected)
    assert torch.equal(model(x), expected)



def _has_float8(model: torch.nn.Module) -> bool:
    return any(t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for t in _tensors(model).values())


@pytest.mark.parametrize("method", METHODS)
def test_a_loaded_model_round_trips_through_torch_save_and_torch_multiprocessing(method, checkpoints):
    """What docs/guide/loading.md names for moving a loaded model between processes: ``torch.save`` of the whole
    model and torch.multiprocessing's pickler (how ``mp.spawn`` / DataLoader workers send it); plain ``pickle`` where
    the model holds no float8 tensor (see the next test)."""
    model = loaded(method, checkpoints(method))
    x = inputs()
    expected = model(x)
    hows = ["torch.save", "ForkingPickler"] + ([] if _has_float8(model) else ["pickle"])
    for how in hows:
        twin = _pickled(how, model)
        assert torch.equal(twin(x), expected), how
        assert {n: type(p) for n, p in twin.named_parameters()} == {n: type(p) for n, p in model.named_parameters()}


def test_plain_pickle_of_a_float8_tensor_still_fails_in_torch():
    """docs/guide/loading.md says plain ``pickle`` of a model holding float8 tensors (the fp8 method's) fails in torch
    itself; when a torch release fixes it, this fails and the docs' line should go."""
    import pickle

    t = torch.zeros(2, dtype=torch.float8_e4m3fn)
    with pytest.raises(AttributeError, match="UntypedStorage"):
        pickle.loads(pickle.dumps(t))

# --- forward before loading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [m for m in METHODS if m != "unquantized"])
def test_forward_before_loading_says_load_checkpoint_or_process(method):
    from fastvideo_quant.errors import NotProcessedError

    model = Net(config(method))
    with pytest.raises(NotProcessedError) as info:
        model(inputs())
    assert str(info.value) == (
        "layer 'qkv_proj' (QKVParallelLinear): forward before its weights were loaded and processed. Load the "
        "checkpoint with fastvideo_quant.loader.load_checkpoint(model, path), which processes them, or, having set "
        "the parameters yourself, call fastvideo_quant.loader.process_weights_after_loading(model)")


# --- dtype casts ---------------------------------------------------------------------------------------------
CASTS = {"to-bf16": lambda m: m.to(torch.bfloat16), "half": lambda m: m.half(),
         "to-cpu-fp16": lambda m: m.to("cpu", torch.float16)}
CAST_DTYPE = {"to-bf16": torch.bfloat16, "half": torch.float16, "to-cpu-fp16": torch.float16}


def _dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    return {n: t.dtype for n, t in _tensors(model).items()}


def _format_tensors_keep_dtype(method: str, model: torch.nn.Module, before: dict[str, torch.dtype], dtype) -> None:
    after = _dtypes(model)
    for name, was in before.items():
        follows = method == "unquantized" or name.endswith(".bias")
        assert after[name] == (dtype if follows and was.is_floating_point else was), (name, was, after[name])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cast", CASTS)
def test_cast_after_loading_changes_only_the_bias_and_activations(method, cast, checkpoints):
    model = loaded(method, checkpoints(method))
    before = _dtypes(model)
    reference = model(inputs())
    CASTS[cast](model)
    _format_tensors_keep_dtype(method, model, before, CAST_DTYPE[cast])
    out = model(inputs(CAST_DTYPE[cast]))
    assert out.dtype == CAST_DTYPE[cast]
    assert ((out.float() - reference).norm() / reference.norm()).item() < 0.05


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cast", CASTS)
def test_cast_before_loading_loads_the_checkpoint_as_written(method, cast, checkpoints):
    """Cast, then load: the same format tensors, bit for bit, as load, then cast (AWQ's fp16 scales not rounded)."""
    early = Net(config(method))
    before = _dtypes(early)
    CASTS[cast](early)
    _format_tensors_keep_dtype(method, early, before, CAST_DTYPE[cast])
    load_checkpoint(early, checkpoints(method))
    late = CASTS[cast](loaded(method, checkpoints(method)))
    for name, t in _tensors(late).items():
        assert torch.equal(_tensors(early)[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    x = inputs(CAST_DTYPE[cast])
    assert torch.equal(early(x), late(x))


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("method", METHODS)
def test_cast_to_another_device_and_dtype_moves_every_tensor(method, device, checkpoints):
    model = loaded(method, checkpoints(method))
    before = _dtypes(model)
    model.to(device, torch.bfloat16)
    _format_tensors_keep_dtype(method, model, before, torch.bfloat16)
    assert {t.device.type for t in _tensors(model).values()} == {device}
    if device == "cuda":
        out = model(inputs(torch.bfloat16).to(device))
        assert out.dtype == torch.bfloat16 and out.device.type == "cuda"


# --- state_dict ----------------------------------------------------------------------------------------------
def _layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "quant_method")}


@pytest.mark.parametrize("method", METHODS)
def test_a_loaded_models_state_dict_holds_every_tensor_it_uses(method, checkpoints):
    model = loaded(method, checkpoints(method))
    keys = set(model.state_dict())
    for name, layer in _layers(model).items():
        used = {f"{name}.{n}" for n, t in list(layer.named_parameters()) + list(layer.named_buffers()) if t is not None}
        assert used <= keys, f"{name}: state_dict lacks {sorted(used - keys)}"


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_between_loaded_models_restores_identical_outputs(method, checkpoints, tmp_path):
    source = loaded(method, checkpoints(method, seed=0))
    target = loaded(method, checkpoints(method, seed=1))
    x = inputs()
    assert not torch.equal(target(x), source(x))
    torch.save(source.state_dict(), tmp_path / "sd.pt")
    target.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_between_fresh_models_round_trips(method):
    source, target = Net(config(method)), Net(config(method))
    with torch.no_grad():
        for t in _tensors(source).values():
            t.fill_(1)
    target.load_state_dict(source.state_dict())
    assert all(t.eq(1).all() for t in _tensors(target).values())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "unquantized"])
def test_a_loaded_state_dict_into_a_fresh_model_says_load_the_checkpoint_first(method, checkpoints):
    from fastvideo_quant.errors import ModelStateError

    with pytest.raises(ModelStateError, match=r"layer 'qkv_proj' \(QKVParallelLinear\): the state_dict was saved "
                       r"from a loaded model .*\.load_checkpoint\(model, path\) .*`fvq quantize`"):
        Net(config(method)).load_state_dict(loaded(method, checkpoints(method)).state_dict())
    with pytest.raises(ModelStateError, match=r"layer 'qkv_proj' .* saved from a model not loaded yet"):
        loaded(method, checkpoints(method)).load_state_dict(Net(config(method)).state_dict())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "unquantized"])
def test_an_unquantized_state_dict_into_a_quantized_model_is_refused_by_name(method, checkpoints):
    from fastvideo_quant.errors import ModelStateError

    with pytest.raises(ModelStateError, match=r"layer 'qkv_proj' .* no record of a quantized layer"):
        Net(config(method)).load_state_dict(loaded("unquantized", checkpoints("unquantized")).state_dict())
    with pytest.raises(ModelStateError, match=rf"layer 'qkv_proj' .* quantized with '{config(method).get_name()}'; "
                       "this layer is unquantized"):
        Net(None).load_state_dict(Net(config(method)).state_dict())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "unquantized"])
def test_a_fine_tunes_trained_bias_alone_restores_into_a_quantized_layer(method, checkpoints):
    """The state_dict a fine-tune saves of what it trains ({k: v for k, v in model.state_dict().items() if k in
    trainable}) holds a quantized layer's bias and no record: it was refused as "saved from an unquantized layer";
    the bias is in no quantized format, so it loads. A quantized tensor without the record is still refused, naming
    the keys found."""
    from fastvideo_quant.errors import ModelStateError

    trained = loaded(method, checkpoints(method))
    with torch.no_grad():
        trained.qkv_proj.bias.add_(1.0)
    saved = {"qkv_proj.bias": trained.state_dict()["qkv_proj.bias"]}
    model = loaded(method, checkpoints(method))
    result = model.load_state_dict(saved, strict=False)
    assert "qkv_proj.bias" not in result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.qkv_proj.bias, trained.qkv_proj.bias)
    x = torch.randn(3, HIDDEN)
    assert torch.equal(model(x), trained(x))
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*qkv_proj\."):  # (torch's, strict)
        loaded(method, checkpoints(method)).load_state_dict(saved)
    kernel = {k: v for k, v in trained.state_dict().items() if k.startswith("qkv_proj.") and "_extra_state" not in k}
    with pytest.raises(ModelStateError, match=r"layer 'qkv_proj' .* holds this layer's \[.*'bias'.*\] but no record "
                                              r"of a quantized layer \('_extra_state'.*only what a fine-tune trains"):
        loaded(method, checkpoints(method)).load_state_dict(kernel, strict=False)


def test_other_config_of_the_same_method_is_refused_by_name():
    from fastvideo_quant.errors import ModelStateError

    with pytest.raises(ModelStateError, match=r"layer 'qkv_proj' .* Build the model with the same quantization config"):
        Net(config("fp8-channel")).load_state_dict(Net(config("fp8-tensor")).state_dict())


def test_unquantized_state_dict_is_plain_torchs():
    model = Net(None)
    assert sorted(model.state_dict()) == sorted(n for n, _ in model.named_parameters())
    plain = torch.nn.Linear(64, 64, bias=False)
    plain.load_state_dict({"weight": model.state_dict()["out.weight"]})


def test_fp8_scalar_scale_present_in_one_model_only_follows_the_state_dict(checkpoints, tmp_path):
    """qkv_proj's weight_scale_scalar exists only when q, k and v share one scale: a state_dict carries it, or not."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoints("fp8-tensor") / "model.safetensors"))
    for part in ("k_proj", "v_proj"):
        tensors[f"{part}.weight_scale"] = tensors["q_proj.weight_scale"].clone()
    (tmp_path / "shared").mkdir()
    save_file(tensors, str(tmp_path / "shared" / "model.safetensors"))
    x = inputs()
    for source_path, target_path in ((tmp_path / "shared", checkpoints("fp8-tensor")),
                                     (checkpoints("fp8-tensor"), tmp_path / "shared")):
        source, target = loaded("fp8-tensor", source_path), loaded("fp8-tensor", target_path)
        assert (source.qkv_proj.weight_scale_scalar is None) != (target.qkv_proj.weight_scale_scalar is None)
        target.load_state_dict(source.state_dict())
        assert torch.equal(target(x), source(x))



class _SlottedParameter(ModelWeightParameter):
    __slots__ = ("extra",)


class _GetstateParameter(ModelWeightParameter):
    def __getstate__(self):
        state = dict(vars(self))
        state.pop("fn", None)  # unpicklable
        return state


def _loader(*args) -> None:
    """A module-level (picklable) weight_loader."""


def test_a_parameter_subclass_pickles_and_deepcopies_with_its_slots_and_its_getstate():
    """``BasevLLMParameter.__reduce_ex__`` gathers the state as torch does for tensors: a subclass's ``__slots__``
    and its own ``__getstate__`` are honoured, and requires_grad is kept."""
    import pickle

    p = _SlottedParameter(data=torch.ones(2, 3), input_dim=1, output_dim=0, weight_loader=_loader)
    p.extra = 7
    p.requires_grad_(True)
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is _SlottedParameter and q.extra == 7 and q.output_dim == 0 and q.requires_grad
    assert torch.equal(q, p)
    g = _GetstateParameter(data=torch.ones(2, 3), input_dim=1, output_dim=0, weight_loader=_loader)
    g.fn = lambda: 1
    h = pickle.loads(pickle.dumps(g))
    assert type(h) is _GetstateParameter and not hasattr(h, "fn") and h.output_dim == 0
    d = copy.deepcopy(p)  # (deepcopy_parameter gathers the state the same way)
    assert type(d) is _SlottedParameter and d.extra == 7 and d.output_dim == 0
