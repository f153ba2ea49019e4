"""A calibration key or a ``--skip`` pattern naming the model's fused module (``to_qkv``) where the checkpoint stores
its parts (``to_q``, ``to_k``, ``to_v``) and ``fvq quantize`` was not told of the fusion: the fix is ``--fuse
to_qkv=to_q,to_k,to_v`` (as ``load_checkpoint`` suggests a ``packed_modules_mapping`` entry), not the closest single
name ('did you mean to_v?')."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.quantize import QuantizeError, quantize_checkpoint
from fastvideo_quant.quantize.fused_names import fused_from

FUSE = "--fuse to_qkv=to_q,to_k,to_v"


@pytest.mark.parametrize(("leaf", "siblings", "parts"), [
    ("to_qkv", ["to_q", "to_k", "to_v", "to_out"], ["to_q", "to_k", "to_v"]),
    ("qkv_proj", ["o_proj", "v_proj", "k_proj", "q_proj"], ["q_proj", "k_proj", "v_proj"]),
    ("gate_up_proj", ["gate_proj", "up_proj", "down_proj"], ["gate_proj", "up_proj"]),
    ("to_kv", ["to_q", "to_k", "to_v"], ["to_k", "to_v"]),
    ("to_qkv", ["to_q", "to_out"], None),  # (one part is no fusion)
    ("to_qq", ["to_q", "to_k"], None),  # (a typo)
    ("fc_in", ["fc_out", "proj"], None),
])
def test_fused_from(leaf, siblings, parts) -> None:
    assert fused_from(leaf, siblings) == parts


@pytest.fixture
def src(tmp_path):
    torch.manual_seed(0)
    tensors = {f"blocks.{i}.attn.{m}.weight": torch.randn(64, 64, dtype=torch.bfloat16)
               for i in range(2) for m in ["to_q", "to_k", "to_v", "to_out"]}
    path = tmp_path / "src"
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({}))
    return path


@pytest.fixture
def calib(tmp_path):
    """Activations keyed by the model's layers, as forward pre-hooks on a model with a fused to_qkv record them."""
    path = tmp_path / "calib.safetensors"
    save_file({f"blocks.{i}.attn.{m}": torch.randn(16, 64) for i in range(2) for m in ["to_qkv", "to_out"]},
              str(path))
    return path


def test_a_calibration_key_of_the_fused_module_is_told_to_fuse(src, calib, tmp_path) -> None:
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "out", "fp8", options={"activation_scheme": "static"}, calibration=calib)
    msg = str(info.value)
    assert ("Its key(s) 'blocks.0.attn.to_qkv', 'blocks.1.attn.to_qkv' name no module of the checkpoint but look like "
            "a fused module of the modules beside them ('blocks.0.attn.to_q', 'blocks.0.attn.to_k', "
            "'blocks.0.attn.to_v', stored separately)") in msg, msg
    assert FUSE in msg, msg
    assert "did you mean" not in msg, msg
    # following it: the fused key's activations serve its parts
    quantize_checkpoint(src, tmp_path / "out", "fp8", options={"activation_scheme": "static"}, calibration=calib,
                        packed_modules_mapping={"to_qkv": ["to_q", "to_k", "to_v"]})


@pytest.mark.parametrize("pattern", ["blocks.0.attn.to_qkv", "attn.to_qkv", "to_qkv"])
def test_a_skip_pattern_of_the_fused_module_is_told_to_fuse(src, tmp_path, pattern) -> None:
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "out", "fp8", skip=[pattern])
    msg = str(info.value)
    assert f"{pattern!r} (looks like a fused module of 'to_q', 'to_k', 'to_v'" in msg, msg
    assert FUSE in msg and "did you mean" not in msg, msg
    quantize_checkpoint(src, tmp_path / "out", "fp8", skip=[pattern], packed_modules_mapping={"to_qkv": ["to_q", "to_k",
                                                                                                            "to_v"]})


def test_a_misspelled_key_is_still_given_the_closest_name(src, tmp_path) -> None:
    with pytest.raises(QuantizeError, match=r"'blocks\.0\.attn\.to_qq' \(did you mean 'blocks\.0\.attn\.to_q' or"):
        quantize_checkpoint(src, tmp_path / "out", "fp8", skip=["blocks.0.attn.to_qq"])


def test_a_fused_key_beside_a_complete_file_is_noted_with_the_fuse(src, tmp_path) -> None:
    path = tmp_path / "calib-all.safetensors"
    save_file({f"blocks.{i}.attn.{m}": torch.randn(16, 64) for i in range(2)
               for m in ["to_q", "to_k", "to_v", "to_out", "to_qkv"]}, str(path))
    report = quantize_checkpoint(src, tmp_path / "out", "fp8", options={"activation_scheme": "static"}, calibration=path)
    note = next(n for n in report.notes if "calibration file" in n)
    assert "2 key(s) name no module of the checkpoint and were not read: 'blocks.0.attn.to_qkv'" in note, note
    assert FUSE in note, note
