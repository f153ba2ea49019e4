"""A fused layer's parts written by hand (a ported vLLM ``load_weights`` loop calling ``weight_loader(param, tensor,
shard_id)``) are recorded, and processing refuses a parameter whose loop skipped a part: those rows hold whatever
the fresh parameter held (often zeros), which an unquantized layer would otherwise run on without a sign, and which
the quantized methods reported as a corrupt checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import NotProcessedError, WeightLoadError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from fastvideo_quant.loader import load_checkpoint, process_weights_after_loading
from fastvideo_quant.quantization.base import weights_processed
from fastvideo_quant.quantization.selection import resolve_quant_config

H = 64


def _model(method: str | None, layer: str = "qkv") -> torch.nn.Module:
    cfg = resolve_quant_config(method)
    model = torch.nn.Module()
    if layer == "qkv":
        model.qkv_proj = QKVParallelLinear(H, 16, 4, 2, bias=True, params_dtype=torch.bfloat16, quant_config=cfg,
                                           prefix="qkv_proj")
    else:
        model.gate_up_proj = MergedColumnParallelLinear(H, [96, 96], bias=False, params_dtype=torch.bfloat16,
                                                        quant_config=cfg, prefix="gate_up_proj")
    return model


def _parts(model: torch.nn.Module) -> dict[object, torch.Tensor]:
    layer = next(m for m in model.modules() if hasattr(m, "_fused_shards"))
    g = torch.Generator().manual_seed(0)
    return {sid: torch.randn(size, H, generator=g).bfloat16() for sid, _, size in layer._fused_shards()}


def _load_by_hand(model: torch.nn.Module, skip: object = None) -> torch.nn.Module:
    layer = next(m for m in model.modules() if hasattr(m, "_fused_shards"))
    for sid, tensor in _parts(model).items():
        if sid != skip:
            layer.weight.weight_loader(layer.weight, tensor, sid)
    if layer.bias is not None:
        layer.bias.weight_loader(layer.bias, torch.zeros(layer.bias.shape[0], dtype=torch.bfloat16))
    return model


@pytest.mark.parametrize("method", [None, "fp8"])
@pytest.mark.parametrize(("layer", "skip", "parts"), [("qkv", "v", "['q', 'k', 'v']"), ("merged", 1, "[0, 1]")])
def test_a_part_the_loop_skipped_is_refused_by_name(method, layer, skip, parts) -> None:
    model = _load_by_hand(_model(method, layer), skip=skip)
    with pytest.raises(WeightLoadError) as err:
        process_weights_after_loading(model)
    text = str(err.value)
    name = "qkv_proj" if layer == "qkv" else "gate_up_proj"
    written = "['q', 'k']" if layer == "qkv" else "[0]"
    assert f"{name!r} fuses parts {parts}; its weight_loader wrote parameter 'weight' for part(s) {written} but never " \
           f"for [{skip!r}]" in text
    assert "corrupt" not in text  # (fp8's scales were never loaded either: the part is the cause, named first)
    target = getattr(model, name)
    assert not weights_processed(target)
    with pytest.raises(NotProcessedError):
        target(torch.randn(2, H, dtype=torch.bfloat16))


@pytest.mark.parametrize("method", [None, "fp8"])
def test_every_part_written_by_hand_processes(method) -> None:
    model = _load_by_hand(_model(method))
    process_weights_after_loading(model)
    out, _ = model.qkv_proj(torch.randn(2, H, dtype=torch.bfloat16))
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_a_tensor_fused_on_disk_counts_as_every_part() -> None:
    model = _model(None, "merged")
    fused = torch.cat(list(_parts(model).values()))
    model.gate_up_proj.weight.weight_loader(model.gate_up_proj.weight, fused)
    process_weights_after_loading(model)
    assert torch.equal(model.gate_up_proj.weight.data, fused)


def test_load_checkpoint_strict_false_then_a_part_copied_in_by_hand_processes(tmp_path) -> None:
    """The route the strict=False warning names (copy the missing tensors in, then process) is load_checkpoint's own
    accounting, not judged by the hand-loop check."""
    model = _model(None, "merged")
    parts = _parts(model)
    save_file({"gate_proj.weight": parts[0]}, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning):
        load_checkpoint(model, tmp_path, strict=False)
    model.gate_up_proj.weight.data[96:].copy_(parts[1])
    process_weights_after_loading(model)
    assert weights_processed(model.gate_up_proj)


def test_a_rehearsal_records_nothing(tmp_path) -> None:
    """load_checkpoint rehearses every load into meta twins first; a load refused there leaves no record (so no part
    counts as written)."""
    model = _model(None, "merged")
    save_file({"gate_proj.weight": torch.zeros(96, H + 1).bfloat16(), "up_proj.weight": torch.zeros(96, H).bfloat16()},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(Exception, match="gate_proj.weight"):
        load_checkpoint(model, tmp_path)
    assert "_fvq_loaded_shards" not in vars(model.gate_up_proj)


def test_hand_written_parts_are_not_load_checkpoints_record(tmp_path) -> None:
    """The layer's own record is not load_checkpoint's: parts a loop wrote by hand do not count as written by an
    earlier load, so a checkpoint without them is still missing them (the review's repro: every part by hand, then
    a checkpoint holding another layer only)."""
    model = _load_by_hand(_model(None, "merged"))
    save_file({"other.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    model.other = torch.nn.Linear(4, 4, bias=False)
    with pytest.raises(Exception, match=r"missing tensor for parameter 'gate_up_proj.weight'"):
        load_checkpoint(model, tmp_path)


def test_load_state_dict_of_the_whole_parameter_clears_the_record() -> None:
    """A part left unwritten by weight_loader, then the whole parameter from a state_dict: processes (it stayed
    refused whatever was written, as no way but weight_loader cleared the record)."""
    model = _load_by_hand(_model(None, "merged"), skip=1)
    full = {"gate_up_proj.weight": torch.cat(list(_parts(model).values()))}
    model.load_state_dict(full)
    process_weights_after_loading(model)
    assert torch.equal(model.gate_up_proj.weight.data, full["gate_up_proj.weight"])


def test_the_forward_guard_names_the_check_that_failed() -> None:
    """It said 'validate_loaded_weights failed', which an unquantized layer does not have."""
    model = _load_by_hand(_model(None, "merged"), skip=1)
    with pytest.raises(WeightLoadError):
        process_weights_after_loading(model)
    with pytest.raises(NotProcessedError, match=r"the check of loaded weights failed on 1 layer\(s\).*set the tensors "
                                                r"\(a fused part through its weight_loader\)"):
        model.gate_up_proj(torch.randn(2, H, dtype=torch.bfloat16))
