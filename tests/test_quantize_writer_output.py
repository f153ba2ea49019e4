"""How ``fvq quantize`` writes its output: write errors as one line, a destination that is a symbolic link, SIGTERM
or SIGHUP mid-write, the copied files' permissions and list, weight files and indexes of other formats (not copied),
--max-shard-size 0 or negative and smaller than a tensor, an empty quantization_config in the source, and the
diffusers weight-file names."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import toy_method
from demo_checkpoints import write_demo_checkpoint
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastvideo_quant import checkpoint_writer, plugins
from fastvideo_quant.cli import main
from fastvideo_quant.demo.model import DemoConfig, random_state_dict
from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.quantize import quantize_checkpoint

CFG = DemoConfig(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, num_layers=1,
                 in_channels=16, num_tokens=8)


@pytest.fixture(autouse=True)
def toy_plugin():
    plugins.register_plugin(toy_method.ToyPlugin(), name="toy")
    yield
    plugins.unregister_plugin("toy")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_demo_checkpoint(tmp_path / "src", CFG)


def quantize(src: Path, dst: Path | str, *argv: str) -> int:
    return main(["quantize", str(src), "--out", str(dst), "--method", "toy-int8", "--no-progress", *argv])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- 1. disk and permission errors: one line, exit 1, the partial output removed -------------------------------

def test_parent_that_cannot_be_made_is_one_line(src: Path, capsys):
    assert quantize(src, "/proc/fvq-no-such-dir/x") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvq quantize: error: ") and "\n" not in err and "No such file or directory" in err, err


def test_permission_denied_is_one_line(src: Path, tmp_path: Path, monkeypatch, capsys):
    def refuse(parent: Path, prefix: str) -> Path:
        raise PermissionError(13, "Permission denied", str(parent / f"{prefix}x"))

    monkeypatch.setattr(checkpoint_writer, "_make_sibling_directory", refuse)
    assert quantize(src, tmp_path / "out" / "dst") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvq quantize: error: ") and "\n" not in err, err
    assert "Permission denied" in err and str(tmp_path / "out") in err, err


def test_disk_full_while_writing_a_shard_is_one_line_and_cleaned_up(src: Path, tmp_path: Path, monkeypatch, capsys):
    def full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(checkpoint_writer, "save_file", full)
    out = tmp_path / "out"
    out.mkdir()
    assert quantize(src, out / "dst") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvq quantize: error: ") and "\n" not in err and "File too large" in err, err
    assert list(out.iterdir()) == []


def test_disk_full_while_copying_is_one_line_and_cleaned_up(src: Path, tmp_path: Path, monkeypatch, capsys):
    (src / "tokenizer.json").write_text("{}")

    def full(a, b, *args, **kwargs):
        raise OSError(28, "No space left on device", str(b))

    import shutil
    monkeypatch.setattr(shutil, "copyfile", full)
    out = tmp_path / "out"
    out.mkdir()
    assert quantize(src, out / "dst") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvq quantize: error: ") and "\n" not in err and "No space left on device" in err, err
    assert list(out.iterdir()) == []


# --- 2. a destination that is a symbolic link to a directory is written into ----------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_destination_link_to_a_directory_is_written_where_it_points(src: Path, tmp_path: Path, force: bool):
    target = tmp_path / "vol" / "models"
    target.mkdir(parents=True)
    if force:
        (target / "old.txt").write_text("previous checkpoint")
    link = tmp_path / "link"
    link.symlink_to(target)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    report = quantize_checkpoint(src, link, "toy-int8", force=force)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # restored after writing
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "vol") == []
    assert "a link to" in report.summary()


def test_destination_link_to_a_nonempty_directory_refused_without_force(src: Path, tmp_path: Path, capsys):
    target = tmp_path / "models"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    (tmp_path / "link").symlink_to(target)
    assert quantize(src, tmp_path / "link") == 1
    err = capsys.readouterr().err
    assert "not empty" in err and f"a link to {str(target.resolve())!r}" in err, err
    assert (tmp_path / "link").is_symlink() and [p.name for p in target.iterdir()] == ["keep.txt"]


# --- 3. SIGTERM or SIGHUP mid-write removes the temporary directory -----------------------------------------

SLOW_CHILD = """
import sys, time
from fastvideo_quant import checkpoint_writer as cw
add = cw.ShardWriter.add
def slow_add(self, name, tensor):
    add(self, name, tensor)
    print("added", flush=True)
    time.sleep(0.2)
