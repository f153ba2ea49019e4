"""What the loader's messages call things: parameters by their names, values by where they went wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 8, 4, 2, bias=False, prefix="qkv_proj")
        self.patch_embed = ReplicatedLinear(32, 16, prefix="patch_embed")
        self.norm = torch.nn.LayerNorm(16)


def test_rehearsal_messages_name_the_parameter_not_parameter(tmp_path) -> None:
    save_file({"q_proj.weight": torch.randn(32, 32), "k_proj.weight": torch.randn(8, 32),
               "v_proj.weight": torch.randn(16, 32), "patch_embed.weight": torch.randn(16, 32),
               "patch_embed.bias": torch.randn(17), "norm.weight": torch.randn(15), "norm.bias": torch.randn(16)},
              str(tmp_path / "model.safetensors"))
    model = Net()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ".parameter" not in text and ": parameter" not in text
    # (a mis-shaped tensor is stated once, as the whole shape its parameter takes: no parameter-class sentence first)
    assert "→ 'qkv_proj.weight' shard 'k': expected shape (16, 32), found (8, 32)" in text
    assert "→ 'patch_embed.bias': expected shape (16,), found (17,)" in text
    assert "→ 'norm.weight': expected shape (16,), found (15,)" in text
    assert isinstance(model.qkv_proj.weight, torch.nn.Parameter) and model.qkv_proj.weight.device.type == "cpu"


def test_value_overflowing_the_model_dtype_is_blamed_on_the_cast_not_the_checkpoint(tmp_path) -> None:
    bias = torch.zeros(16, dtype=torch.bfloat16)
    bias[3] = -1e6
    save_file({"proj.weight": torch.randn(16, 32).bfloat16(), "proj.bias": bias}, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(32, 16, params_dtype=torch.float16, prefix="proj")
    model.proj.bias.data.fill_(0.5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("tensor 'proj.bias' (model.safetensors) → 'proj.bias': 1 finite value(s) of the checkpoint's torch.bfloat16 "
            "become inf when cast to the parameter's torch.float16 (largest magnitude 9.994e+05; torch.float16's max "
            "is 65504)") in text
    assert "not corrupt" in text and "build the model in torch.bfloat16 or torch.float32" in text
    assert "proj.weight" not in text
    assert bool((model.proj.bias == 0.5).all())


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float32])
def test_a_value_overflowing_a_dtype_the_method_keeps_does_not_advise_another_model_dtype(tmp_path, model_dtype) -> None:
    """AWQ keeps its scales in float16 whatever the model's dtype: a float32 scale of 1e5 cannot load in any model, and
    the message said to build the model in bfloat16 or float32 (a numerics reviewer's finding)."""
    config = resolve_quant_config("awq", hf_config={"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}})
    scales = torch.full((2, 16), 0.01)
    scales[1, 3] = 1e5
    save_file({"proj.qweight": torch.zeros(64, 2, dtype=torch.int32), "proj.qzeros": torch.zeros(2, 2, dtype=torch.int32),
               "proj.scales": scales}, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 16, bias=False, params_dtype=model_dtype, quant_config=config, prefix="proj")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("tensor 'proj.scales' (model.safetensors) → 'proj.scales': 1 finite value(s) of the checkpoint's "
            "torch.float32 become inf when cast to the parameter's torch.float16") in text, text
    assert (f"keeps this parameter in torch.float16 whatever the model's dtype (the layer's is {model_dtype}): its "
            "kernels read torch.float16, so building the model in another dtype does not help") in text, text
    assert "build the model in torch.bfloat16" not in text, text


def test_a_float8_tensor_of_another_format_is_refused_not_cast(tmp_path) -> None:
    """An e5m2 export into an e4m3 model: torch's cast saturates e5m2's range (57344) to 448 and would load quietly."""
    from fastvideo_quant.quantization import resolve_quant_config

    w = torch.randn(16, 32)
    scale = w.abs().amax() / 57344.0
    stored = torch.float8_e5m2
    save_file({"proj.weight": (w / scale).to(stored), "proj.weight_scale": scale.reshape(1),
               "proj.bias": torch.zeros(16, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    config = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}})
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(32, 16, quant_config=config, params_dtype=torch.bfloat16, prefix="proj")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert "'proj.weight'" in text and f"expected a torch.float8_e4m3fn tensor, found {stored}" in text
    assert "float8 formats are not converted" in text
    bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731 (bytes: float8 has no equal, empty memory may hold NaN)
    assert all(torch.equal(bits(v), bits(before[k])) for k, v in model.named_parameters())


@pytest.mark.parametrize("src", [torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz])
def test_copy_checked_converts_no_float8_format_into_another(src) -> None:
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.parameter import copy_checked

    dst = torch.zeros(4, dtype=torch.float8_e4m3fn)
    with pytest.raises(WeightLoadError, match=f"w: expected a torch.float8_e4m3fn tensor, found {src}"):
        copy_checked(dst, torch.ones(4).to(src), "w")
    copy_checked(dst, torch.ones(4).to(torch.float8_e4m3fn), "w")
    assert dst.float().tolist() == [1.0] * 4


def test_a_missing_fused_part_is_named_by_its_checkpoint_tensor(tmp_path) -> None:
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.blocks[0].qkv_proj = QKVParallelLinear(32, 8, 4, 2, bias=False, prefix="blocks.0.qkv_proj")
    save_file({"blocks.0.q_proj.weight": torch.randn(32, 32), "blocks.0.v_proj.weight": torch.randn(16, 32)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    assert ("missing parts ['k_proj'] of fused parameter 'blocks.0.qkv_proj.weight' (checkpoint tensor(s) "
            "'blocks.0.k_proj.weight')") in str(err.value)


def test_a_plain_tensor_attribute_is_named_for_a_fused_layers_part_too(tmp_path) -> None:
    """A method whose create_weights sets ``layer.weight_scale = tensor`` (not registered): the part's tensor
    (q_proj.weight_scale, for the fused qkv_proj) gets the same hint as an unfused layer's."""
    model = Net()
    model.qkv_proj.weight_scale = torch.ones(3)  # a plain attribute, as a buggy create_weights leaves it
    model.patch_embed.weight_scale = torch.ones(1)
    tensors = {"q_proj.weight": torch.randn(32, 32), "k_proj.weight": torch.randn(8, 32),
               "v_proj.weight": torch.randn(16, 32), "patch_embed.weight": torch.randn(16, 32),
               "patch_embed.bias": torch.randn(16), "norm.weight": torch.randn(16), "norm.bias": torch.randn(16),
               "q_proj.weight_scale": torch.ones(1), "patch_embed.weight_scale": torch.ones(1)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("unexpected tensor 'q_proj.weight_scale': no parameter of the model takes it (qkv_proj.weight_scale is a "
            "plain tensor attribute, not a registered parameter") in text, text
    assert "unexpected tensor 'patch_embed.weight_scale': no parameter of the model takes it (patch_embed.weight_scale " \
           "is a plain tensor attribute" in text
    # the fix as the method is registered (unquantized: weight_loader_v2=True, which refuses a plain Parameter)
    assert "layer.register_parameter('weight_scale', a fastvideo_quant.parameter class built with weight_loader=" in text


def test_the_guides_example_has_no_stored_unquantized_hint_for_unquantized_layers(tmp_path) -> None:
    """docs/guide/loading.md's 'all problems at once' example, on a bf16 model: the 'stored unquantized ... add it to
    modules_to_not_convert' line was added for an unquantized layer missing its bias (its float weight is its own)."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj_in = ReplicatedLinear(64, 64, params_dtype=torch.bfloat16, prefix="proj_in")
            self.proj_out = ReplicatedLinear(64, 32, params_dtype=torch.bfloat16, prefix="proj_out")

    save_file({"proj_mid.weight": torch.zeros(4, 4), "proj_in.weight": torch.zeros(64, 32, dtype=torch.bfloat16),
               "proj_in.bias": torch.zeros(64, dtype=torch.bfloat16),
               "proj_out.weight": torch.zeros(32, 64, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(Model(), tmp_path)
    msg = str(info.value)
    assert "(3 problem(s); nothing was loaded)" in msg and "stored unquantized" not in msg, msg


def _fp8_checkpoint_without_config(path) -> None:
    from fastvideo_quant.quantization import resolve_quant_config

    fp8 = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8"}})
    tensors = {}
    for name in ("proj_in", "proj_out"):
        tensors |= {f"{name}.{k}": v for k, v in fp8.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(path / "model.safetensors"))  # (its config.json lost: nothing declares fp8)


def _two_layers(config) -> torch.nn.Module:
    return torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, params_dtype=torch.bfloat16, quant_config=config,
                                                    prefix=n) for n in ("proj_in", "proj_out")})


FP8_FIX = ("build {} with the config it was written with, e.g. for 'fp8' with its "
           "default settings quant_config=resolve_quant_config(hf_config={{'quantization_config': {{'quant_method': "
           "'fp8', 'activation_scheme': 'dynamic', 'ignored_layers': []}}}})")


def test_quantized_weights_without_a_declaration_name_the_method_that_stores_them(tmp_path) -> None:
    """An fp8 checkpoint whose config.json is gone, loaded into an unquantized model (one line a tensor, nothing said
    they are quantized) or into int8 layers built to quantize on load (told to build a bitsandbytes config: int8
    checkpoints, not float8)."""
    from fastvideo_quant.quantization import resolve_quant_config

    _fp8_checkpoint_without_config(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("modules 'proj_in', 'proj_out' are stored quantized (their weight is torch.float8_e4m3fn), "
                            "but the model built them unquantized, and the checkpoint declares no method (no config.json "
                            "quantization_config): 'fp8' checkpoints store such weights: " + FP8_FIX.format("them")), first

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(resolve_quant_config("int8")), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("modules 'proj_in', 'proj_out' are stored quantized (their weight is torch.float8_e4m3fn), "
                            "but not in the 'int8' method's format (its checkpoints store torch.int8 weights)"), first
    assert "('fp8' checkpoints store such weights): " + FP8_FIX.format("the layers") in first, first
    assert "bitsandbytes" not in first, first
    # the suggested config loads it
    config = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                                                     "ignored_layers": []}})
    load_checkpoint(_two_layers(config), tmp_path)


def test_another_methods_tensors_by_name_name_the_method(tmp_path) -> None:
    """An AWQ checkpoint whose config.json is gone, loaded into an unquantized model: its qweight/qzeros/scales were
    one 'unexpected tensor' line each and every weight one 'missing' line, with nothing saying they are AWQ's."""
    from fastvideo_quant.quantization import resolve_quant_config

    awq = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "awq", "group_size": 64}})
    tensors = {}
    for name in ("proj_in", "proj_out"):
        tensors |= {f"{name}.{k}": v for k, v in awq.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("modules 'proj_in', 'proj_out' are stored as qweight, qzeros, scales (the parameters of "
                            "'awq' layers), but the model built them unquantized, and the checkpoint declares no method"), first
    assert "resolve_quant_config(hf_config={'quantization_config': {'quant_method': 'awq', " in first, first
    assert "(its settings, such as a group size, must be the checkpoint's)" in first, first
    # the same into layers of another method (fp8, quantizing on load): named too
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(resolve_quant_config("fp8")), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("modules 'proj_in', 'proj_out' are stored as qweight, qzeros, scales (the parameters of "
                            "'awq' layers), but the model built them as 'fp8' layers, and the checkpoint declares no "
                            "method"), first


def _with_config(path, section: dict) -> None:
    import json

    (path / "config.json").write_text(json.dumps({"quantization_config": section}))


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_a_skip_list_naming_a_quantized_module_is_not_called_a_missing_declaration(tmp_path, method) -> None:
    """A config.json that declares the method but whose skip list names a module stored quantized: the layer is built
    unquantized, and the message said the checkpoint declares no method and to put its config.json back (it is
    there); the AWQ case had no summary line at all, only the tensors one by one."""
    from fastvideo_quant.quantization import resolve_quant_config

    if method == "fp8":
        _fp8_checkpoint_without_config(tmp_path)
        _with_config(tmp_path, {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ["proj_out"]})
        stored = "are stored quantized (their weight is torch.float8_e4m3fn)"
        key = "ignored_layers"
    else:
        awq = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "awq", "group_size": 64}})
        tensors = {}
        for name in ("proj_in", "proj_out"):
            tensors |= {f"{name}.{k}": v for k, v in awq.quantize_weight(torch.randn(64, 64), prefix=name).items()}
        save_file(tensors, str(tmp_path / "model.safetensors"))
        _with_config(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                "version": "gemm", "modules_to_not_convert": ["proj_out"]})
        stored = "are stored as qweight, qzeros, scales (the parameters of 'awq' layers)"
        key = "modules_to_not_convert"
    config = resolve_quant_config(checkpoint=tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(config), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    declares = (f"but the model built them unquantized, though {tmp_path / 'config.json'}'s 'quantization_config' "
                f"declares {method!r}: ")
    assert first == (f"modules 'proj_out' {stored}, {declares}the config's skip list ({key}) names them: the "
                     f"checkpoint stores them as {method!r}, so take them out of {key} (or re-export the checkpoint "
                     "with them unquantized)"), first
    assert "declares no method" not in str(info.value) and "config.json back" not in str(info.value)
    # a layer the model built without quant_config= (the skip list names another): that cause, not the skip list's
    model = _two_layers(config)
    model["proj_in"] = ReplicatedLinear(64, 64, bias=False, params_dtype=torch.bfloat16, prefix="proj_in")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first == (f"modules 'proj_in', 'proj_out' {stored}, {declares}the config's skip list ({key}) names "
                     f"'proj_out': the checkpoint stores them as {method!r}, so take them out of {key} (or re-export "
                     "the checkpoint with them unquantized); the model built 'proj_in' without quant_config=: give "
                     "them the model's quant_config"), first


def test_a_checkpoint_given_as_one_file_is_not_said_to_lack_its_config(tmp_path) -> None:
    """load_checkpoint of a .safetensors file reads no config.json: the hint said the checkpoint declares none and to
    put it back, while it sat beside the file. The config.json beside it is the config it was written with: the fix
    builds from it (was: a default config first, whose settings need not be the checkpoint's)."""
    _fp8_checkpoint_without_config(tmp_path)
    _with_config(tmp_path, {"quant_method": "fp8", "activation_scheme": "dynamic"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path / "model.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert first == ("modules 'proj_in', 'proj_out' are stored quantized (their weight is torch.float8_e4m3fn), but the "
                     "model built them unquantized, and the checkpoint was given as one file, so no config.json was "
                     "read (a load of a file reads none, even one beside it): 'fp8' checkpoints store such weights: "
                     f"build them with the config it was written with, which {tmp_path / 'config.json'}'s "
                     "'quantization_config' beside the file declares: quant_config=resolve_quant_config(checkpoint="
                     f"{str(tmp_path)!r}) (from fastvideo_quant.quantization)"), first
    load_checkpoint(_two_layers(resolve_quant_config(checkpoint=tmp_path)), tmp_path / "model.safetensors")


def _per_channel_file(path, config_json: dict | None) -> None:
    """What ``fvq quantize --option weight_scale_strategy='"channel"'`` writes, with ``config_json``'s section (None:
    no config.json)."""
    channel = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp8",
                                                                      "weight_scale_strategy": "channel"}})
    tensors = {}
    for name in ("proj_in", "proj_out"):
        tensors |= {f"{name}.{k}": v for k, v in channel.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(path / "model.safetensors"))
    if config_json is not None:
        _with_config(path, config_json)


