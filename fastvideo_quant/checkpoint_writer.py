"""Writing a safetensors checkpoint directory: bounded shards, an index, and an atomic swap into place.

``fvq quantize`` converts checkpoints larger than memory, so tensors are written
as they come, into shards of at most ``max_shard_bytes``; only the current shard
is held. Naming follows Hugging Face ``save_pretrained``: one shard is
``model.safetensors``; several are ``model-00001-of-0000N.safetensors`` with a
``model.safetensors.index.json`` (``{"metadata": {"total_size": ...}, "weight_map": {...}}``).
Another base name can be given (diffusers writes ``diffusion_pytorch_model``).

Everything is written into a temporary directory next to the destination, every
file is fsynced, and only then is the directory renamed into place, so an
interrupted run leaves no half-written checkpoint at the destination: an exception,
Ctrl-C or (in the main thread) SIGTERM or SIGHUP (the terminal closed, an ssh session dropped) removes the
temporary directory. A destination
that is a symbolic link is written where the link points.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, CheckpointWarning, StopsProcess, warn_at_caller
from fastvideo_quant.processing import names as listed

DEFAULT_BASE_NAME = "model"  # transformers' save_pretrained
#: The weight-file base name of a diffusers model folder (``diffusion_pytorch_model.safetensors``, sharded as
#: ``diffusion_pytorch_model-00001-of-0000N.safetensors`` with ``diffusion_pytorch_model.safetensors.index.json``).
DIFFUSERS_BASE_NAME = "diffusion_pytorch_model"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # Hugging Face's default max_shard_size="5GB"

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


_SIZE_HINT = "write e.g. 500MB, 5GB, 2GiB or a byte count (units B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = of 1024)"


def parse_size(text: str | int) -> int:
    """Bytes from ``"500MB"``, ``"2GiB"`` or ``1234``; ValueError naming the accepted units otherwise, or for a size
    that is not positive (``"0"``, ``"0.1B"``, ``"-5"``)."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size {text} must be positive (at least 1 byte); {_SIZE_HINT}")
        return text
    match = re.fullmatch(r"\s*([-+]?\s*\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"size {text!r} is not understood; {_SIZE_HINT}")
    size = int(float(match.group(1).replace(" ", "")) * _UNITS[unit])  # a negative one is refused below, as 0 is
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive (at least 1 byte); {_SIZE_HINT}")
    return size


def oversized_note(oversized: list[tuple[str, int]], max_shard_bytes: int) -> str | None:
    """The summary's note on tensors larger than the shard limit (:attr:`ShardWriter.oversized`), or None."""
    if not oversized:
        return None
    name, size = max(oversized, key=lambda item: item[1])
    return (f"{len(oversized)} tensor(s) larger than --max-shard-size ({max_shard_bytes:,} bytes) were each written "
            f"alone in a shard that exceeds it (a tensor is not split, as in Hugging Face's save_pretrained); the "
            f"largest, {name!r}, is {size:,} bytes ({size / 2**20:,.1f} MiB)")


def os_reason(exc: BaseException) -> str:
    """The operating system's reason for an OSError (``Permission denied``), else the exception's text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
    """Accumulates tensors and writes a shard each time ``max_shard_bytes`` would be exceeded.

    ``base_name`` names the files: ``{base_name}.safetensors``, or ``{base_name}-00001-of-0000N.safetensors``
    with ``{base_name}.safetensors.index.json``. A tensor larger than ``max_shard_bytes`` cannot be split: as in
    Hugging Face's ``save_pretrained`` it goes alone into a shard that exceeds the limit, and is listed in
    :attr:`oversized` so the caller can say so.
    """

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 base_name: str = DEFAULT_BASE_NAME) -> None:
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.base_name = base_name
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        #: ``(name, bytes)`` of each tensor larger than ``max_shard_bytes``, written alone in its shard.
        self.oversized: list[tuple[str, int]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._shards):
            raise CheckpointError(f"tensor {name!r} is written twice; two source tensors map to the same output name")
        size = tensor_bytes(tensor)
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        if size > self.max_shard_bytes:
            self.oversized.append((name, size))
        # Own the memory: a view into a larger tensor would be saved whole (or refused by safetensors).
        self._pending[name] = tensor.detach().to("cpu").contiguous().clone()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self._shards):05d}.safetensors"
        try:
            save_file(self._pending, str(path), metadata={"format": "pt"})
        except (OSError, SafetensorError) as exc:  # disk full, a file size limit, an I/O error
            raise CheckpointError(f"could not write the weight shard {str(path)!r}: {os_reason(exc)}") from exc
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
            final = self.directory / f"{self.base_name}.safetensors"
            os.replace(self._shards[0][0], final)
            return [final]
        weight_map: dict[str, str] = {}
        written = []
        for i, (path, names) in enumerate(self._shards):
            final = self.directory / f"{self.base_name}-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(path, final)
            written.append(final)
            weight_map.update({n: final.name for n in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        index_path = self.directory / f"{self.base_name}.safetensors.index.json"
        write_text(index_path, json.dumps(index, indent=2) + "\n")
        return [*written, index_path]


def write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_destination(dst: Path, force: bool, shown: str | None = None) -> None:
    """Refuse a destination that is a file, or a non-empty directory without ``force``."""
    shown = shown or repr(str(dst))
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"destination {shown} exists and is not a directory; choose another path")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise FileExistsError(
            f"destination {shown} is not empty; pass --force (force=True) to replace it, or choose another path"
        )


def _refuse_working_directory(dst: Path, shown: str) -> None:
    """Refuse a destination that is the working directory or holds it: it is replaced by moving it aside and deleting
    it, which would leave this process (and the shell that started it) in a deleted directory — every later relative
    path fails there, and the caller would be told the write failed after it had replaced the destination."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return
    if cwd == dst or dst in cwd.parents:
        what = "is the current directory" if cwd == dst else f"holds the current directory ({str(cwd)!r})"
        raise CheckpointError(
            f"destination {shown} {what}: writing it replaces the whole directory, which would delete the directory "
            "this process and its shell work in; run from another directory, or choose another destination"
        )


def resolve_destination(dst: str | os.PathLike[str]) -> Path:
    """The absolute path written: ``dst`` with symbolic links resolved, so that a link to a directory is written
    into (the link stays, pointing at the new checkpoint) rather than replaced by a directory of its own."""
    path = Path(dst).absolute()
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise CheckpointError(f"destination {str(dst)!r} cannot be resolved: {os_reason(exc)}") from exc


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


#: Signals whose default action ends the process without cleanup, turned into :class:`Terminated` while writing:
#: SIGTERM (kill, docker stop, a scheduler) and SIGHUP (the terminal closed, an ssh session dropped; none on Windows).
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(SystemExit, StopsProcess):
    """SIGTERM or SIGHUP arrived while a checkpoint directory was written (main thread only); the exit status is
    128 + the signal's number (143, 129), as a shell reports a process the signal ended.

    A SystemExit, so an uncaught one ends the process without a traceback, after the partial output was removed.
    ``completed``: the signal came during the final rename and was held until it finished (the output is complete).
    """

    def __init__(self, signum: int, completed: bool = False) -> None:
        super().__init__(128 + signum)
        self.signum, self.completed = signum, completed

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.completed:
            return f"terminated by {name} (after the output was complete and in place)"
        return f"terminated by {name}; the partial output was removed and the destination left as it was"


class _SignalGuard:
    """While writing: SIGTERM and SIGHUP (when their handler is the default, which would kill the process with no
    cleanup) raise :class:`Terminated`, so the cleanup runs; during the final swap it, and Ctrl-C, are held until the swap is
    done, so the destination is never left moved aside. Only in the main thread (Python runs handlers there)."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.holding = False
        self.pending: int | None = None
        self.fired = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        defaults = [(sig, signal.SIG_DFL) for sig in TERMINATING_SIGNALS] + [(signal.SIGINT, signal.default_int_handler)]
        for sig, default in defaults:
            previous = signal.getsignal(sig)
            if previous is default:  # a handler of the program's own (or SIG_IGN) is left alone
                self.previous[sig] = previous
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.fired:  # the cleanup is running; the first signal is already on its way
            return
        if self.holding:
            self.pending = signum
            return
        self.fired = True
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """End a :meth:`hold`; a signal that came meanwhile is raised now."""
        self.holding = False
        if self.pending is not None and not self.fired:
            self.fired = True
            if self.pending == signal.SIGINT:
                interrupt = KeyboardInterrupt()
                interrupt.completed = True  # (the output is in place: the CLI says so)
                raise interrupt
            raise Terminated(self.pending, completed=True)


def _left_behind(dst: Path) -> tuple[list[Path], list[Path]]:
    """What earlier writes of ``dst`` killed outright (SIGKILL, the out-of-memory killer) could not clean up: their
    partial outputs (``.NAME.tmp-*`` beside it, ``.fvq-tmp-*`` inside it), and previous checkpoints moved aside for a
    swap that never finished (``.NAME.old-*/replaced``: maybe the only copy)."""
    name = glob.escape(dst.name)
    partial = sorted(dst.parent.glob(f".{name}.tmp-*")) + (sorted(dst.glob(".fvq-tmp-*")) if dst.is_dir() else [])
    moved = sorted(dst.parent.glob(f".{name}.old-*"))
    return [p for p in partial if p.is_dir()], [p for p in moved if p.is_dir()]


def _size(paths: list[Path]) -> int:
    """Bytes of the files under ``paths``; a file another run removes meanwhile counts nothing."""
    total = 0
    for path in paths:
        for f in path.rglob("*"):
            try:
                total += f.stat().st_size if f.is_file() else 0
            except OSError:
                continue
    return total


def _warn_left_behind(dst: Path) -> None:
    partial, moved = _left_behind(dst)
    lines = []
    if partial:
        lines.append(
            f"{len(partial)} partial output(s) of an earlier write of {str(dst)!r} are on disk, "
            f"{_size(partial) / 2**20:.1f} MiB: {', '.join(repr(str(p)) for p in partial)} — left by a run killed "
            "outright (SIGKILL, the out-of-memory killer), or being written by another run now. Nothing reads them; "
            "once no other run is writing, remove them to free the space")
    if moved:
        lines.append(
            f"{len(moved)} previous checkpoint(s) of {str(dst)!r} were moved aside for a swap that never finished (a "
            f"run killed during it): {', '.join(repr(str(p / 'replaced')) for p in moved)}, "
            f"{_size(moved) / 2**20:.1f} MiB. This may be the only copy: restore it (mv {str(moved[0] / 'replaced')!r} "
            f"{str(dst)!r}, when {str(dst)!r} is absent or not the checkpoint you want), or remove it once you do not "
            "need it")
    if lines:
        warn_at_caller("; ".join(lines), CheckpointWarning)


def _in_place(dst: Path, shown: str) -> bool:
    """Whether ``dst`` is written inside rather than replaced: an existing directory that cannot be moved aside — a
    mount point (a container's volume, ``docker -v host:/out``) — is written in place when it is empty (a non-empty
    one is refused, ``--force`` or not). A directory that could be moved only with a permission it lacks is refused
    here, before anything is read: the swap at the end would fail after the whole run."""
    if not dst.is_dir():
        return False
    if os.path.ismount(dst):
        _refuse_filled_volume(dst, shown)
        return True
    if not os.access(dst, os.W_OK):  # (moving a directory to another parent rewrites its '..' entry)
        mode = stat.filemode(dst.stat().st_mode)
        raise CheckpointError(
            f"destination {shown} exists and cannot be replaced: moving it aside needs write permission on it, and it "
            f"is {mode}; make it writable (chmod u+w), remove it, or choose another path")
    return False


def _refuse_filled_volume(dst: Path, shown: str, again: bool = False) -> None:
    """CheckpointError when the mount point ``dst`` holds anything but temporary directories (``.fvq-tmp-*``: this
    write's, another run's, or a killed one's, which :func:`_warn_left_behind` names). ``again``: the check before the
    move-up, where another process may have written there meanwhile."""
    found = [p.name for p in dst.iterdir() if not p.name.startswith(".fvq-tmp-")]
    if found:
        when = "now holds" if again else "holds"
        raise CheckpointError(
            f"destination {shown} is a mount point (a volume) and {when} {listed(sorted(found))}: a mount point cannot "
            "be moved aside and replaced, so it is written in place, only when empty; empty it first (--force does "
            "not delete a volume's contents), or choose a directory inside it" + (
                "; nothing of this run was moved into it (another process wrote there meanwhile)" if again else ""))


@contextlib.contextmanager
def atomic_directory(dst: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``dst``; on success it replaces ``dst``, on any exception (and on SIGTERM
    or SIGHUP, in the main thread) it is removed.

    The rename is atomic on one filesystem (the temporary directory is a sibling, so
    it is on the same one). An existing ``dst`` (empty, or non-empty with ``force``)
    is moved aside first and deleted only after the new one is in place. A ``dst`` that is a symbolic link
    (or lies under one) is resolved first: the checkpoint is written where the link points. An empty ``dst`` that is a
    mount point is written in place: the temporary directory is made inside it (on the volume) and its entries moved
    up at the end. Partial outputs an earlier killed write left are named in a :class:`CheckpointWarning`.
    """
    given = str(dst)
    dst = resolve_destination(dst)
    shown = repr(given) if Path(os.path.abspath(given)) == dst else f"{given!r} (a link to {str(dst)!r})"
    _refuse_working_directory(dst, shown)
    in_place = _in_place(dst, shown)  # (first: a filled volume's fix is not --force, and a volume holding only
    if not in_place:  # temporary directories, a killed run's leftovers, counts as empty)
        check_destination(dst, force, shown)
    _warn_left_behind(dst)
    if in_place:
        with _into_mount_point(dst, shown) as tmp:
            yield tmp
        return
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_sibling_directory(dst.parent, f".{dst.name}.tmp-")
    except OSError as exc:
        where = Path(exc.filename).parent if exc.filename else dst.parent
        raise CheckpointError(
            f"cannot write the destination {shown}: cannot make a directory in {str(where)!r}: {os_reason(exc)}"
        ) from exc
    with _written_then(tmp, lambda: _swap_into_place(tmp, dst, force, shown)):
        yield tmp


def _swap_into_place(tmp: Path, dst: Path, force: bool, shown: str) -> None:
    """Rename the complete ``tmp`` to ``dst``, an existing ``dst`` moved aside first and deleted once the new one is in
    place (put back if the rename fails; nothing left beside it either way)."""
    check_destination(dst, force, shown)  # someone may have written there meanwhile
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        try:
            os.replace(dst, old / "replaced")
        except BaseException:
            shutil.rmtree(old, ignore_errors=True)  # (empty: nothing was moved)
            raise
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:
            os.replace(old / "replaced", dst)  # put the previous checkpoint back
            shutil.rmtree(old, ignore_errors=True)
        raise
    fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _written_then(tmp: Path, finish: Callable[[], None]) -> Iterator[Path]:
    """Yield ``tmp``; when the body returns, fsync it and run ``finish`` (which puts it in place) with SIGTERM, SIGHUP
    and Ctrl-C held until it is done; on any exception (those signals included) remove ``tmp``."""
    guard = _SignalGuard()
    try:
        guard.install()
        yield tmp
        fsync_path(tmp)
        guard.hold()
        finish()
        guard.release()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        guard.restore()


@contextlib.contextmanager
def _into_mount_point(dst: Path, shown: str) -> Iterator[Path]:
    """:func:`atomic_directory` for an empty mount point: a temporary directory inside it, whose entries are moved up
    into it on success (each rename atomic; the set is not, which an empty destination does not need) and which is
    removed on any exception."""
    try:
        tmp = _make_sibling_directory(dst, ".fvq-tmp-")
    except OSError as exc:
        raise CheckpointError(f"cannot write the destination {shown}: cannot make a directory in it: "
                              f"{os_reason(exc)}") from exc
    with _written_then(tmp, lambda: _move_up(tmp, dst, shown)):
        yield tmp


#: Moved into a mount point last: a load reads a directory by its config and index, so a run killed during the
#: move leaves no config naming shards that are not there yet.
_MOVED_LAST = ("config.json", "quant_config.json")


def _move_up(tmp: Path, dst: Path, shown: str) -> None:
    """Move the complete ``tmp``'s entries into ``dst``, which must still be empty but for ``tmp`` (another run may
    have written there meanwhile: ``os.replace`` would mix the two), then remove ``tmp``; the config and index last.
    A failure takes back those moved, so no partial checkpoint is left for a load to read."""
    _refuse_filled_volume(dst, shown, again=True)
    entries = sorted(tmp.iterdir(), key=lambda p: (p.name in _MOVED_LAST or p.name.endswith(".index.json"), p.name))
    moved: list[Path] = []
    try:
        for entry in entries:
            os.replace(entry, dst / entry.name)
            moved.append(dst / entry.name)
    except BaseException:
        for path in moved:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    tmp.rmdir()
    fsync_path(dst)