cw.ShardWriter.add = slow_add
from fastvideo_quant.cli import main
sys.exit(main(["quantize", sys.argv[1], "--out", sys.argv[2], "--method", "int8", "--no-progress",
               "--max-shard-size", "1000"]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_sigterm_or_sighup_while_writing_removes_the_partial_output(src: Path, tmp_path: Path, signum: int):
    # SIGHUP: the terminal was closed or the ssh session dropped; its default action, like SIGTERM's, kills the
    # process with no cleanup, leaving the temporary directory behind.
    out = tmp_path / "out"
    out.mkdir()
    before = signal.getsignal(signum)
    # The child starts with the signal's default action, as from a terminal: under nohup (or a CI runner ignoring
    # SIGHUP) it would inherit SIG_IGN, which the writer rightly leaves alone.
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_CHILD), str(src), str(out / "dst")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    try:
        for _ in range(3):  # a few shards are on disk
            assert proc.stdout.readline().strip() == "added", proc.stderr.read()
        assert leftovers(out), "the temporary directory should exist mid-write"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    said = "interrupted (Ctrl-C) the partial output was removed" if signum == signal.SIGINT else \
        f"terminated by {signal.Signals(signum).name}"
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(out.iterdir()) == []
    assert signal.getsignal(signum) is before  # (in this process: untouched)


# --- 4, 5, 8. copied files: contents without modes, the list in the summary, what was left out ----------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_copied_files_get_the_usual_permissions(src: Path, tmp_path: Path, umask: int):
    (src / "tokenizer.json").write_text("{}")
    os.chmod(src / "tokenizer.json", 0o600)
    (src / "scheduler").mkdir()
    (src / "scheduler" / "scheduler_config.json").write_text("{}")
    os.chmod(src / "scheduler" / "scheduler_config.json", 0o600)
    os.chmod(src / "scheduler", 0o700)
    old = os.umask(umask)
    try:
        quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    finally:
        os.umask(old)
    dst = tmp_path / "q"
    for f in [dst / "tokenizer.json", dst / "scheduler" / "scheduler_config.json"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE((dst / "scheduler").stat().st_mode) == 0o777 & ~umask


def test_index_of_pickle_weights_not_copied_and_summary_lists_copies(src: Path, tmp_path: Path):
    (src / "pytorch_model.bin").write_bytes(b"pickle")
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model.bin"}}))
    (src / "README.md").write_text("readme\n")
    (src / "generation_config.json").write_text("{}")
    (src / "text_encoder").mkdir()
    (src / "text_encoder" / "config.json").write_text("{}")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    report = quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    names = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert "pytorch_model.bin.index.json" not in names and "pytorch_model.bin" not in names
    assert report.copied == ["README.md", "generation_config.json", "text_encoder/"]
    summary = report.summary()
    assert "copied from the source: README.md, generation_config.json, text_encoder/" in summary
    assert "pytorch_model.bin.index.json" in summary and ".gitattributes" in summary


OTHER_FORMATS = ["flax_model.msgpack", "tf_model.h5", "model.onnx", "model.onnx_data", "model.onnx.data", "model-q8_0.gguf",
                 "rust_model.ot", "tf_model.h5.index.json"]


def test_weights_in_other_formats_are_not_copied_and_listed(src: Path, tmp_path: Path):
    # Full-precision duplicates of the weights: transformers' from_pretrained(from_flax=True / from_tf=True), an ONNX
    # or llama.cpp runtime would load them, unquantized, from the quantized checkpoint's directory.
    for name in OTHER_FORMATS:
        (src / name).write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    (src / "scheduler").mkdir()
    (src / "scheduler" / "scheduler_config.json").write_text("{}")
    report = quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    written = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert not set(OTHER_FORMATS) & set(written), written
    assert report.copied == ["scheduler/", "tokenizer.json"]
    summary = report.summary()
    for name in OTHER_FORMATS:
        assert name in summary, name
    assert "another framework's format" in summary


def test_weight_files_inside_copied_folders_are_named_with_their_size(src: Path, tmp_path: Path):
    """Meta's original/consolidated.00.pth (a Llama repo's layout) was copied whole without a word, hidden behind a
    summary of a few MiB (an operator reviewer's finding): kept (a folder may be another component's weights), named."""
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"\0" * (3 << 20))
    (src / "original" / "params.json").write_text("{}")
    (src / "text_encoder").mkdir()
    (src / "text_encoder" / "model.safetensors").write_bytes(b"not read")
    report = quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    assert (tmp_path / "q" / "original" / "consolidated.00.pth").is_file()
    summary = report.summary()
    assert ("copied whole, with 1 weight file(s) in another format, 3.0 MiB: original/consolidated.00.pth (3.0 MiB)"
            in summary), summary
    assert "text_encoder/model.safetensors" not in summary


# --- 6. --max-shard-size 0 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-5", "-2GB", "-0.5"])
def test_max_shard_size_zero_or_negative_says_why(src: Path, tmp_path: Path, capsys, size: str):
    # A negative size was 'not understood', as if its unit were wrong, while 0 said it must be positive.
    with pytest.raises(SystemExit):
        quantize(src, tmp_path / "q", f"--max-shard-size={size}")  # (-2GB as its own word reads as an option)
    err = capsys.readouterr().err
    assert f"size {size!r} must be positive" in err and "GiB" in err and "invalid parse_size value" not in err, err
    assert "not understood" not in err and not (tmp_path / "q").exists(), err


def test_tensor_larger_than_max_shard_size_goes_alone_with_a_note(src: Path, tmp_path: Path, capsys):
    """As Hugging Face's save_pretrained: a tensor larger than the limit is written alone in a shard that exceeds it
    (it cannot be split); the summary names the largest such tensor and its size, since the limit was not kept."""
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        sizes = {k: f.get_tensor(k).nbytes for k in f.keys()}
    limit = sorted(sizes.values())[len(sizes) // 2]  # half the tensors are larger
    assert quantize(src, tmp_path / "q", "--max-shard-size", str(limit)) == 0
    out = capsys.readouterr().out
    shards: dict[str, dict[str, int]] = {}
    for shard in json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())["weight_map"].values():
        with safe_open(str(tmp_path / "q" / shard), "pt") as f:
            shards[shard] = {k: f.get_tensor(k).nbytes for k in f.keys()}
    over = {shard: held for shard, held in shards.items() if sum(held.values()) > limit}
    assert over and all(len(held) == 1 for held in over.values()), over  # each alone in its shard
    name, size = max((item for held in over.values() for item in held.items()), key=lambda item: item[1])
    note = next(line for line in out.splitlines() if "larger than --max-shard-size" in line)
    assert f"{len(over)} tensor(s) larger than --max-shard-size ({limit:,} bytes)" in note, note
    assert f"the largest, {name!r}, is {size:,} bytes" in note, note
    assert quantize(src, tmp_path / "q2") == 0  # the default 5GB: no note
    assert "larger than --max-shard-size" not in capsys.readouterr().out


# --- 7. an empty quantization_config in the source --------------------------------------------------------------

@pytest.mark.parametrize("key", ["quantization_config", "compression_config"])
def test_empty_quantization_section_is_dropped_with_a_note(src: Path, tmp_path: Path, key: str):
    (src / "config.json").write_text(json.dumps({**CFG.to_dict(), key: {}}))
    report = quantize_checkpoint(src, tmp_path / "q", "toy-int8")
    written = json.loads((tmp_path / "q" / "config.json").read_text())
    assert written["quantization_config"]["quant_method"] == "toy-int8" and "compression_config" not in written
    assert any("empty" in n and key in n for n in report.notes), report.notes


# --- 9. diffusers layout keeps its weight-file names -------------------------------------------------------------

def test_diffusers_single_file_keeps_its_name(tmp_path: Path):
    d = tmp_path / "transformer"
    d.mkdir()
    save_file(random_state_dict(CFG, seed=0), str(d / "diffusion_pytorch_model.safetensors"))
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    quantize_checkpoint(d, tmp_path / "q", "toy-int8")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_diffusers_sharded_keeps_its_names_and_index(tmp_path: Path):
    d = tmp_path / "transformer"
    d.mkdir()
    sd = random_state_dict(CFG, seed=0)
    names = sorted(sd)
    weight_map = {}
    for i in range(2):
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: sd[n] for n in names[i::2]}, str(d / fname))
        weight_map.update({n: fname for n in names[i::2]})
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    report = quantize_checkpoint(d, tmp_path / "q", "toy-int8", max_shard_bytes=20_000)
    out = tmp_path / "q"
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" not in files
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(s.startswith("diffusion_pytorch_model-") for s in shards)
    assert files == sorted([*shards, "config.json", "diffusion_pytorch_model.safetensors.index.json"])
    for shard in shards:
        with safe_open(str(out / shard), "pt") as f:
            assert all(index["weight_map"][k] == shard for k in f.keys())
    assert [p.name for p in report.files][-2:] == ["diffusion_pytorch_model.safetensors.index.json", "config.json"]


@pytest.mark.parametrize("out", [".", ".."])
def test_the_working_directory_is_not_a_destination(src: Path, tmp_path: Path, out: str, monkeypatch):
    """Replacing it deleted the directory the process (and its shell) worked in; the write then failed on a relative
    path and said the destination was left as it was — after replacing it."""
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    (work / "inner" / "notes.txt").write_text("keep")
    monkeypatch.chdir(work / "inner")
    with pytest.raises(CheckpointError, match=r"destination '\.\.?' (is the current directory|holds the current "
                                              r"directory).*run from another directory"):
        quantize_checkpoint(src, out, "toy-int8", force=True)
    assert (work / "inner" / "notes.txt").read_text() == "keep"