PER_TENSOR = {"quant_method": "fp8", "activation_scheme": "dynamic"}
CHANNEL = {**PER_TENSOR, "weight_scale_strategy": "channel"}


def test_one_per_channel_file_whose_config_json_says_so_is_told_to_build_from_it(tmp_path) -> None:
    """Reviewer's case: a per-channel fp8 file loaded as one file into per-tensor layers, with a config.json beside it
    that already says channel. Was: "set weight_scale_strategy channel in the checkpoint's config.json ... then
    resolve_quant_config(checkpoint=...)" — a config.json that is right, and a call that refuses a file."""
    _per_channel_file(tmp_path, CHANNEL)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(resolve_quant_config(hf_config={"quantization_config": PER_TENSOR})),
                        tmp_path / "model.safetensors")
    message = str(info.value)
    first = message.splitlines()[1].strip()
    assert first == (f"the checkpoint was given as one file, so no config.json was read, and {tmp_path / 'config.json'}'s "
                     "'quantization_config' beside it declares 'fp8' with weight_scale_strategy='channel', but the "
                     "model's 2 layer(s) of that method ('proj_in', 'proj_out') were built with weight_scale_strategy="
                     "None: build the layers with the config beside the file, quant_config=resolve_quant_config("
                     f"checkpoint={str(tmp_path)!r}) (from fastvideo_quant.quantization), then load again"), first
    assert "config.json quantization_config" not in message and '"weight_scale_strategy": "channel"' not in message
    assert "model.safetensors')" not in message  # (no call given the file: resolve_quant_config refuses one)
    load_checkpoint(_two_layers(resolve_quant_config(checkpoint=tmp_path)), tmp_path / "model.safetensors")


