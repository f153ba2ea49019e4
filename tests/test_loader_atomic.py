"""Checkpoint loading is all-or-nothing, or says exactly what it left behind.

* processing: every layer's ``validate_loaded_weights`` before any ``process_weights_after_loading``;
  a processing failure past validation names the layer and the layers already processed;
* two sources for one parameter (fused and parts, a stale file) are refused before anything is written;
* a processed model refuses a second load;
* ``strict=False`` reports (and warns about) what it did not load, and leaves those layers unprocessed.
"""

from __future__ import annotations

import json
import warnings
from typing import ClassVar

import pytest
import torch
import toy_method
from fvq_unquantized import UnquantizedConfig
from safetensors.torch import save_file
from test_loader import Block, hf_tensors

from fastvideo_quant import plugins
from fastvideo_quant.errors import (
    CheckpointError,
    CheckpointWarning,
    ModelStateError,
    NotProcessedError,
    WeightLoadError,
    WeightProcessingError,
)
from fastvideo_quant.layers.linear import LinearBase, QKVParallelLinear, ReplicatedLinear, RowParallelLinear
from fastvideo_quant.loader import checkpoint_files, load_checkpoint, process_weights_after_loading
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.base import QuantizeMethodBase

LAYERS = ("blocks.0.proj", "blocks.1.proj", "out")


class CheckedMethod(toy_method.ToyLinearMethod):
    """The toy per-row int8 method with a real check of its loaded scales, as a plugin writes one."""

    #: prefixes processed, in order (the tests' record); prefixes whose processing raises (a plugin bug)
    processed: ClassVar[list[str]] = []
    broken: ClassVar[set[str]] = set()

    def validate_loaded_weights(self, layer: torch.nn.Module) -> None:
        scale = layer.weight_scale.data
        bad = ~torch.isfinite(scale) | (scale <= 0)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise WeightLoadError(
                f"toy layer {layer.prefix!r}: tensor '{layer.prefix}.weight_scale': expected every scale finite and "
                f"> 0, found {int(bad.sum())} of {scale.numel()} that are not, the first at [{first}] = {scale[first].item()}"
            )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if layer.prefix in self.broken:
            raise RuntimeError("kernel repack ran out of luck")
        layer.weight_scale.data.mul_(1.0)  # (a conversion would happen here)
        CheckedMethod.processed.append(layer.prefix)


