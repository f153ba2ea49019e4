"""Which files of a checkpoint directory are read: the index of either layout (``model.safetensors.index.json``,
``diffusers``' ``diffusion_pytorch_model.safetensors.index.json``), else the single file of either layout, and never
an unrelated ``*.safetensors`` beside them merged silently."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, CheckpointWarning
from fastvideo_quant.loader import checkpoint_files, load_checkpoint


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(8, 8)
        self.proj_out = torch.nn.Linear(8, 4)


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=g) for n, p in Net().named_parameters()}


LORA = {"proj_in.lora_A.weight": torch.ones(2, 8), "proj_in.lora_B.weight": torch.ones(8, 2)}


def sharded(directory, base: str, t: dict[str, torch.Tensor], index: str | None = None) -> list[str]:
    """``t`` in two shards ``<base>-0000i-of-00002.safetensors`` and an index ``<index or base>.safetensors.index.json``."""
    names = sorted(t)
    files = [f"{base}-00001-of-00002.safetensors", f"{base}-00002-of-00002.safetensors"]
    parts = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for file, part in zip(files, parts):
        save_file({n: t[n] for n in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / f"{index or base}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def assert_loaded(net: Net, t: dict[str, torch.Tensor]) -> None:
    for name, param in net.named_parameters():
        assert torch.equal(param, t[name]), name


def test_diffusers_index_reads_only_the_files_it_names(tmp_path):
    t = tensors()
    files = sharded(tmp_path, "diffusion_pytorch_model", t)
    save_file(LORA, str(tmp_path / "lora.safetensors"))  # an adapter beside the weights: not part of the checkpoint
    assert checkpoint_files(tmp_path) == [tmp_path / f for f in files]
    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(net, tmp_path)  # strict: the LoRA's tensors would be unexpected
    assert report.files == [tmp_path / f for f in files] and report.unexpected == []
    assert_loaded(net, t)


def test_diffusers_index_ignores_a_stale_copy_beside_it(tmp_path):
    t = tensors()
    files = sharded(tmp_path, "diffusion_pytorch_model", t)
    save_file({n: torch.zeros_like(v) for n, v in t.items()}, str(tmp_path / "diffusion_pytorch_model-old.safetensors"))
    assert checkpoint_files(tmp_path) == [tmp_path / f for f in files]
    net = Net()
    load_checkpoint(net, tmp_path)
    assert_loaded(net, t)


def test_any_single_index_is_the_checkpoints(tmp_path):
    t = tensors()
    files = sharded(tmp_path, "transformer", t)
    save_file(LORA, str(tmp_path / "lora.safetensors"))
    assert checkpoint_files(tmp_path) == [tmp_path / f for f in files]


def test_two_indexes_are_an_error_naming_both(tmp_path):
    t = tensors()
    sharded(tmp_path, "model", t)
    sharded(tmp_path, "diffusion_pytorch_model", t)
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(tmp_path)
    msg = str(info.value)
    assert "2 indexes, diffusion_pytorch_model.safetensors.index.json, model.safetensors.index.json" in msg
    assert "nothing was loaded" in msg
    net = Net()
    before = {n: p.clone() for n, p in net.named_parameters()}
    with pytest.raises(CheckpointError, match="2 indexes"):
        load_checkpoint(net, tmp_path)
    assert all(torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)) for n, p in net.named_parameters())


@pytest.mark.parametrize("single", ["diffusion_pytorch_model.safetensors", "model.safetensors"])
def test_single_file_is_read_alone_and_the_others_named(tmp_path, single):
    t = tensors()
    save_file(t, str(tmp_path / single))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint_files(tmp_path) == [tmp_path / single]  # alone: nothing to say
    save_file(LORA, str(tmp_path / "lora.safetensors"))
    save_file({"other.weight": torch.ones(3)}, str(tmp_path / "adapter.safetensors"))
    with pytest.warns(CheckpointWarning) as record:
        assert checkpoint_files(tmp_path) == [tmp_path / single]
    msg = str(record[0].message)
    assert f"read {single} only; 2 other *.safetensors file(s) beside it were not read: 'adapter.safetensors', " \
           "'lora.safetensors'" in msg
    net = Net()
    with pytest.warns(CheckpointWarning, match="lora.safetensors"):
        report = load_checkpoint(net, tmp_path)
    assert report.files == [tmp_path / single] and report.unexpected == []
    assert_loaded(net, t)


def test_stale_copy_beside_the_diffusers_file_names_the_diffusers_index(tmp_path):
    t = tensors()
    save_file(t, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    save_file({"proj_in.weight": torch.zeros(8, 8)}, str(tmp_path / "diffusion_pytorch_model-old.safetensors"))
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(tmp_path)
    msg = str(info.value)
    assert "in each of diffusion_pytorch_model-old.safetensors, diffusion_pytorch_model.safetensors: 'proj_in.weight'" in msg
    assert "diffusion_pytorch_model.safetensors.index.json" in msg
    assert "without model.safetensors.index.json every" not in msg


def test_both_single_files_are_an_error_naming_both(tmp_path):
    t = tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    save_file(t, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(tmp_path)
    msg = str(info.value)
    assert "holds both model.safetensors and diffusion_pytorch_model.safetensors and no index" in msg
    assert "nothing was loaded" in msg


def test_unindexed_files_read_together_are_named_in_a_warning(tmp_path):
    t = tensors()
    files = sharded(tmp_path, "diffusion_pytorch_model", t)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").unlink()  # the index was lost
    with pytest.warns(CheckpointWarning) as record:
        assert checkpoint_files(tmp_path) == [tmp_path / f for f in files]
    msg = str(record[0].message)
    assert "has no index" in msg and "2 *.safetensors files are read together" in msg
    assert all(repr(f) in msg for f in files)