@pytest.mark.parametrize("config_json", [None, {"model_type": "toy"}], ids=["no config.json", "no quantization_config"])
def test_one_per_channel_file_without_a_declaration_is_told_what_to_pass(tmp_path, config_json) -> None:
    """No config.json declares the file's method: the setting the tensors imply is one of the config the layers were
    built with, so the fix is that config with it set (was: "in the checkpoint's config.json", which has none)."""
    _per_channel_file(tmp_path, None)
    if config_json is not None:
        (tmp_path / "config.json").write_text(json.dumps(config_json))
    built = resolve_quant_config(hf_config={"quantization_config": PER_TENSOR})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(built), tmp_path / "model.safetensors")
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines[0].endswith('the tensors imply weight scale strategy \'channel\'; set "weight_scale_strategy": '
                             '"channel" (this package\'s key: vLLM\'s fp8 format is per tensor only; per-channel fp8 for '
                             "other tools is stored as compressed-tensors, strategy 'channel')"), lines[0]
    assert lines[1] == ("to set the 'fp8' setting(s) above: the checkpoint was given as one file, so no config.json was "
                        "read (and none beside it declares 'fp8'), so they are the settings of the config the layers "
                        "were built with: build the layers with those set, quant_config=resolve_quant_config(hf_config="
                        f"{{'quantization_config': {built.to_dict()!r}}}) with the setting(s) above changed (from "
                        "fastvideo_quant.quantization), then load again; or put that quantization_config in "
                        f"{str(tmp_path / 'config.json')!r} and build them with resolve_quant_config(checkpoint="
                        f"{str(tmp_path)!r})"), lines[1]
    assert "in the checkpoint's config.json" not in str(info.value)
    fixed = resolve_quant_config(hf_config={"quantization_config": {**built.to_dict(), "weight_scale_strategy": "channel"}})
    load_checkpoint(_two_layers(fixed), tmp_path / "model.safetensors")  # the fix the lines give loads it