class CheckedConfig(toy_method.ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "toy-checked"

    def get_quant_method(self, layer, prefix):
        return CheckedMethod() if isinstance(layer, LinearBase) else None


class CheckedPlugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(CheckedConfig, CheckedMethod, weight_loader_v2=True)


@pytest.fixture(autouse=True)
def checked_plugin():
    plugins.register_plugin(CheckedPlugin(), name="toy-checked")
    CheckedMethod.processed.clear()
    CheckedMethod.broken.clear()
    yield
    plugins.unregister_plugin("toy-checked")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        qc = CheckedConfig.from_config({})
        self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
        for i, block in enumerate(self.blocks):
            block.proj = ReplicatedLinear(16, 8, bias=False, params_dtype=torch.float32, quant_config=qc,
                                          prefix=f"blocks.{i}.proj")
        self.out = ReplicatedLinear(8, 4, bias=False, params_dtype=torch.float32, quant_config=qc, prefix="out")

    def layers(self) -> dict[str, ReplicatedLinear]:
        return {"blocks.0.proj": self.blocks[0].proj, "blocks.1.proj": self.blocks[1].proj, "out": self.out}


def toy_checkpoint(path, nan_scale_in=(), drop=()) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cfg = CheckedConfig.from_config({})
    tensors = {}
    for prefix, shape in zip(LAYERS, [(8, 16), (8, 16), (4, 8)]):
        for suffix, t in cfg.quantize_weight(torch.randn(*shape, generator=g)).items():
            tensors[f"{prefix}.{suffix}"] = t
        if prefix in nan_scale_in:
            tensors[f"{prefix}.weight_scale"][1] = float("nan")
    for name in drop:
        del tensors[name]
    path.mkdir(exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    return tensors


def processed_flags(net: Net) -> dict[str, bool]:
    return {n: getattr(m, "_fvq_weights_processed", False) for n, m in net.layers().items()}


# --- processing: validate every layer first ---------------------------------------------------------------------

def test_validation_failure_processes_no_layer_and_names_it(tmp_path):
    toy_checkpoint(tmp_path, nan_scale_in=("blocks.1.proj",))
    net = Net()
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(net, tmp_path)
    msg = str(info.value)
    assert "no layer was processed" in msg and "1 of 3 layer(s)" in msg
    assert "layer 'blocks.1.proj'" in msg and "'blocks.1.proj.weight_scale'" in msg and "nan" in msg
    assert "blocks.0.proj" not in msg and "'out'" not in msg
    assert CheckedMethod.processed == []
    assert not any(processed_flags(net).values())


def test_every_validation_failure_is_reported_together(tmp_path):
    toy_checkpoint(tmp_path, nan_scale_in=("blocks.0.proj", "out"))
    net = Net()
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(net, tmp_path)
    msg = str(info.value)
    assert "2 of 3 layer(s)" in msg and "layer 'blocks.0.proj'" in msg and "layer 'out'" in msg
    assert CheckedMethod.processed == [] and not any(processed_flags(net).values())


def test_after_a_validation_failure_the_model_can_be_fixed_and_processed(tmp_path):
    """Validation modifies nothing, so a layer fixed in place processes normally afterwards."""
    toy_checkpoint(tmp_path, nan_scale_in=("out",))
    net = Net()
    with pytest.raises(WeightLoadError):
        load_checkpoint(net, tmp_path)
    net.out.weight_scale.data[1] = 0.5
    process_weights_after_loading(net)
    assert CheckedMethod.processed == list(LAYERS) and all(processed_flags(net).values())


def test_default_validation_checks_nothing():
    assert QuantizeMethodBase.validate_loaded_weights(toy_method.ToyLinearMethod(), torch.nn.Module()) is None


def test_processing_failure_past_validation_names_the_layer_and_the_processed_ones(tmp_path):
    toy_checkpoint(tmp_path)
    CheckedMethod.broken.add("blocks.1.proj")
    net = Net()
    with pytest.raises(WeightProcessingError) as info:
        load_checkpoint(net, tmp_path)
    err = info.value
    msg = str(err)
    assert isinstance(err, WeightLoadError) and isinstance(err.__cause__, RuntimeError)
    assert "failed on layer 'blocks.1.proj' (CheckedMethod of method 'toy-checked' of plugin 'toy-checked'" in msg, msg
    assert f"RuntimeError: kernel repack ran out of luck (at {__file__}:" in msg, msg  # (where the plugin raised it)
    assert "1 layer(s) were already processed ('blocks.0.proj')" in msg and "1 other(s) are not" in msg
    assert "build a fresh model" in msg
    assert err.layer == "blocks.1.proj" and err.processed == ["blocks.0.proj"]
    assert processed_flags(net) == {"blocks.0.proj": True, "blocks.1.proj": False, "out": False}
    # The partly converted model is refused from then on, not silently completed or reloaded.
    CheckedMethod.broken.clear()
    with pytest.raises(ModelStateError, match=r"failed earlier on layer\(s\) 'blocks.1.proj'.*build a fresh model"):
        process_weights_after_loading(net)
    with pytest.raises(ModelStateError, match=r"failed earlier on layer\(s\) 'blocks.1.proj'"):
        load_checkpoint(net, tmp_path)
    assert CheckedMethod.processed == ["blocks.0.proj"]


# --- one source per parameter -----------------------------------------------------------------------------------

def test_fused_tensor_and_its_parts_are_refused_before_anything_is_written(tmp_path):
    t = hf_tensors()
    t["qkv_proj.weight"] = torch.zeros(32, 16)
    save_file(t, str(tmp_path / "model.safetensors"))
    block = Block()
    for p in block.parameters():
        p.data.fill_(7.0)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(block, tmp_path)
    msg = str(info.value)
    assert "nothing was loaded" in msg and "1 problem(s)" in msg
    assert "parameter 'qkv_proj.weight' has more than one source" in msg
    for source in ("'qkv_proj.weight' in model.safetensors", "'q_proj.weight' in model.safetensors (shard 'q')",
                   "'k_proj.weight' in model.safetensors (shard 'k')", "'v_proj.weight' in model.safetensors (shard 'v')"):
        assert source in msg
    assert all(bool((p == 7.0).all()) for p in block.parameters())


def test_stale_file_beside_the_checkpoint_is_refused_naming_both_files(tmp_path):
    t = hf_tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    save_file({"head.weight": torch.zeros(8, 16)}, str(tmp_path / "model-old.safetensors"))
    block = Block()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(block, tmp_path)
    msg = str(info.value)
    assert "nothing was loaded" in msg and "model.safetensors.index.json" in msg
    assert "in each of model-old.safetensors, model.safetensors: 'head.weight'" in msg
    with pytest.raises(CheckpointError, match="model-old.safetensors, model.safetensors"):
        checkpoint_files(tmp_path)  # (fvq quantize and read_tensor read through it too)
    # An index says which files hold the checkpoint: the stale file is then not read at all.
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(t, "model.safetensors")}))
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors"]
    load_checkpoint(block, tmp_path)
    assert torch.equal(block.head.weight, t["head.weight"])


