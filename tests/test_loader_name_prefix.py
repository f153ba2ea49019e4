"""Checkpoint names and model names that differ by a whole prefix: one line gives the rename (``param_names_mapping``)
or the submodule to load into, before the per-tensor lines, and it works. A model wrapped by ``torch.compile`` (its names
under ``_orig_mod.``) loads into the module it wraps."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 8, 4, bias=False, prefix="blocks.0.qkv_proj")
        self.proj_out = ReplicatedLinear(32, 16, prefix="blocks.0.proj_out")


class DiT(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block()])


class Pipeline(torch.nn.Module):  # the DiT a submodule: its names carry 'transformer.'
    def __init__(self) -> None:
        super().__init__()
        self.transformer = DiT()


def _tensors(prefix: str = "") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    names = [f"blocks.0.{p}_proj.weight" for p in "qkv"] + ["blocks.0.proj_out.weight", "blocks.0.proj_out.bias"]
    shapes = {"blocks.0.proj_out.weight": (16, 32), "blocks.0.proj_out.bias": (16,)}
    return {prefix + n: torch.randn(shapes.get(n, (32, 32))) for n in names}


def _run_suggestion(hint: str) -> dict:
    return eval(re.search(r"param_names_mapping=(\{.*?\})", hint).group(1))  # noqa: S307 - our own message


def test_a_checkpoint_prefix_the_model_lacks_gets_the_rename(tmp_path) -> None:
    tensors = _tensors("model.diffusion_model.")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(DiT(), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first == ("5 of the checkpoint's 5 unexpected tensor(s) are the model's missing parameters under the name "
                     "prefix 'model.diffusion_model.', which the model's names lack: load with param_names_mapping="
                     r"{r'^model\.diffusion_model\.(.*)$': r'\1'} (drops it)"), first
    model = DiT()
    load_checkpoint(model, tmp_path, param_names_mapping=_run_suggestion(first))
    assert torch.equal(model.blocks[0].proj_out.weight, tensors["model.diffusion_model.blocks.0.proj_out.weight"])


def test_a_model_prefix_the_checkpoint_lacks_names_the_submodule(tmp_path) -> None:
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(Pipeline(), tmp_path)
    first = str(info.value).splitlines()[1].strip()
    assert first.startswith("3 of the model's 3 missing parameter(s) are the checkpoint's unexpected tensors under the "
                            "name prefix 'transformer.', which the checkpoint's names lack: load into that submodule, "
                            "load_checkpoint(model.get_submodule('transformer'), path), or load with "
                            r"param_names_mapping={r'^(.*)$': r'transformer.\1'}"), first
    for load in (lambda m: load_checkpoint(m.get_submodule("transformer"), tmp_path),
                 lambda m: load_checkpoint(m, tmp_path, param_names_mapping=_run_suggestion(first))):
        model = Pipeline()
        load(model)
        assert torch.equal(model.transformer.blocks[0].qkv_proj.weight[:32], tensors["blocks.0.q_proj.weight"])


def test_a_few_stray_tensors_get_no_prefix_hint(tmp_path) -> None:
    tensors = _tensors() | {"extra.blocks.0.proj_out.bias": torch.zeros(16), "lora.a": torch.zeros(2),
                            "lora.b": torch.zeros(2)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(DiT(), tmp_path)
    assert "name prefix" not in str(info.value), str(info.value)


def test_a_compiled_model_loads_into_the_module_it_wraps(tmp_path) -> None:
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = DiT()
    compiled = torch.compile(model)
    report = load_checkpoint(compiled, tmp_path)
    assert not any("_orig_mod" in n for n in report.loaded), report.loaded
    assert torch.equal(model.blocks[0].proj_out.bias, tensors["blocks.0.proj_out.bias"])