def test_a_directory_whose_config_json_contradicts_its_tensors_is_told_to_set_it_there(tmp_path) -> None:
    """The layers were built from the directory's config.json, which says per tensor: that file is where to set it,
    named, and the call takes the directory."""
    _per_channel_file(tmp_path, PER_TENSOR)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(resolve_quant_config(checkpoint=tmp_path)), tmp_path)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert '"weight_scale_strategy": "channel"' in lines[0], lines[0]
    assert lines[1] == (f"to set the 'fp8' setting(s) above: set them in {tmp_path / 'config.json'}'s "
                        "'quantization_config', whose settings the layers were built with, then build the layers from it "
                        f"again, quant_config=resolve_quant_config(checkpoint={str(tmp_path)!r}) (from "
                        "fastvideo_quant.quantization), and load again"), lines[1]


@pytest.mark.parametrize("built", ["online", None], ids=["online layers", "unquantized layers"])
def test_one_per_channel_file_without_a_declaration_is_not_given_a_per_tensor_config(tmp_path, built) -> None:
    """Quantized weights in layers built unquantized or to quantize on load, no config.json: the config suggested is
    fp8's default (per tensor), so the line says what the stored per-channel scales change in it, and names no
    directory to load (was: "or load its directory, whose config.json ..." where there is none)."""
    _per_channel_file(tmp_path, None)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(resolve_quant_config("fp8") if built else None), tmp_path / "model.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert ("with the setting(s) its stored tensors imply changed in it (the checkpoint stores 2 per-channel ([out, 1]) "
            "weight scale(s), e.g. 'proj_in.weight_scale' (64, 1), but the fp8 config declares per-tensor weight scales: "
            'the tensors imply weight scale strategy \'channel\'; set "weight_scale_strategy": "channel"') in first, first
    assert first.endswith(f"or put the quantization_config it was written with in {str(tmp_path / 'config.json')!r} "
                          f"and build them with resolve_quant_config(checkpoint={str(tmp_path)!r})"), first
    assert "load its directory" not in first, first


