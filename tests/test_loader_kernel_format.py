"""A loaded model's state_dict saved as safetensors (``_extra_state`` dropped) is not a checkpoint: ``load_checkpoint``
says that it holds the method's kernel format, names its tensors and says what to do, instead of reading the kernel
tensors as checkpoint settings ("set weight_block_size" for a row of fp8 channel scales). Checkpoints that only
resemble it (another method's tensors, a compressed-tensors int8 checkpoint) keep their own hints."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import METHODS, Net, config, inputs, loaded, write_checkpoint
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, NotProcessedError
from fastvideo_quant.loader import load_checkpoint

QUANTIZED = [m for m in METHODS if m != "unquantized"]
#: Each method's name, as the hint gives it to fvq quantize --method
NAME = {m: ("int8" if m.startswith("int8") else m.split("-")[0]) for m in QUANTIZED}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: write_checkpoint(m, root / m) for m in METHODS}


def _saved_state(model: torch.nn.Module, path) -> None:
    """What a user writes: the loaded model's state_dict, its tensors only (safetensors takes nothing else)."""
    path.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    save_file(state, str(path / "model.safetensors"))


@pytest.mark.parametrize("method", QUANTIZED)
def test_a_saved_state_dict_of_a_loaded_model_is_named_as_such(method, checkpoints, tmp_path):
    _saved_state(loaded(method, checkpoints[method]), tmp_path / "state")
    model = Net(config(method))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, tmp_path / "state")
    message = str(caught.value)
    first = message.splitlines()[1].strip()
    assert first.startswith(f"the checkpoint holds the kernel format of {NAME[method]!r} layers"), message
    assert "state_dict of a loaded model saved as safetensors" in first
    assert f"fvq quantize SRC --method {NAME[method]} --out DST" in first
    assert "weight_block_size" not in message and "the tensors imply" not in message, message  # (the misreadings)
    with pytest.raises(NotProcessedError):  # (nothing was loaded)
        model(inputs())


def test_the_kernel_tensors_named_are_the_ones_processing_adds(checkpoints, tmp_path):
    _saved_state(loaded("awq", checkpoints["awq"]), tmp_path / "state")
    with pytest.raises(CheckpointError, match=r"\('qkv_proj\.qweight_k', 'qkv_proj\.zeros_k', 'qkv_proj\.scales_k' and "
                                              r"6 more\)"):
        load_checkpoint(Net(config("awq")), tmp_path / "state")


def test_fp8_channel_scales_stored_as_processing_transposes_them_are_recognised(checkpoints, tmp_path):
    """fp8 per-channel processing adds no tensor: it keeps ``weight_scale`` as a row, which is the evidence."""
    _saved_state(loaded("fp8-channel", checkpoints["fp8-channel"]), tmp_path / "state")
    with pytest.raises(CheckpointError, match=r"kernel format of 'fp8' layers, .*\('qkv_proj\.weight_scale'"):
        load_checkpoint(Net(config("fp8-channel")), tmp_path / "state")


def test_an_fp8_checkpoint_in_an_int8_model_is_not_called_int8s_kernel_format(checkpoints):
    """Its float32 weight_scale is a name int8's processing adds too; its weight is float8, not int8."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(Net(config("int8")), checkpoints["fp8-channel"])
    assert "kernel format" not in str(caught.value), str(caught.value)


def test_a_compressed_tensors_style_int8_checkpoint_is_not_called_kernel_format(tmp_path):
    """int8 weights with float32 [out, 1] weight_scale and no SCB: another format, not int8's processed state."""
    tensors = {}
    for name, layer in Net(None).named_modules():
        if hasattr(layer, "quant_method"):
            out, inp = layer.weight.shape
            tensors[f"{name}.weight"] = torch.randint(-127, 128, (out, inp), dtype=torch.int8)
            tensors[f"{name}.weight_scale"] = torch.rand(out, 1)
    (tmp_path / "ck").mkdir()
    save_file(tensors, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(Net(config("int8")), tmp_path / "ck")
    assert "kernel format" not in str(caught.value), str(caught.value)


def test_a_checkpoint_missing_a_tensor_gets_no_kernel_format_hint(checkpoints, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoints["fp8-block"] / "model.safetensors"))
    del tensors["o_proj.weight_scale_inv"]
    (tmp_path / "ck").mkdir()
    save_file(tensors, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="o_proj.weight_scale_inv") as caught:
        load_checkpoint(Net(config("fp8-block")), tmp_path / "ck")
    assert "kernel format" not in str(caught.value)
