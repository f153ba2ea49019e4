"""Writing a safetensors checkpoint directory: bounded shards, an index, and an atomic swap into place.

``fvq quantize`` converts checkpoints larger than memory, so tensors are written
as they come, into shards of at most ``max_shard_bytes``; only the current shard
is held. Naming follows Hugging Face ``save_pretrained``: one shard is
``model.safetensors``; several are ``model-00001-of-0000N.safetensors`` with a
``model.safetensors.index.json`` (``{"metadata": {"total_size": ...}, "weight_map": {...}}``).

Everything is written into a temporary directory next to the destination, every
file is fsynced, and only then is the directory renamed into place, so an
interrupted run leaves no half-written checkpoint at the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # Hugging Face's default max_shard_size="5GB"

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str | int) -> int:
    """Bytes from ``"500MB"``, ``"2GiB"`` or ``1234``; ValueError naming the accepted units otherwise."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"size {text!r} is not understood; write e.g. 500MB, 5GB, 2GiB or a byte count")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk (directories: so a rename inside them is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Accumulates tensors and writes a shard each time ``max_shard_bytes`` would be exceeded."""

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._shards):
            raise CheckpointError(f"tensor {name!r} is written twice; two source tensors map to the same output name")
        size = tensor_bytes(tensor)
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        # Own the memory: a view into a larger tensor would be saved whole (or refused by safetensors).
        self._pending[name] = tensor.detach().to("cpu").contiguous().clone()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600); give the shard the
        # read permissions of its directory (made under the umask), like any other file written there.
        os.chmod(path, stat.S_IMODE(os.stat(self.directory).st_mode) & 0o666)
        fsync_path(path)
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names and write the index; the files written."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            final = self.directory / SINGLE_NAME
            os.replace(self._shards[0][0], final)
            return [final]
        weight_map: dict[str, str] = {}
        written = []
        for i, (path, names) in enumerate(self._shards):
            final = self.directory / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(path, final)
            written.append(final)
            weight_map.update({n: final.name for n in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_text(self.directory / INDEX_NAME, json.dumps(index, indent=2) + "\n")
        return [*written, self.directory / INDEX_NAME]


def write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_destination(dst: Path, force: bool) -> None:
    """Refuse a destination that is a file, or a non-empty directory without ``force``."""
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"destination {str(dst)!r} exists and is not a directory; choose another path")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise FileExistsError(
            f"destination {str(dst)!r} is not empty; pass --force (force=True) to replace it, or choose another path"
        )


def _make_sibling_directory(parent: Path, prefix: str) -> Path:
    """A new uniquely named directory in ``parent``, with the permissions of any directory made there.

    Not ``tempfile.mkdtemp``: that makes it mode 0700 whatever the umask, and this directory is
    renamed into place as the checkpoint, which others (a serving user, a shared cache) must read.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()  # mode 0o777 & ~umask
        except FileExistsError:
            continue
        return path
    raise CheckpointError(f"could not make a temporary directory named {prefix}* in {str(parent)!r}; remove stale ones")


@contextlib.contextmanager
def atomic_directory(dst: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``dst``; on success it replaces ``dst``, on any exception it is removed.

    The rename is atomic on one filesystem (the temporary directory is a sibling, so
    it is on the same one). An existing ``dst`` (empty, or non-empty with ``force``)
    is moved aside first and deleted only after the new one is in place.
    """
    dst = Path(dst).absolute()
    check_destination(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_sibling_directory(dst.parent, f".{dst.name}.tmp-")
    try:
        yield tmp
        fsync_path(tmp)
        check_destination(dst, force)  # someone may have written there meanwhile
        old = None
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / "replaced")
        try:
            os.replace(tmp, dst)
        except BaseException:
            if old is not None:
                os.replace(old / "replaced", dst)  # put the previous checkpoint back
            raise
        fsync_path(dst.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
