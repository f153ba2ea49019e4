"""What a checkpoint file safetensors cannot read is, for the loader's message: a dangling symbolic link (a Hugging
Face cache blob gone), a PyTorch zip or a pickle under a safetensors name, or a safetensors file whose size is not the
one its header gives (truncated, or bytes appended). Read from the first bytes and the header only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path


def what_it_is(path: Path) -> str | None:
    """What a file safetensors cannot read is, told from its first bytes and its header (for the message), or None
    when that cannot be told: a dangling symbolic link, a PyTorch zip or a pickle, or a safetensors file whose size
    is not the one its header gives."""
    if is_dangling(path):
        return dangling_link(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            length = int.from_bytes(head[:8], "little")
            starts_as_safetensors = head[8:9] == b"{"  # (8 bytes of header length, then the header's JSON)
            readable = starts_as_safetensors and 8 + length <= min(size, _MAX_HEADER)
            header = head[8:] + f.read(length - 1) if readable else None
    except PermissionError as exc:  # (safetensors reports EACCES as "No such file or directory")
        return permission_denied(path, exc)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        return _zip_file(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and not starts_as_safetensors:
        return (f"this is a pickle file (pickle protocol {head[1]}: torch.save's legacy format, or pickle.dump), not "
                f"safetensors, whatever its name; {_NEVER_PICKLE}")
    if starts_as_safetensors and size < 8 + length <= _MAX_HEADER:
        return (f"its size does not match its header: its first 8 bytes give a {length}-byte header, so at least "
                f"{8 + length} bytes are expected, {size} found: the file is truncated (an interrupted download or "
                "copy): re-download or re-export it")
    return _size_against_header(header, length, size) if header is not None else None


def permission_denied(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be read when this process lacks permission: its mode and owner, and who this is (a shared
    Hugging Face cache's blobs written 0600 by another user)."""
    try:
        st = path.stat()
        mode = stat.filemode(st.st_mode)
        owner = _user(st.st_uid)
    except OSError:
        return f"permission denied ({os.strerror(exc.errno or 13)}): this process may not read it"
    me = _user(os.geteuid()) if hasattr(os, "geteuid") else "this user"
    return (f"permission denied: the file exists but is {mode}, owned by {owner}, and this process runs as {me}; "
            "make it readable (chmod a+r, or ask its owner), or copy the checkpoint somewhere readable — "
            "re-downloading will not help")


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


#: The largest header read to check a file's size against (safetensors' own limit, MAX_HEADER_SIZE).
_MAX_HEADER = 100_000_000

#: The end of a message about a pickle-based file (what to do with it).
_NEVER_PICKLE = ("pickle checkpoints are never loaded (unpickling can run code): convert it to safetensors where you "
                 "trust it (torch.load(..., weights_only=True), then safetensors.torch.save_file)")


def _zip_file(path: Path) -> str:
    """A zip archive named like a safetensors file: torch.save's format (a ``data.pkl`` inside), or another zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        members = []
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        return f"this is a PyTorch (torch.save / zip) file, not safetensors, whatever its name; {_NEVER_PICKLE}"
    return "this is a zip archive, not a safetensors file, whatever its name: unpack it, or re-download the file"


def _size_against_header(header: bytes, length: int, size: int) -> str | None:
    """The message for a safetensors file whose size is not ``8 + header length + the end of its last tensor``
    (the header's largest ``data_offsets``), or None when it is (or the header cannot be read)."""
    try:
        entries = json.loads(header)
        ends = [e["data_offsets"][1] for k, e in entries.items() if k != "__metadata__"]
        expected = 8 + length + max(ends, default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if not isinstance(expected, int) or expected == size:
        return None
    if size > expected:
        why = (f"{size - expected} extra bytes after the data: something was appended to it, or it is corrupted; "
               "re-download or re-export it")
    else:
        why = (f"{expected - size} bytes missing: the file is truncated (an interrupted download or copy); re-download "
               "or re-export it")
    return (f"its size does not match its header: {expected} bytes expected from the header (8 + {length} of header "
            f"+ {expected - 8 - length} of tensor data), {size} found ({why})")


def is_dangling(path: Path) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist (a Hugging Face cache snapshot whose blob is
    gone, a half-finished download)."""
    return path.is_symlink() and not path.exists()


def dangling_link(path: Path) -> str:
    """``<name> is a symbolic link to a missing file '<target>' ...``: the message for a dangling link."""
    target = os.readlink(path)
    resolved = os.path.normpath(os.path.join(path.parent, target))
    where = f" ({resolved})" if resolved != target else ""
    return (f"{path.name} is a symbolic link to a missing file {target!r}{where} (an incomplete or cleaned-up "
            "download, e.g. a Hugging Face cache snapshot whose blob was deleted): download it again")
