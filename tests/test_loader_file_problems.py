"""Broken checkpoint files are named with what is wrong with them: a shard a stale index leaves out, a dangling symbolic
link, a PyTorch file under a safetensors name, a file whose size is not its header's; an index's own path loads."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = ReplicatedLinear(16, 16, bias=True, params_dtype=torch.bfloat16, prefix="proj_in")
        self.proj_out = ReplicatedLinear(16, 8, bias=True, params_dtype=torch.bfloat16, prefix="proj_out")


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"proj_in.weight": (16, 16), "proj_in.bias": (16,), "proj_out.weight": (8, 16), "proj_out.bias": (8,)}
    return {n: torch.randn(*s, generator=g).to(torch.bfloat16) for n, s in shapes.items()}


def _write_index(d, weight_map: dict[str, str], name: str = "model.safetensors.index.json") -> None:
    (d / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _unchanged(model: Net) -> bool:
    return all(bool((p == 0).all()) for p in model.parameters())


def _zeroed() -> Net:
    model = Net()
    for p in model.parameters():
        p.data.zero_()
    return model


def _error(model, path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    return str(err.value)


# 1. A stale index: a shard beside it that it does not name holds the missing tensors.

def test_missing_tensor_in_a_shard_the_index_does_not_name_names_the_shard(tmp_path) -> None:
    t = _tensors()
    save_file({k: t[k] for k in ("proj_in.weight", "proj_in.bias")}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"proj_out.weight": t["proj_out.weight"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    save_file({"proj_out.bias": t["proj_out.bias"]}, str(tmp_path / "model-00003-of-00003.safetensors"))
    save_file({"lora.down": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))  # holds nothing the model misses
    _write_index(tmp_path, {"proj_in.weight": "model-00001-of-00002.safetensors",
                            "proj_in.bias": "model-00001-of-00002.safetensors",
                            "proj_out.weight": "model-00002-of-00002.safetensors"})
    model = _zeroed()
    text = _error(model, tmp_path)
    assert ("1 missing tensor(s) found in model-00003-of-00003.safetensors, which the index model.safetensors.index.json "
            "does not name (so it was not read): 'proj_out.bias'; the index is stale: rewrite it (or add the file to its "
            "weight_map)") in text, text
    assert "missing tensor for parameter 'proj_out.bias'" in text and "lora.safetensors" not in text
    assert _unchanged(model)


def test_missing_fused_parts_in_a_shard_the_index_does_not_name_are_found_through_the_mapping(tmp_path) -> None:
    model = torch.nn.Module()
    model.qkv_proj = QKVParallelLinear(16, 4, 4, 2, bias=False, params_dtype=torch.bfloat16, prefix="qkv_proj")
    save_file({"q_proj.weight": torch.zeros(16, 16, dtype=torch.bfloat16)}, str(tmp_path / "a.safetensors"))
    save_file({"k_proj.weight": torch.zeros(8, 16, dtype=torch.bfloat16),
               "v_proj.weight": torch.zeros(8, 16, dtype=torch.bfloat16)}, str(tmp_path / "b.safetensors"))
    _write_index(tmp_path, {"q_proj.weight": "a.safetensors"})
    text = _error(model, tmp_path)
    assert ("2 missing tensor(s) found in b.safetensors, which the index model.safetensors.index.json does not name "
            "(so it was not read): 'k_proj.weight', 'v_proj.weight'; the index is stale") in text, text


# 2. A dangling symbolic link (a Hugging Face cache snapshot whose blob is gone).

def _dangling_snapshot(tmp_path):
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    os.symlink("../../blobs/3f2a9c", snapshot / "model.safetensors")
    return snapshot


def test_dangling_symlink_is_named_in_a_directory_and_as_the_path(tmp_path) -> None:
    snapshot = _dangling_snapshot(tmp_path)
    expected = (f"model.safetensors is a symbolic link to a missing file '../../blobs/3f2a9c' ({tmp_path / 'blobs' / '3f2a9c'})"
                " (an incomplete or cleaned-up download, e.g. a Hugging Face cache snapshot whose blob was deleted): "
                "download it again")
    for path in (snapshot, snapshot / "model.safetensors"):
        text = _error(_zeroed(), path)
        assert expected in text, text
        assert "no *.safetensors" not in text and "does not exist" not in text


def test_dangling_symlink_named_by_an_index_or_as_the_index_is_named(tmp_path) -> None:
    save_file(_tensors(), str(tmp_path / "model-00001-of-00002.safetensors"))
    os.symlink("../blobs/gone", tmp_path / "model-00002-of-00002.safetensors")
    _write_index(tmp_path, {n: "model-00001-of-00002.safetensors" for n in _tensors()}
                 | {"extra": "model-00002-of-00002.safetensors"})
    text = _error(_zeroed(), tmp_path)
    assert "model-00002-of-00002.safetensors is a symbolic link to a missing file '../blobs/gone'" in text, text

    other = tmp_path / "other"
    other.mkdir()
    save_file(_tensors(), str(other / "model-00001-of-00001.safetensors"))
    os.symlink("../blobs/index", other / "model.safetensors.index.json")  # not read without it: files merged unchecked
    text = _error(_zeroed(), other)
    assert "model.safetensors.index.json is a symbolic link to a missing file '../blobs/index'" in text, text


def test_index_naming_a_missing_shard_says_how_much_it_holds_and_what_to_do(tmp_path) -> None:
    t = _tensors()
    save_file({k: t[k] for k in ("proj_in.weight", "proj_in.bias")}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: t[k] for k in ("proj_out.weight", "proj_out.bias")}, str(tmp_path / "renamed.safetensors"))
    _write_index(tmp_path, {"proj_in.weight": "model-00001-of-00002.safetensors",
                            "proj_in.bias": "model-00001-of-00002.safetensors",
                            "proj_out.weight": "model-00002-of-00002.safetensors",
                            "proj_out.bias": "model-00002-of-00002.safetensors"})
    model = _zeroed()
    text = _error(model, tmp_path)
    assert (f"names 1 file(s) that are not in {tmp_path}: ['model-00002-of-00002.safetensors'], holding 2 of the 4 "
            "tensors its weight_map lists; the directory's other .safetensors files, which it does not name: "
            "['renamed.safetensors']; nothing was loaded. Copy or download the missing shard(s)") in text, text
    assert _unchanged(model)


# 3. A PyTorch file (zip or pickle) under a safetensors name.

def test_torch_save_zip_named_safetensors_is_named_as_pytorch(tmp_path) -> None:
    torch.save(_tensors(), tmp_path / "model.safetensors")
    text = _error(_zeroed(), tmp_path)
    assert "this is a PyTorch (torch.save / zip) file, not safetensors" in text, text
    assert "pickle checkpoints are never loaded" in text and "truncated" not in text


def test_raw_pickle_named_safetensors_is_named_as_pickle(tmp_path) -> None:
    torch.save(_tensors(), tmp_path / "model.safetensors", _use_new_zipfile_serialization=False)
    assert (tmp_path / "model.safetensors").read_bytes()[:1] == b"\x80"
    text = _error(_zeroed(), tmp_path)
    assert "this is a pickle file (pickle protocol 2" in text and "not safetensors" in text, text
    assert "pickle checkpoints are never loaded" in text

    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert "this is a pickle file (pickle protocol 4" in _error(_zeroed(), tmp_path)


def test_other_zip_named_safetensors_is_not_called_pytorch(tmp_path) -> None:
    with zipfile.ZipFile(tmp_path / "model.safetensors", "w") as archive:
        archive.writestr("readme.txt", "hello")
    text = _error(_zeroed(), tmp_path)
    assert "this is a zip archive, not a safetensors file" in text and "PyTorch" not in text, text


# 4. A file whose size is not the one its header gives.

def test_trailing_bytes_are_a_size_mismatch_not_truncation(tmp_path) -> None:
    file = tmp_path / "model.safetensors"
    save_file(_tensors(), str(file))
    size = file.stat().st_size
    with open(file, "ab") as f:
        f.write(b"\0" * 100)
    text = _error(_zeroed(), tmp_path)
    assert (f"its size does not match its header: {size} bytes expected from the header") in text, text
    assert f"{size + 100} found (100 extra bytes after the data" in text and "truncated" not in text


def test_missing_bytes_are_a_size_mismatch_and_truncation(tmp_path) -> None:
    file = tmp_path / "model.safetensors"
    save_file(_tensors(), str(file))
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[:-10])
    text = _error(_zeroed(), tmp_path)
    assert f"{size} bytes expected from the header" in text and f"{size - 10} found (10 bytes missing: the file is " \
           "truncated" in text, text

    file.write_bytes(file.read_bytes()[:40])  # cut inside the header
    text = _error(_zeroed(), tmp_path)
    assert "its size does not match its header" in text and "40 found: the file is truncated" in text, text


# 5. The index's own path.

def test_the_index_path_loads_its_directory_with_that_index(tmp_path) -> None:
    t = _tensors()
    save_file({k: t[k] for k in ("proj_in.weight", "proj_in.bias")}, str(tmp_path / "a.safetensors"))
    save_file({k: t[k] for k in ("proj_out.weight", "proj_out.bias")}, str(tmp_path / "b.safetensors"))
    _write_index(tmp_path, {"proj_in.weight": "a.safetensors", "proj_in.bias": "a.safetensors",
                            "proj_out.weight": "b.safetensors", "proj_out.bias": "b.safetensors"})
    model = _zeroed()
    report = load_checkpoint(model, tmp_path / "model.safetensors.index.json")
    assert sorted(f.name for f in report.files) == ["a.safetensors", "b.safetensors"]
    assert all(torch.equal(p, t[n]) for n, p in model.named_parameters())

    # Named, it is the one read even beside another index (the directory alone is ambiguous then).
    _write_index(tmp_path, {n: "a.safetensors" for n in ("proj_in.weight", "proj_in.bias")},
                 name="diffusion_pytorch_model.safetensors.index.json")
    assert "holds 2 indexes" in _error(_zeroed(), tmp_path)
    model = _zeroed()
    load_checkpoint(model, tmp_path / "model.safetensors.index.json")
    assert all(torch.equal(p, t[n]) for n, p in model.named_parameters())


def test_an_unreadable_file_is_named_as_such_not_as_missing(tmp_path, monkeypatch) -> None:
    """safetensors reports EACCES as 'No such file or directory', and the loader added 're-download it'; a shared
    Hugging Face cache with 0600 blobs of another user is the usual case (an operator reviewer's finding). Root reads
    any file, so both opens are made to fail as for another user."""
    import builtins

    from fastvideo_quant.loader import broken_files, files

    save_file(_tensors(), str(tmp_path / "model.safetensors"))
    target = str(tmp_path / "model.safetensors")
    real_open, real_safe_open = builtins.open, files._safe_open

    def denied(path, *args, **kwargs):
        if str(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def safe_open_denied(path, pread):
        if str(path) == target:
            raise FileNotFoundError("No such file or directory: " + str(path))  # (what safetensors says)
        return real_safe_open(path, pread)

    monkeypatch.setattr(broken_files, "open", denied, raising=False)
    monkeypatch.setattr(files, "_safe_open", safe_open_denied)
    model = Net()
    for p in model.parameters():
        p.data.zero_()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert "permission denied: the file exists but is -rw-" in text and "owned by" in text, text
    assert "re-downloading will not help" in text and "truncated" not in text, text
    assert _unchanged(model)


def test_a_single_file_beside_an_index_repeating_its_tensors_is_refused(tmp_path) -> None:
    """An fp8 output's shards with its model.safetensors copied beside them loaded the shards silently, while Hugging
    Face's from_pretrained reads model.safetensors first (an operator reviewer's finding)."""
    tensors = _tensors()
    first, second = ["proj_in.weight", "proj_in.bias"], ["proj_out.weight", "proj_out.bias"]
    save_file({n: tensors[n] for n in first}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in second}, str(tmp_path / "model-00002-of-00002.safetensors"))
    _write_index(tmp_path, {**{n: "model-00001-of-00002.safetensors" for n in first},
                            **{n: "model-00002-of-00002.safetensors" for n in second}})
    save_file({"proj_out.weight": tensors["proj_out.weight"]}, str(tmp_path / "model.safetensors"))
    model = Net()
    for p in model.parameters():
        p.data.zero_()
    with pytest.raises(CheckpointError, match=r"holds both an index, model\.safetensors\.index\.json, and "
                                              r"model\.safetensors, .* 1 tensor\(s\) are in both: 'proj_out\.weight'.*"
                                              r"from_pretrained reads model\.safetensors before an index"):
        load_checkpoint(model, tmp_path)
    assert _unchanged(model)
    save_file({"lora_A": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))  # shares nothing: named, not read
    with pytest.warns(UserWarning, match=r"model\.safetensors beside it shares no tensor with them and was not read"):
        load_checkpoint(model, tmp_path)
    assert torch.equal(model.proj_out.weight, tensors["proj_out.weight"])


@pytest.mark.parametrize("where", ["../other/model.safetensors", "sub/../../model.safetensors", "ABS"])
def test_an_index_naming_a_file_outside_the_directory_is_refused(tmp_path, where) -> None:
    """An index whose weight_map points outside the checkpoint's directory (a path with '..', an absolute one) was read
    without a word: another checkpoint's file merged in."""
    (tmp_path / "other").mkdir()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({"lin.weight": torch.ones(4, 4)}, str(tmp_path / "other" / "model.safetensors"))
    save_file({"lin.weight": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    file = str(tmp_path / "other" / "model.safetensors") if where == "ABS" else where
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lin.weight": file}}))
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(4, 4, bias=False, prefix="lin")
    with pytest.raises(CheckpointError, match=r"'weight_map' maps 1 tensor\(s\) to files outside its directory \(first "
                                              r"'lin.weight': .*nothing was loaded"):
        load_checkpoint(model, ckpt)


def test_an_index_naming_linked_files_in_a_subdirectory_is_read(tmp_path) -> None:
    """Names inside the directory are read, links included (a Hugging Face cache links snapshot files to blobs)."""
    (tmp_path / "blobs").mkdir()
    save_file({"lin.weight": torch.full((4, 4), 2.0)}, str(tmp_path / "blobs" / "abc"))
    ckpt = tmp_path / "snap"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "sub" / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lin.weight": "sub/model.safetensors"}}))
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(4, 4, bias=False, prefix="lin")
    load_checkpoint(model, ckpt)
    assert torch.equal(model.lin.weight, torch.full((4, 4), 2.0))


def test_an_index_naming_its_files_by_absolute_paths_inside_the_directory_is_read(tmp_path) -> None:
    save_file({"lin.weight": torch.full((4, 4), 3.0)}, str(tmp_path / "m-1.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lin.weight": str(tmp_path / "m-1.safetensors")}}))
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(4, 4, bias=False, prefix="lin")
    load_checkpoint(model, tmp_path)
    assert torch.equal(model.lin.weight, torch.full((4, 4), 3.0))
