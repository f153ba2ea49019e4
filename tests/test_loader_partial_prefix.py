"""A checkpoint whose names lack a prefix on only some tensors ('blocks.' dropped from the blocks', not from
patch_embed's): no rename of every name (nor the submodule) is suggested, since it would lose the tensors that load
as they are; a pattern anchored on the names that lack it is, when one tells them apart, else examples of both."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint


class Block(torch.nn.Module):
    def __init__(self, i: int) -> None:
        super().__init__()
        self.attn = ReplicatedLinear(32, 32, prefix=f"blocks.{i}.attn")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(0), Block(1)])
        self.proj_out = ReplicatedLinear(32, 16, prefix="proj_out")


def _first_line(model, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    return str(info.value).splitlines()[1].strip()


def test_a_prefix_dropped_from_some_names_gets_a_rename_anchored_on_those(tmp_path) -> None:
    tensors = {f"{i}.attn.{p}": torch.randn((32, 32) if p == "weight" else (32,)) for i in (0, 1)
               for p in ("weight", "bias")}
    tensors |= {"proj_out.weight": torch.randn(16, 32), "proj_out.bias": torch.randn(16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    first = _first_line(Net(), tmp_path)
    assert first == ("4 of the model's 4 missing parameter(s) are the checkpoint's unexpected tensors under the name "
                     "prefix 'blocks.', which the checkpoint's names lack on only some tensors ('0.attn.bias', "
                     "'0.attn.weight', '1.attn.bias' and 1 more), while 2 other tensor(s) of the checkpoint load as they "
                     "are ('proj_out.bias', 'proj_out.weight'), so a rename of every name, or loading into submodule "
                     "'blocks', would lose those: load with param_names_mapping={r'^(\\d+\\..*)$': r'blocks.\\1'} "
                     "(adds it to those names only)"), first
    assert "get_submodule" not in first and r"{r'^(.*)$'" not in first
    mapping = eval(re.search(r"param_names_mapping=(\{.*?\})", first).group(1))  # noqa: S307 - our own message
    model = Net()
    load_checkpoint(model, tmp_path, param_names_mapping=mapping)  # the advice works
    assert torch.equal(model.blocks[1].attn.weight, tensors["1.attn.weight"])
    assert torch.equal(model.proj_out.bias, tensors["proj_out.bias"])


class Inner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.to_out = ReplicatedLinear(32, 32, prefix="inner.attn.to_out")


class Tangled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.proj = ReplicatedLinear(32, 16, prefix="attn.proj")
        self.inner = Inner()


def test_names_no_pattern_tells_apart_are_listed_without_a_rename(tmp_path) -> None:
    """'inner.' dropped from 'inner.attn.to_out', while 'attn.proj' loads: both start with 'attn.'."""
    tensors = {"attn.to_out.weight": torch.randn(32, 32), "attn.to_out.bias": torch.randn(32),
               "attn.proj.weight": torch.randn(16, 32), "attn.proj.bias": torch.randn(16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    first = _first_line(Tangled(), tmp_path)
    assert first == ("2 of the model's 2 missing parameter(s) are the checkpoint's unexpected tensors under the name "
                     "prefix 'inner.', which the checkpoint's names lack inconsistently: some tensors lack it "
                     "('attn.to_out.bias', 'attn.to_out.weight'), while 2 other tensor(s) of the checkpoint load as they "
                     "are ('attn.proj.bias', 'attn.proj.weight'), so a rename of every name, or loading into submodule "
                     "'inner', would lose those, and no pattern on the first name component tells the two apart: add "
                     "'inner.' to the names that lack it in the checkpoint, or give param_names_mapping an entry for "
                     "each"), first
    assert "param_names_mapping={" not in first
