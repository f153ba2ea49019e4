"""A model whose module is named otherwise than the checkpoint's (``attention`` for ``attn``): every tensor of it is
unexpected and every parameter missing. The cut report showed the first 20 problems, all unexpected tensors, so the
operator never saw what the model expected; it now shares the cap among the kinds, and its first line gives the
rename."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.loader.load import SHOWN_PROBLEMS

BLOCKS = 8


class Attn(torch.nn.Module):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.to_q = ReplicatedLinear(16, 16, bias=True, prefix=f"{prefix}.to_q")
        self.to_out = ReplicatedLinear(16, 16, bias=True, prefix=f"{prefix}.to_out")


class Block(torch.nn.Module):
    def __init__(self, prefix: str, attr: str) -> None:
        super().__init__()
        setattr(self, attr, Attn(f"{prefix}.{attr}"))
        self.ff = ReplicatedLinear(16, 16, bias=True, prefix=f"{prefix}.ff")


class Model(torch.nn.Module):
    def __init__(self, attrs: list[str]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(f"blocks.{i}", a) for i, a in enumerate(attrs))


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    save_file({k: torch.randn(v.shape) for k, v in Model(["attn"] * BLOCKS).state_dict().items()},
              str(tmp_path / "model.safetensors"))
    return tmp_path


def _error(model, path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    return info.value


def test_a_renamed_module_is_named_with_its_rename_and_both_kinds_are_shown(ckpt) -> None:
    err = _error(Model(["attention"] * BLOCKS), ckpt)
    lines = [line.strip() for line in str(err).splitlines()[1:]]
    assert lines[0] == ("32 of the checkpoint's 32 unexpected tensor(s) are the model's missing parameters with module "
                        "'attn' named 'attention' ('blocks.0.attn.to_out.bias' → 'blocks.0.attention.to_out.bias'): "
                        "the model's module is 'attention' where the checkpoint's is 'attn'. Load with "
                        r"param_names_mapping={r'^((?:[^.]+\.){2})attn\.': r'\g<1>attention.'} (renames it), or name "
                        "the model's module 'attn'"), lines[0]
    shown = lines[:-1]
    assert len(shown) == SHOWN_PROBLEMS
    unexpected = [ln for ln in shown if ln.startswith("unexpected tensor")]
    missing = [ln for ln in shown if ln.startswith("missing tensor")]
    assert len(unexpected) >= 9 and len(missing) >= 9, shown  # (was: 20 unexpected, no missing)
    assert lines[-1] == (f"... and {65 - SHOWN_PROBLEMS} more problem(s) not shown ({32 - len(unexpected)} unexpected "
                         f"tensor(s), {32 - len(missing)} missing tensor(s); the error's .problems lists them all)")
    # the rename given loads
    pattern, replacement = re.search(r"param_names_mapping=\{r'(.*?)': r'(.*?)'\}", lines[0]).groups()
    load_checkpoint(Model(["attention"] * BLOCKS), ckpt, param_names_mapping={pattern: replacement})


def test_a_rename_that_would_move_tensors_that_load_is_not_given(ckpt) -> None:
    """Blocks 1-7 renamed, block 0 not: the rename at that depth would also move block 0's tensors."""
    err = _error(Model(["attn"] + ["attention"] * (BLOCKS - 1)), ckpt)
    first = str(err).splitlines()[1].strip()
    assert first.startswith("28 of the checkpoint's 28 unexpected tensor(s) are the model's missing parameters with "
                            "module 'attn' named 'attention'"), first
    assert first.endswith("name the model's module 'attn', or give param_names_mapping an entry that renames those "
                          "tensors only"), first


def test_many_names_for_one_is_no_rename(tmp_path) -> None:
    """to_q and to_k both where the model has to_qk: a fusion (or another layout), not a rename."""
    model = torch.nn.ModuleDict({"to_qk": torch.nn.Linear(4, 4)})
    save_file({f"{m}.{k}": torch.zeros(4, 4) if k == "weight" else torch.zeros(4) for m in ["to_q", "to_k"]
               for k in ["weight", "bias"]}, str(tmp_path / "model.safetensors"))
    assert "named" not in str(_error(model, tmp_path))


def test_a_report_of_one_kind_shows_the_cap(tmp_path) -> None:
    """Only unexpected tensors: all 20 lines are theirs (the share of a kind with no lines goes to the others)."""
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4)})
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors |= {f"stray{i}": torch.zeros(1) for i in range(30)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    lines = str(_error(model, tmp_path)).splitlines()[1:]
    assert sum(ln.strip().startswith("unexpected tensor") for ln in lines) == SHOWN_PROBLEMS


class Net(torch.nn.Module):
    """A feed-forward as an nn.Sequential: its layers are named by index (ff.net.0, ff.net.2)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(index)],
                                       ReplicatedLinear(16, 16, bias=True, prefix=f"net.{index}"))


def test_a_rename_to_an_index_gives_a_mapping_that_applies(tmp_path) -> None:
    """``\\1`` before a digit reads as another group (``\\11.``: re.error), so the mapping gives ``\\g<1>``."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.ff = Net(2)
    save_file({k: torch.randn(v.shape) for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    renamed = torch.nn.Module()
    renamed.ff = Net(1)
    first = str(_error(renamed, tmp_path)).splitlines()[1].strip()
    assert "with module '2' named '1'" in first, first
    pattern, replacement = re.search(r"param_names_mapping=\{r'(.*?)': r'(.*?)'\}", first).groups()
    assert replacement == r"\g<1>1.", first
    load_checkpoint(renamed, tmp_path, param_names_mapping={pattern: replacement})