@pytest.mark.parametrize("section", [
    {"quant_method": "bitsandbytes", "load_in_8bit": True},
    {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
], ids=["int8", "awq"])
def test_int8_and_awq_files_are_told_to_build_from_the_config_json_beside_them(tmp_path, section) -> None:
    """int8 and AWQ checkpoints given as one file into unquantized layers: built from the config.json beside the file
    (was: a default config first — AWQ's group_size 128 is not this checkpoint's 32); without one, no directory to
    load is named (was: "or load its directory, whose config.json ..." where there is none)."""
    config = resolve_quant_config(hf_config={"quantization_config": section})
    tensors = {}
    for name in ("proj_in", "proj_out"):
        tensors |= {f"{name}.{k}": v for k, v in config.quantize_weight(torch.randn(64, 64), prefix=name).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _with_config(tmp_path, section)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path / "model.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert first.endswith(f"build them with the config it was written with, which {tmp_path / 'config.json'}'s "
                          "'quantization_config' beside the file declares: quant_config=resolve_quant_config(checkpoint="
                          f"{str(tmp_path)!r}) (from fastvideo_quant.quantization)"), first
    assert "default settings" not in first, first
    load_checkpoint(_two_layers(resolve_quant_config(checkpoint=tmp_path)), tmp_path / "model.safetensors")
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path / "model.safetensors")
    first = str(info.value).splitlines()[1].strip()
    assert "load its directory" not in first and first.endswith(
        f"or put the quantization_config it was written with in {str(tmp_path / 'config.json')!r} and build them with "
        f"resolve_quant_config(checkpoint={str(tmp_path)!r})"), first


