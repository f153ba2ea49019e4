"""Destinations the final swap cannot move aside: a mount point (a container's volume) is written in place when
empty, a directory without write permission is refused before any tensor is read, and partial outputs of a killed
run are named. Before, both failed only after the whole run and left a ``.NAME.old-*`` directory behind."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import toy_method
from test_quantize import run_model, src, toy_plugin  # noqa: F401  (the fixtures)

from fastvideo_quant import checkpoint_writer
from fastvideo_quant.errors import CheckpointError, CheckpointWarning
from fastvideo_quant.quantize import quantize_checkpoint


@pytest.fixture
def volume(tmp_path: Path, monkeypatch) -> Path:
    """An empty directory that reports itself a mount point (CI cannot mount one), and cannot be renamed, as one."""
    dst = tmp_path / "vol"
    dst.mkdir()
    real_ismount, real_replace = os.path.ismount, os.replace
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == dst or real_ismount(p))

    def replace(a, b):
        if Path(a) == dst:
            raise OSError(16, "Device or resource busy", str(a))
        return real_replace(a, b)

    monkeypatch.setattr(checkpoint_writer.os, "replace", replace)
    return dst


def test_an_empty_mount_point_is_written_in_place(src: Path, volume: Path):  # noqa: F811
    quantize_checkpoint(src, volume, "toy-int8")
    assert (volume / "config.json").is_file() and not list(volume.glob(".fvq-tmp-*"))
    assert not list(volume.parent.glob(".vol.*"))
    run_model(volume)  # (it loads)


@pytest.mark.parametrize("force", [False, True])
def test_a_mount_point_that_is_not_empty_is_refused_before_anything_is_read(src: Path, volume: Path, force: bool):  # noqa: F811
    """Without --force it said 'pass --force', then with it that --force does not delete a volume's contents."""
    (volume / "keep.txt").write_text("x")
    toy_method.ToyConfig.calls.clear()
    with pytest.raises(CheckpointError, match=r"is a mount point \(a volume\) and holds 'keep\.txt': .*empty it first"):
        quantize_checkpoint(src, volume, "toy-int8", force=force)
    assert [p.name for p in volume.iterdir()] == ["keep.txt"]
    assert not list(volume.parent.glob(".vol.*")) and toy_method.ToyConfig.calls == []


def test_a_mount_point_another_run_writes_into_meanwhile_is_not_mixed_into(src: Path, volume: Path, monkeypatch):  # noqa: F811
    """os.replace overwrote what was there: ours and another run's shards ended side by side in one checkpoint."""
    real = checkpoint_writer._written_then

    import contextlib

    @contextlib.contextmanager
    def meanwhile(tmp, finish):
        with real(tmp, finish) as t:
            yield t
            (volume / "model-00001-of-00002.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(checkpoint_writer, "_written_then", meanwhile)
    with pytest.raises(CheckpointError, match=r"now holds 'model-00001-of-00002\.safetensors'.*nothing of this run "
                                              r"was moved into it"):
        quantize_checkpoint(src, volume, "toy-int8")
    assert [p.name for p in volume.iterdir()] == ["model-00001-of-00002.safetensors"]


def test_a_failure_while_moving_into_the_mount_point_leaves_it_empty(src: Path, volume: Path, monkeypatch):  # noqa: F811
    real = checkpoint_writer.os.replace
    calls = []

    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(checkpoint_writer.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        quantize_checkpoint(src, volume, "toy-int8")
    assert list(volume.iterdir()) == []


def test_a_destination_that_cannot_be_moved_aside_is_refused_first(src: Path, tmp_path: Path, monkeypatch):  # noqa: F811
    """Root moves a directory it cannot write, so the permission is made to read as missing, as for any other user."""
    dst = tmp_path / "dst"
    dst.mkdir()
    dst.chmod(0o555)
    real = os.access
    monkeypatch.setattr(checkpoint_writer.os, "access", lambda p, mode: False if Path(p) == dst else real(p, mode))
    toy_method.ToyConfig.calls.clear()
    try:
        with pytest.raises(CheckpointError, match=r"exists and cannot be replaced: moving it aside needs write "
                                                  r"permission on it, and it is dr-xr-xr-x"):
            quantize_checkpoint(src, dst, "toy-int8", force=True)
    finally:
        dst.chmod(0o755)
    assert not list(tmp_path.glob(".dst.*")) and toy_method.ToyConfig.calls == []


def test_a_failed_swap_leaves_no_directory_behind(src: Path, tmp_path: Path, monkeypatch):  # noqa: F811
    """The swap's first rename failing (a permission root does not need, a busy directory) left '.dst.old-*'."""
    dst = tmp_path / "dst"
    dst.mkdir()
    real = checkpoint_writer.os.replace

    def replace(a, b):
        if Path(a) == dst:
            raise PermissionError(13, "Permission denied", str(a))
        return real(a, b)

    monkeypatch.setattr(checkpoint_writer.os, "replace", replace)
    with pytest.raises(PermissionError):
        quantize_checkpoint(src, dst, "toy-int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"] and list(dst.iterdir()) == []


def test_partial_outputs_of_a_killed_run_are_named(src: Path, tmp_path: Path):  # noqa: F811
    stale = tmp_path / ".q.tmp-0badf00d"
    stale.mkdir()
    (stale / ".shard-00000.safetensors").write_bytes(b"\0" * 4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    texts = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert any("1 partial output(s) of an earlier write of" in t and ".q.tmp-0badf00d" in t and "remove them" in t
               for t in texts), texts
    assert stale.is_dir()  # (named, not removed: another run may be writing it)


def test_a_previous_checkpoint_moved_aside_is_named_as_such_not_as_partial_output(src: Path, tmp_path: Path):  # noqa: F811
    """A run killed between the swap's two renames leaves the previous DST in .DST.old-*/replaced, maybe the only copy:
    it was listed with the partial outputs, to remove (a diff reviewer's finding)."""
    old = tmp_path / ".q.old-k2j3" / "replaced"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    texts = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert any("1 previous checkpoint(s) of" in t and "moved aside for a swap that never finished" in t
               and "This may be the only copy: restore it (mv" in t for t in texts), texts
    assert not any("partial output" in t for t in texts), texts
    assert caught[0].filename.endswith(".py") and "contextlib" not in caught[0].filename


def test_a_killed_runs_leftover_in_a_volume_is_named_and_does_not_refuse_the_write(src: Path, volume: Path):  # noqa: F811
    """The check before the move-up counted another run's temporary directory as content: a leftover the first check
    let through refused the write after the whole run."""
    (volume / ".fvq-tmp-deadbeef").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_checkpoint(src, volume, "toy-int8")
    assert (volume / "config.json").is_file() and (volume / ".fvq-tmp-deadbeef").is_dir()
    assert any(".fvq-tmp-deadbeef" in str(w.message) for w in caught if issubclass(w.category, CheckpointWarning))