def test_indexed_files_repeating_a_tensor_are_refused(tmp_path):
    t = hf_tensors()
    save_file(t, str(tmp_path / "a.safetensors"))
    save_file({"head.weight": torch.zeros(8, 16)}, str(tmp_path / "b.safetensors"))
    weight_map = dict.fromkeys(t, "a.safetensors") | {"extra": "b.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"a.safetensors, b.safetensors: 'head.weight' \(the index names a.safetensors\)"):
        load_checkpoint(Block(), tmp_path)


@pytest.mark.parametrize("case", ["moved", "lost", "one-file"])
def test_an_index_that_names_a_tensor_where_it_is_not_is_refused(tmp_path, case):
    """A stale index or shard: the tensor the index places in one file is in another (it loaded silently) or in none
    (read as a 'missing tensor' with no word of the index); also with a single indexed file."""
    t = hf_tensors()
    names = sorted(t)
    if case == "one-file":
        save_file(t, str(tmp_path / "a.safetensors"))
        weight_map = dict.fromkeys(names, "a.safetensors") | {"ghost.weight": "a.safetensors"}
    else:
        save_file({n: t[n] for n in names[:2]}, str(tmp_path / "a.safetensors"))
        save_file({n: t[n] for n in names[2:]}, str(tmp_path / "b.safetensors"))
        weight_map = dict.fromkeys(names[:2], "a.safetensors") | dict.fromkeys(names[2:], "b.safetensors")
        if case == "moved":
            weight_map[names[2]] = "a.safetensors"
        else:
            weight_map["ghost.weight"] = "b.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    want = (rf"1 tensor\(s\) not in the file the index names but in another: '{names[2]}' \(index: a.safetensors; "
            r"found in b.safetensors\)") if case == "moved" else \
        r"1 tensor\(s\) the index names that no file holds: 'ghost.weight' \(index: [ab].safetensors\)"
    block = Block()
    for p in block.parameters():
        p.data.fill_(7.0)
    with pytest.raises(CheckpointError, match=want) as info:
        load_checkpoint(block, tmp_path)
    assert "its index model.safetensors.index.json does not match its files" in str(info.value)
    assert "nothing was loaded" in str(info.value)
    assert all(bool((p == 7.0).all()) for p in block.parameters())
    with pytest.raises(CheckpointError, match=want):
        checkpoint_files(tmp_path)  # (fvq quantize and read_tensor read through it too)


@pytest.mark.parametrize("prefix", ["./", "sub/"])
def test_an_index_naming_its_files_with_a_path_loads(tmp_path, prefix):
    """weight_map values like './x.safetensors' or 'sub/x.safetensors' name the file the loader opens: the index check
    compares paths, not base names."""
    t = hf_tensors()
    (tmp_path / "sub").mkdir()
    save_file(t, str(tmp_path / prefix / "a.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(t, prefix + "a.safetensors")}))
    block = Block()
    load_checkpoint(block, tmp_path)
    assert torch.equal(block.head.weight, t["head.weight"])


# --- a processed model is loaded once ---------------------------------------------------------------------------

def test_second_load_into_a_processed_model_is_refused_up_front(tmp_path):
    toy_checkpoint(tmp_path)
    net = Net()
    load_checkpoint(net, tmp_path)
    with pytest.raises(ModelStateError) as info:
        load_checkpoint(net, tmp_path / "not-even-read")
    msg = str(info.value)
    assert "already loaded and processed: 3 layer(s) ('blocks.0.proj', 'blocks.1.proj', 'out')" in msg
    assert "_fvq_weights_processed" in msg and "Build a fresh model" in msg
    process_weights_after_loading(net)  # processing again is a no-op
    assert CheckedMethod.processed == list(LAYERS)


def test_one_model_from_several_checkpoints(tmp_path):
    """Every load but the last with process_weights=False; missing is judged over all the loads."""
    tensors = toy_checkpoint(tmp_path / "all")
    first = {n: t for n, t in tensors.items() if n.startswith("blocks.")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file(first, str(tmp_path / "a" / "m.safetensors"))
    save_file({n: t for n, t in tensors.items() if n not in first}, str(tmp_path / "b" / "m.safetensors"))
    net = Net()
    with pytest.warns(CheckpointWarning, match=r"'out.weight', 'out.weight_scale'.*process_weights=False"):
        report = load_checkpoint(net, tmp_path / "a", strict=False, process_weights=False)
    assert report.missing == ["out.weight", "out.weight_scale"] and report.unprocessed == []
    assert CheckedMethod.processed == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(net, tmp_path / "b", strict=False)
    assert report.missing == [] and report.unprocessed == []
    assert CheckedMethod.processed == list(LAYERS)
    assert torch.equal(net.blocks[0].proj.weight, tensors["blocks.0.proj.weight"])


# --- strict=False -----------------------------------------------------------------------------------------------

def test_non_strict_load_reports_warns_and_leaves_incomplete_layers_unprocessed(tmp_path):
    t = hf_tensors()
    del t["head.weight"], t["v_proj.weight"]
    t["extra.weight"] = torch.randn(2)
    save_file(t, str(tmp_path / "model.safetensors"))
    block = Block()
    with pytest.warns(CheckpointWarning) as record:
        report = load_checkpoint(block, tmp_path, strict=False)
    assert report.missing == ["qkv_proj.weight", "head.weight"]
    assert report.missing_parts == {"qkv_proj.weight": ["v_proj"]}
    assert report.unexpected == ["extra.weight"]
    assert report.unprocessed == ["qkv_proj", "head"]
    (w,) = record
    msg = str(w.message)
    assert "2 parameter(s) of the model were not loaded" in msg
    assert "'qkv_proj.weight' (parts ['v_proj'])" in msg and "'head.weight'" in msg
    assert "1 tensor(s) of the checkpoint were ignored" in msg and "'extra.weight'" in msg
    assert "2 layer(s) with missing parameters were not processed: 'qkv_proj', 'head'" in msg
    assert w.filename == __file__  # points at the caller
    flags = {n: getattr(getattr(block, n), "_fvq_weights_processed", False) for n in ("qkv_proj", "gate_up_proj",
                                                                                     "down_proj", "head")}
    assert flags == {"qkv_proj": False, "gate_up_proj": True, "down_proj": True, "head": False}
    # Set what is missing, then process what is left.
    block.head.weight.data.zero_()
    block.qkv_proj.weight.data[24:].zero_()
    process_weights_after_loading(block)
    assert block.head._fvq_weights_processed and block.qkv_proj._fvq_weights_processed


def test_non_strict_quantized_layer_with_missing_tensor_is_neither_validated_nor_processed(tmp_path):
    toy_checkpoint(tmp_path, drop=("out.weight_scale",))
    net = Net()
    net.out.weight_scale.data.fill_(float("nan"))  # what an unloaded scale may hold
    with pytest.warns(CheckpointWarning, match=r"'out.weight_scale'.*not processed: 'out'"):
        report = load_checkpoint(net, tmp_path, strict=False)
    assert report.missing == ["out.weight_scale"] and report.unprocessed == ["out"]
    assert CheckedMethod.processed == ["blocks.0.proj", "blocks.1.proj"]
    # strict (the default) refuses the same checkpoint outright.
    with pytest.raises(CheckpointError, match=r"missing tensor for parameter 'out.weight_scale'"):
        load_checkpoint(Net(), tmp_path)


def test_complete_non_strict_load_does_not_warn(tmp_path):
    save_file(hf_tensors(), str(tmp_path / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(Block(), tmp_path, strict=False)
    assert report.missing == [] and report.unexpected == [] and report.unprocessed == []


# --- a failure while writing (past every check) -----------------------------------------------------------------

def add_finite_only_zweight(layer: torch.nn.Module) -> None:
    """A ``[64, 128]`` parameter ``zweight`` whose loader rejects non-finite values, which the rehearsal (shapes only,
    for a tensor this large) cannot see: the load fails while writing, past every check."""

    def finite_only(param, loaded):
        from fastvideo_quant.lazy import materialize

        value = materialize(loaded)
        if value.device.type != "meta" and not bool(torch.isfinite(value).all()):
            raise WeightLoadError("zweight: expected finite values, found NaN")
        param.data.copy_(value)

    z = torch.nn.Parameter(torch.zeros(64, 128), requires_grad=False)
    z.weight_loader = finite_only
    layer.register_parameter("zweight", z)


def test_write_failure_past_the_checks_names_what_was_written(tmp_path):
    """A loader that rejects the values of a large tensor (the rehearsal reads only its shape)."""
    head = ReplicatedLinear(128, 64, bias=False)

    add_finite_only_zweight(head)  # sorts after "weight": written second
    save_file({"weight": torch.ones(64, 128), "zweight": torch.full((64, 128), float("nan"))},
              str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(head, tmp_path)
    msg = str(info.value)
    assert "writing tensor 'zweight' (m.safetensors) into 'zweight' failed after every check had passed" in msg
    assert "expected finite values, found NaN" in msg and "partly loaded" in msg and "'weight'" in msg
    assert "no layer was processed" in msg
    assert not getattr(head, "_fvq_weights_processed", False)


# --- a layer left unloaded refuses forward -------------------------------------------------------------------------

class Attn(torch.nn.Module):
    """blocks.0.attn.{qkv_proj, o_proj}; ``quant_config`` None or a method (the built-in unquantized one)."""

    def __init__(self, quant_config=None):
        super().__init__()
        kw = {"params_dtype": torch.float32, "quant_config": quant_config}
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].attn = attn = torch.nn.Module()
        attn.qkv_proj = QKVParallelLinear(16, 4, 4, 2, bias=False, prefix="blocks.0.attn.qkv_proj", **kw)
        attn.o_proj = RowParallelLinear(16, 16, bias=True, prefix="blocks.0.attn.o_proj", **kw)


def attn_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"q_proj.weight": (16, 16), "k_proj.weight": (8, 16), "v_proj.weight": (8, 16),
              "o_proj.weight": (16, 16), "o_proj.bias": (16,)}
    return {f"blocks.0.attn.{n}": torch.randn(*s, generator=g) for n, s in shapes.items()}


@pytest.mark.parametrize("quant_config", [None, UnquantizedConfig()], ids=["none", "unquantized"])
def test_unquantized_layer_with_missing_tensor_refuses_forward_until_set_and_processed(tmp_path, quant_config):
    t = attn_tensors()
    save_file({n: v for n, v in t.items() if n != "blocks.0.attn.o_proj.weight"}, str(tmp_path / "m.safetensors"))
    model = Attn(quant_config)
    o_proj = model.blocks[0].attn.o_proj
    x = torch.randn(3, 16)
    o_proj(x)  # never loaded (random init, training): runs as before
    with pytest.warns(CheckpointWarning, match="forward raises NotProcessedError"):
        report = load_checkpoint(model, tmp_path, strict=False)
    assert report.unprocessed == ["blocks.0.attn.o_proj"]
    with pytest.raises(NotProcessedError) as info:
        o_proj(x)
    msg = str(info.value)
    assert "layer 'blocks.0.attn.o_proj' (RowParallelLinear): forward refused" in msg
    assert "no checkpoint tensor for 'blocks.0.attn.o_proj.weight'" in msg
    assert "Set the missing tensors" in msg and "then call process_weights_after_loading(model)" in msg
    model.blocks[0].attn.qkv_proj(x)  # the complete layer runs
    o_proj.weight.data.copy_(t["blocks.0.attn.o_proj.weight"])
    process_weights_after_loading(model)
    out, _ = o_proj(x)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, t["blocks.0.attn.o_proj.weight"],
                                                               t["blocks.0.attn.o_proj.bias"]))
    assert not o_proj._forward_pre_hooks and not hasattr(o_proj, "_fvq_unloaded") and not hasattr(o_proj, "_fvq_refused")


def test_missing_fused_part_is_named_and_a_later_load_lifts_the_guard(tmp_path):
    t = attn_tensors()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file({n: v for n, v in t.items() if "v_proj" not in n}, str(tmp_path / "a" / "m.safetensors"))
    save_file({n: v for n, v in t.items() if "v_proj" in n}, str(tmp_path / "b" / "m.safetensors"))
    model = Attn()
    with pytest.warns(CheckpointWarning):
        load_checkpoint(model, tmp_path / "a", strict=False, process_weights=False)
    with pytest.raises(NotProcessedError, match=r"'blocks.0.attn.qkv_proj.weight' \(parts \['v_proj'\]\)"):
        model.blocks[0].attn.qkv_proj(torch.randn(1, 16))
    load_checkpoint(model, tmp_path / "b")
    model.blocks[0].attn.qkv_proj(torch.randn(1, 16))


def test_quantized_layer_with_missing_tensor_names_it_in_forward(tmp_path):
    toy_checkpoint(tmp_path, drop=("out.weight_scale",))
    net = Net()
    with pytest.warns(CheckpointWarning):
        load_checkpoint(net, tmp_path, strict=False)
    with pytest.raises(NotProcessedError, match=r"layer 'out' .*no checkpoint tensor for 'out.weight_scale'"):
        net.out(torch.randn(2, 8))
    net.blocks[0].proj(torch.randn(2, 16))


# --- one model from checkpoints that split its tensors (the recipe ModelStateError gives) -------------------------

def test_documented_recipe_for_one_model_from_two_checkpoints(tmp_path):
    tensors = toy_checkpoint(tmp_path / "all")
    net = Net()
    load_checkpoint(net, tmp_path / "all")
    with pytest.raises(ModelStateError) as info:
        load_checkpoint(net, tmp_path / "all")
    assert "pass strict=False, process_weights=False to every load_checkpoint but the last" in str(info.value)
    CheckedMethod.processed.clear()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = {n: t for n, t in tensors.items() if n.startswith("blocks.")}
    save_file(first, str(tmp_path / "a" / "m.safetensors"))
    save_file({n: t for n, t in tensors.items() if n not in first}, str(tmp_path / "b" / "m.safetensors"))
    net = Net()
    with pytest.warns(CheckpointWarning):
        load_checkpoint(net, tmp_path / "a", strict=False, process_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(net, tmp_path / "b")  # strict: what "a" wrote counts
    assert report.missing == [] and CheckedMethod.processed == list(LAYERS)
    assert torch.equal(net.blocks[1].proj.weight, tensors["blocks.1.proj.weight"])


def test_last_strict_load_still_refuses_what_no_load_provided(tmp_path):
    tensors = toy_checkpoint(tmp_path / "all")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file({n: t for n, t in tensors.items() if n.startswith("blocks.0.")}, str(tmp_path / "a" / "m.safetensors"))
    save_file({n: t for n, t in tensors.items() if n.startswith("out.")}, str(tmp_path / "b" / "m.safetensors"))
    net = Net()
    with pytest.warns(CheckpointWarning):
        load_checkpoint(net, tmp_path / "a", strict=False, process_weights=False)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(net, tmp_path / "b")
    msg = str(info.value)
    assert "missing tensor for parameter 'blocks.1.proj.weight'" in msg and "'blocks.1.proj.weight_scale'" in msg
    assert "blocks.0." not in msg and "'out." not in msg


# --- a load that failed after writing leaves no layer runnable -------------------------------------------------------

def test_a_failed_validation_refuses_the_forward_of_every_unprocessed_layer_until_a_load_passes(tmp_path):
    """An unquantized layer has no processing step that would refuse it: without the guard, a NaN weight that
    failed the check would run and return NaN."""
    tensors = attn_tensors()
    good = dict(tensors)
    tensors["blocks.0.attn.o_proj.weight"] = tensors["blocks.0.attn.o_proj.weight"].clone()
    tensors["blocks.0.attn.o_proj.weight"][0, 0] = float("nan")
    (tmp_path / "bad").mkdir()
    save_file(tensors, str(tmp_path / "bad" / "model.safetensors"))
    model = Attn()
    with pytest.raises(WeightLoadError, match="their forward raises NotProcessedError"):
        load_checkpoint(model, tmp_path / "bad")
    x = torch.randn(2, 16)
    for layer, name in ((model.blocks[0].attn.o_proj, "blocks.0.attn.o_proj"),
                        (model.blocks[0].attn.qkv_proj, "blocks.0.attn.qkv_proj")):
        with pytest.raises(NotProcessedError) as info:
            layer(x)
        msg = str(info.value)
        assert f"layer {name!r}" in msg and "forward refused: validate_loaded_weights failed on 1 layer(s)" in msg
        assert "'blocks.0.attn.o_proj'" in msg and "load_checkpoint writes and processes the layers again" in msg
    (tmp_path / "good").mkdir()
    save_file(good, str(tmp_path / "good" / "model.safetensors"))
    load_checkpoint(model, tmp_path / "good")
    out, _ = model.blocks[0].attn.o_proj(x)
    assert bool(torch.isfinite(out).all())


def test_a_failed_write_refuses_the_forward_of_the_layers_it_wrote_into(tmp_path):
    """A loader rejecting the values of a large tensor (the rehearsal reads only its shape): 'other' sorts after
    'head' and was not written yet, but the load wrote into it as planned, so it is refused too."""
    head = ReplicatedLinear(128, 64, bias=False, params_dtype=torch.float32, prefix="head")
    other = ReplicatedLinear(128, 64, bias=False, params_dtype=torch.float32, prefix="other")
    model = torch.nn.Module()
    model.head, model.other = head, other

    add_finite_only_zweight(head)
    save_file({"head.weight": torch.ones(64, 128), "head.zweight": torch.full((64, 128), float("nan")),
               "other.weight": torch.ones(64, 128)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="partly loaded"):
        load_checkpoint(model, tmp_path)
    for layer, name in ((head, "head"), (other, "other")):
        with pytest.raises(NotProcessedError) as info:
            layer(torch.randn(1, 128))
        msg = str(info.value)
        assert f"layer {name!r}" in msg and f"load_checkpoint of {str(tmp_path)!r} failed after writing" in msg
        assert "expected finite values, found NaN" in msg and "load again" in msg


def test_a_failed_processing_refuses_the_forward_of_every_layer(tmp_path):
    toy_checkpoint(tmp_path)
    CheckedMethod.broken.add("blocks.1.proj")
    net = Net()
    with pytest.raises(WeightProcessingError):
        load_checkpoint(net, tmp_path)
    for name, layer in net.layers().items():  # the processed one too: the model is partly converted
        expected = ModelStateError if name == "blocks.0.proj" else NotProcessedError
        with pytest.raises(expected, match=rf"layer {name!r}.*forward refused: process_weights_after_loading failed on "
                                           r"layer 'blocks.1.proj' \(RuntimeError: kernel repack ran out of luck\)"):
            layer(torch.randn(1, layer.input_size))


@pytest.mark.parametrize("value", [None, 1, ""])
def test_an_index_entry_that_is_not_a_file_name_is_named(tmp_path, value):
    """Was a TypeError from joining the directory with None (fvq quantize printed the traceback)."""
    save_file(hf_tensors(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": value}}))
    with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json's 'weight_map' maps 1 tensor\(s\) to "
                                              rf"something other than a file name \('a': {value!r}\)"):
        checkpoint_files(tmp_path)