def test_kv_cache_scales_are_named_as_such(tmp_path) -> None:
    """AutoFP8 (kv_cache_scheme static) and llm-compressor write attn.k_scale / v_scale beside the linear layers'
    tensors; a strict load listed them as unexpected without saying what they are."""
    save_file({"proj_in.weight": torch.zeros(64, 64, dtype=torch.bfloat16),
               "proj_out.weight": torch.zeros(64, 64, dtype=torch.bfloat16),
               "attn.k_scale": torch.ones(()), "attn.v_scale": torch.ones(())}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_two_layers(None), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("2 unexpected tensor(s) are attention scales ('attn.k_scale', 'attn.v_scale': a "
                            "kv_cache_scheme in the checkpoint's config), which vLLM loads into its attention's KV "
                            "cache: no linear layer takes them."), first
    report = load_checkpoint(_two_layers(None), tmp_path, strict=False)
    assert sorted(report.unexpected) == ["attn.k_scale", "attn.v_scale"]


def test_swapped_arguments_are_named(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"^load_checkpoint\(model, path\): the arguments are swapped; the model comes"):
        load_checkpoint(str(tmp_path), _two_layers(None))
    with pytest.raises(TypeError, match=r"expected a torch.nn.Module and a checkpoint path \(str or os.PathLike\), "
                                        r"found dict and PosixPath"):
        load_checkpoint({}, tmp_path)
