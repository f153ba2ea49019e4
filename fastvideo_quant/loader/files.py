"""Which safetensors files a checkpoint is, and reading their tensors lazily (never pickle).

With an index, only the files its ``weight_map`` names; else ``model.safetensors`` or
``diffusion_pytorch_model.safetensors`` alone; else every ``*.safetensors`` in the directory. A tensor name held by
two of the files read is an error naming both (a stale copy would win silently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from fastvideo_quant.checkpoint_writer import DEFAULT_BASE_NAME, DIFFUSERS_BASE_NAME
from fastvideo_quant.errors import CheckpointError, CheckpointWarning, warn_at_caller
from fastvideo_quant.lazy import LazyTensor, materialize
from fastvideo_quant.loader.broken_files import dangling_link, is_dangling, what_it_is
from fastvideo_quant.processing import (
    names,
)

#: safetensors dtype strings (safetensors Dtype) → torch dtypes: every one torch can hold. A tensor stored in another
#: (F4, F6_*: no torch dtype) is refused by :func:`lazy_slice`; before, one missing here (U16, C64, F8_E8M0) loaded
#: without its dtype checked against the parameter's, so a uint16 weight became a float one silently.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "C64": torch.complex64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu,
}


def open_safetensors(path: str | os.PathLike[str], what: str = "checkpoint file", *, pread: bool = False) -> safe_open:
    """``safe_open(path, framework="pt")``; a file safetensors cannot read (truncated, not safetensors, unreadable) is
    a CheckpointError naming it (``what``: whose file it is) instead of a bare ``SafetensorError``.

    The handle is its own context manager (``__enter__`` returns it): use it in a ``with`` block, or an
    ``ExitStack``, so the file is closed.

    Two ways to read (safetensors 0.8+; older versions map only):

    * ``mmap`` (the default, what ``load_checkpoint`` uses): tensors are copied out of a mapping of the file. Every
      page read stays mapped while the file is open, so the process's RSS grows by the checkpoint's size. Those
      pages are the OS's page cache, clean and reclaimable under memory pressure, not memory the load holds. It is the
      fast way: a 2.4 GB bf16 load took 1.5 s against 4.0 s with ``pread`` (2-core Xeon, warm cache, 2026-12-05).
    * ``pread=True`` (what ``fvq quantize`` uses): each tensor is read into ordinary memory, freed with it, so RSS
      stays at what is held (quantize 2.4 GB of bf16: peak 2.0 GiB instead of 4.2). It costs a copy and fresh pages
      per tensor (about 12% of an fp8 quantize's time, 2.6x a bf16 load's).
    """
    try:
        return _safe_open(str(path), pread)
    except Exception as exc:  # SafetensorError (no importable class in every version), OSError
        found = what_it_is(Path(path))
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read as safetensors ({type(exc).__name__}: {exc}); " + (found or (
                "the file is truncated (an interrupted download or copy), not a safetensors file, or unreadable: "
                "re-download or re-export it"))
        ) from exc


def _refuse_dangling(path: Path, links: list[Path]) -> None:
    """A CheckpointError naming each dangling link of ``links`` (files the checkpoint would read), if any."""
    if links:
        raise CheckpointError(f"checkpoint {str(path)!r}: nothing was loaded; "
                              + "; ".join(dangling_link(link) for link in links))


_PREAD: list[bool] = []  # [whether this safetensors has backend="pread"], once known


def _safe_open(path: str, pread: bool):
    if pread and _PREAD != [False]:
        try:
            handle = safe_open(path, framework="pt", backend="pread")
        except TypeError:  # safetensors < 0.8: no backend argument, mmap only
            _PREAD[:] = [False]
        else:
            _PREAD[:] = [True]
            return handle
    return safe_open(path, framework="pt")


#: The whole-checkpoint file names read from a directory without an index (``transformers`` and ``diffusers``), and
#: thereby the bases of their indexes (``<base>.safetensors.index.json``).
SINGLE_FILE_NAMES = tuple(f"{base}.safetensors" for base in (DEFAULT_BASE_NAME, DIFFUSERS_BASE_NAME))


_INDEX_SUFFIX = ".safetensors.index.json"


_INDEX_NAMES = " or ".join(n + ".index.json" for n in SINGLE_FILE_NAMES)


def _read_index(index: Path) -> dict:
    """The ``weight_map`` of a ``<base>.safetensors.index.json``; CheckpointError naming the file when it is not
    JSON or has no such object."""
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index} is not valid JSON ({exc}); re-download it, or remove it to read the directory "
                              "without an index") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} has no 'weight_map' object (a tensor name → file name map)")
    bad = [(name, file) for name, file in weight_map.items() if not isinstance(file, str) or not file]
    if bad:
        shown = ", ".join(f"{name!r}: {file!r}" for name, file in bad[:3]) + (f" and {len(bad) - 3} more"
                                                                             if len(bad) > 3 else "")
        raise CheckpointError(f"{index}'s 'weight_map' maps {len(bad)} tensor(s) to something other than a file name "
                              f"({shown}); each entry is \"tensor name\": \"file.safetensors\": re-download the index, "
                              "or remove it to read the directory without one")
    # (by the names alone, not resolved: a Hugging Face cache's snapshot links its files to blobs elsewhere; an
    # absolute name inside the directory is its file)
    root = os.path.abspath(index.parent)
    outside = [(name, file) for name, file in weight_map.items()
               if os.path.commonpath([root, os.path.abspath(os.path.join(root, file))]) != root]
    if outside:  # (a checkpoint is its directory: a file elsewhere would be another checkpoint's, merged in)
        name, file = outside[0]
        raise CheckpointError(f"{index}'s 'weight_map' maps {len(outside)} tensor(s) to files outside its directory "
                              f"(first {name!r}: {file!r}); a checkpoint's files are in its directory, named relative "
                              "to it (\"model-00001-of-00002.safetensors\"): nothing was loaded. Correct the index, or "
                              "copy the files into the checkpoint's directory")
    return weight_map


def declaring_directory(path: str | os.PathLike[str]) -> Path | None:
    """The directory whose quantization declaration (config.json, a method file) describes a load of ``path``: the
    path itself when it is a directory, its directory when it is an index (which reads the checkpoint it describes,
    :func:`checkpoint_files`), None for one ``.safetensors`` file (a single-file load reads no declaration)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent if path.is_file() and path.name.endswith(_INDEX_SUFFIX) else None


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint (a file, or a directory with or without an index).

    * An index, ``<base>.safetensors.index.json`` (``model.safetensors.index.json`` as ``transformers`` writes it,
      ``diffusion_pytorch_model.safetensors.index.json`` as ``diffusers`` does, or any other base): only the files its
      ``weight_map`` names are read; other ``*.safetensors`` files beside it are not read. Two indexes in one
      directory are a CheckpointError naming both (which one describes the checkpoint cannot be told), and so is a
      :data:`SINGLE_FILE_NAMES` file beside the index repeating a tensor it names (Hugging Face's ``from_pretrained``
      reads that file before an index); one repeating none is named in a CheckpointWarning.
    * No index, and one of :data:`SINGLE_FILE_NAMES` (``model.safetensors``, ``diffusion_pytorch_model.safetensors``):
      only that file is read. Other ``*.safetensors`` files beside it (a LoRA, an adapter) are not read, and a
      CheckpointWarning names them; one repeating a tensor of the checkpoint (a stale copy: which one is current
      cannot be told) is a CheckpointError naming both files. Both names in one directory are a CheckpointError.
    * Neither: every ``*.safetensors`` file (sharded files whose index was lost); when that is more than one file a
      CheckpointWarning names those read together.

    A tensor name in more than one of the files read is a CheckpointError naming the files: whichever was read last
    would win silently. The path of an index itself reads its directory with that index. A dangling symbolic link
    that would be read (the path, a file the index names, the index, a file read without one) is a CheckpointError
    naming its target.
    """
    path = Path(path)
    if path.is_file():
        if path.name.endswith(_INDEX_SUFFIX):  # the index's path: its directory, reading this index
            return _indexed_files(path.parent, path)
        return [_safetensors_file(path)]
    if is_dangling(path):
        raise CheckpointError(f"checkpoint {str(path)!r}: {dangling_link(path)}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    index = _index_of(path)
    if index is not None:
        return _indexed_files(path, index)
    _refuse_dangling(path, _dangling_read(path))
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not files:
        raise CheckpointError(f"no *.safetensors files in {path}{_pickle_hint(path)}{pipeline_hint(path, 'load')}")
    single = _single_file_of(path)
    if single is not None:
        return _read_alone(path, single, files)
    return _read_together(path, files)


def _safetensors_file(path: Path) -> Path:
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors file; only safetensors checkpoints are loaded (never pickle)")
    return path


def _index_of(path: Path) -> Path | None:
    """The directory's ``*.safetensors.index.json``, None without one; two are a CheckpointError naming both, and so is
    one that is a dangling symbolic link (reading the directory without it would merge its files unchecked)."""
    _refuse_dangling(path, sorted(p for p in path.glob("*" + _INDEX_SUFFIX) if is_dangling(p)))
    indexes = sorted(p for p in path.glob("*" + _INDEX_SUFFIX) if p.is_file())
    if len(indexes) > 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {len(indexes)} indexes, {', '.join(p.name for p in indexes)}, and which one "
            "describes the checkpoint cannot be told (each names the files to read); nothing was loaded. Remove the "
            "index (and the files) that do not belong to it, or move them to a directory of their own"
        )
    return indexes[0] if indexes else None


def _indexed_files(path: Path, index: Path) -> list[Path]:
    """The files an index's ``weight_map`` names: each must exist, no two may hold one tensor, and each tensor the
    index names must be in the file it names (headers only)."""
    weight_map = _read_index(index)
    files = sorted({path / f for f in weight_map.values()})
    _refuse_dangling(path, [f for f in files if is_dangling(f)])
    absent = [str(f.name) for f in files if not f.is_file()]
    if absent:
        held = sum(1 for f in weight_map.values() if f in absent)
        here = sorted(p.name for p in path.glob("*.safetensors") if p.is_file() and p.name not in weight_map.values())
        others = f"; the directory's other .safetensors files, which it does not name: {here}" if here else ""
        raise CheckpointError(
            f"{index} names {len(absent)} file(s) that are not in {path}: {absent}, holding {held} of the "
            f"{len(weight_map)} tensors its weight_map lists{others}; nothing was loaded. Copy or download the missing "
            "shard(s) into the directory (an interrupted download or copy leaves them out), or, if the checkpoint was "
            "re-saved under other file names, replace the index with the one written with it"
        )
    holders = _holders(files)
    _check_no_repeated_tensors(path, files, weight_map, holders=holders)
    _check_index_agrees(path, index, weight_map, holders)
    for single in (path / n for n in SINGLE_FILE_NAMES):
        if single.is_file() and single not in files:
            _single_beside_index(path, index, weight_map, single, len(files))
    return files


def _single_beside_index(path: Path, index: Path, weight_map: dict, single: Path, count: int) -> None:
    """``model.safetensors`` (or diffusers' single file) beside an index that does not name it: a CheckpointError
    when it holds a tensor the index names (which copy is current cannot be told, and loaders disagree: Hugging
    Face's ``from_pretrained`` reads the single file before an index), else a CheckpointWarning (it is not read)."""
    hf = f"Hugging Face's from_pretrained reads {single.name} before an index, this library the index"
    try:
        with open_safetensors(single) as handle:
            shared = sorted(set(handle.keys()) & set(weight_map))
    except CheckpointError as exc:
        warn_at_caller(f"checkpoint {str(path)!r}: read the {count} file(s) the index {index.name} names; {single.name} "
                       f"beside it cannot be read and was not ({exc}); {hf}: remove it if it does not belong",
                       CheckpointWarning)
        return
    if shared:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds both an index, {index.name}, and {single.name}, which it does not name, "
            f"and {len(shared)} tensor(s) are in both: {names(shared)}; which copy is current cannot be told, and "
            f"loaders disagree ({hf}); nothing was loaded. Remove the stale copy: the index and the files it names, "
            f"or {single.name}")
    warn_at_caller(f"checkpoint {str(path)!r}: read the {count} file(s) the index {index.name} names; {single.name} "
                   f"beside it shares no tensor with them and was not read ({hf}): remove it if it does not belong",
                   CheckpointWarning)


def _dangling_read(path: Path) -> list[Path]:
    """The dangling symbolic links among the ``*.safetensors`` files a directory without an index would read: one of
    :data:`SINGLE_FILE_NAMES` always, any other when no single file is there to be read alone."""
    links = sorted(p for p in path.glob("*.safetensors") if is_dangling(p))
    alone = any((path / n).is_file() for n in SINGLE_FILE_NAMES)
    return [p for p in links if p.name in SINGLE_FILE_NAMES or not alone]


def stale_index_hints(path: str | os.PathLike[str], needed: Callable[[str], bool]) -> list[str]:
    """Problem lines for a load missing tensors: each ``*.safetensors`` file beside the checkpoint's index that the
    index does not name (so it is not read) but that holds tensors the model misses (``needed``), from the files'
    headers. [] for a checkpoint without an index, or when no such file holds one (a file that cannot be read is
    passed over: this only explains a 'missing tensor')."""
    path = Path(path)
    if path.is_file():
        directory, index = path.parent, (path if path.name.endswith(_INDEX_SUFFIX) else None)
    else:
        directory, index = path, (_index_of(path) if path.is_dir() else None)
    if index is None:
        return []
    named = {directory / f for f in _read_index(index).values()}
    hints = []
    for file in sorted(p for p in directory.glob("*.safetensors") if p.is_file() and p not in named):
        try:
            with open_safetensors(file) as handle:
                held = sorted(n for n in handle.keys() if needed(n))
        except CheckpointError:
            continue
        if held:
            hints.append(f"{len(held)} missing tensor(s) found in {file.name}, which the index {index.name} does not "
                         f"name (so it was not read): {names(held)}; the index is stale: rewrite it (or add the file "
                         "to its weight_map)")
    return hints


def _holders(files: list[Path]) -> dict[str, list[Path]]:
    """Tensor name → the files (of ``files``) that hold it, from their headers."""
    holders: dict[str, list[Path]] = {}
    for file in files:
        with open_safetensors(file) as handle:
            for name in handle.keys():
                holders.setdefault(name, []).append(file)
    return holders


def _check_index_agrees(path: Path, index: Path, weight_map: dict, holders: dict[str, list[Path]]) -> None:
    """A CheckpointError when the index names a tensor in a file that does not hold it (elsewhere, or nowhere): a
    stale index or shard, which would otherwise load (the tensor found in another file) or read as an incomplete
    export (a 'missing tensor' with no word of the index)."""
    moved, lost = [], []
    for name, file in weight_map.items():
        where = holders.get(name, [])
        if path / file in where:  # (as the files were found: ``./x`` and ``sub/x`` name them with a path)
            continue
        (moved if where else lost).append(name)
    if not moved and not lost:
        return
    lines = []
    if moved:
        lines.append(f"{len(moved)} tensor(s) not in the file the index names but in another: " + names(
            sorted(moved), lambda n: f"{n!r} (index: {weight_map[n]}; found in {holders[n][0].name})"))
    if lost:
        lines.append(f"{len(lost)} tensor(s) the index names that no file holds: " + names(
            sorted(lost), lambda n: f"{n!r} (index: {weight_map[n]})"))
    raise CheckpointError(
        f"checkpoint {str(path)!r}: its index {index.name} does not match its files, so a stale index or shard would "
        "be read; nothing was loaded (re-export the checkpoint, or rewrite the index from the files' "
        "contents):\n  " + "\n  ".join(lines)
    )


def pipeline_components(path: str | os.PathLike[str]) -> list[str]:
    """The model sub-directories of a diffusers pipeline root (``model_index.json`` beside folders holding a
    config.json and safetensors: ``transformer``, ``vae``, ...), sorted; [] for any other directory."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        return []
    return sorted(p.name for p in path.iterdir()
                  if p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors")))


def pipeline_hint(path: str | os.PathLike[str], what: str) -> str:
    """`` (a diffusers pipeline: ...)`` naming the component to pass instead, or "" when ``path`` is not a pipeline
    root. ``what`` says what to do with it (``quantize``, ``load``)."""
    parts = pipeline_components(path)
    if not parts:
        return ""
    pick = "transformer" if "transformer" in parts else parts[0]
    return (f" (a diffusers pipeline: its models are in sub-directories; {what} one of them, e.g. "
            f"{str(Path(path) / pick)!r}; found {parts})")


def _pickle_hint(path: Path) -> str:
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    return f" (found {pickles}: pickle checkpoints are not loaded; convert them to safetensors)" if pickles else ""


def _single_file_of(path: Path) -> Path | None:
    """The directory's one :data:`SINGLE_FILE_NAMES` file, None without one; both are a CheckpointError."""
    singles = [path / n for n in SINGLE_FILE_NAMES if (path / n).is_file()]
    if len(singles) > 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds both {' and '.join(p.name for p in singles)} and no index "
            f"({_INDEX_NAMES}), so which file is the checkpoint cannot be told; nothing was loaded. Remove the one that "
            "does not belong, load the file itself (its path instead of the directory's), or write an index naming the "
            "files to read"
        )
    return singles[0] if singles else None


def _read_alone(path: Path, single: Path, files: list[Path]) -> list[Path]:
    """``[single]``, warning about the other files beside it (not read), refusing one that repeats its tensors."""
    others = [f for f in files if f != single]
    _check_no_repeated_tensors(path, files, None, read=single)
    if others:
        warn_at_caller(
            f"checkpoint {str(path)!r}: read {single.name} only; {len(others)} other *.safetensors file(s) beside "
            f"it were not read: {names([f.name for f in others])} (without an index, {' or '.join(SINGLE_FILE_NAMES)} "
            "is the checkpoint; write an index naming the files to read if they belong to it)",
            CheckpointWarning,
        )
    return [single]


def _read_together(path: Path, files: list[Path]) -> list[Path]:
    """Every file of a directory with no index and no single file (sharded files whose index was lost)."""
    _check_no_repeated_tensors(path, files, None)
    if len(files) > 1:
        warn_at_caller(
            f"checkpoint {str(path)!r} has no index ({_INDEX_NAMES}) and no {' or '.join(SINGLE_FILE_NAMES)}: its "
            f"{len(files)} *.safetensors files are read together as one checkpoint: {names([f.name for f in files])}; "
            "write an index naming the files to read if some do not belong to it",
            CheckpointWarning,
        )
    return files


def _check_no_repeated_tensors(path: Path, files: list[Path], weight_map: dict | None, read: Path | None = None,
                               holders: dict[str, list[Path]] | None = None) -> None:
    """A CheckpointError when a tensor name is in more than one of ``files`` (reads the headers only, unless given
    ``holders``). With ``read`` (the one file read from a directory without an index), only names that file shares
    with another count."""
    if len(files) < 2:
        return
    holders = _holders(files) if holders is None else holders
    by_files: dict[tuple[Path, ...], list[str]] = {}
    for name, where in holders.items():
        if len(where) > 1 and (read is None or read in where):
            by_files.setdefault(tuple(where), []).append(name)
    if not by_files:
        return
    lines = []
    for where, tensors in sorted(by_files.items()):
        listed = names(sorted(tensors), lambda n: repr(n) + (f" (the index names {weight_map[n]})"
                                                            if weight_map and n in weight_map else ""))
        lines.append(f"{len(tensors)} tensor(s) in each of {', '.join(f.name for f in where)}: {listed}")
    if weight_map is not None:
        fix = ("the index assigns each tensor to one file, so the files it names must not repeat tensors: fix the files "
               "or the index")
    elif read is not None:
        fix = (f"without an index ({_INDEX_NAMES}) only {read.name} is read, but another *.safetensors file beside it "
               "repeats its tensors, so which copy is current cannot be told: remove the stale file(s), or write an "
               "index naming the files to read")
    else:
        fix = (f"without an index ({_INDEX_NAMES}) or a {' or '.join(SINGLE_FILE_NAMES)}, every *.safetensors file in "
               "the directory is read: remove the stale file(s), or write an index naming the files to read")
    raise CheckpointError(
        f"checkpoint {str(path)!r} holds the same tensor in more than one file, and the file read last would win "
        f"silently; nothing was loaded ({fix}):\n  " + "\n  ".join(lines)
    )


def lazy_slice(handle: safe_open, name: str, shape_only: bool = False) -> LazyTensor:
    """A LazyTensor over tensor ``name`` of an open safetensors file (``handle``, from :func:`open_safetensors`;
    ``shape_only``: reads nothing, ever)."""
    sl = handle.get_slice(name)
    shape = tuple(sl.get_shape())
    stored = sl.get_dtype()
    dtype = SAFETENSORS_DTYPES.get(stored)
    if dtype is None:
        raise CheckpointError(f"checkpoint tensor {name!r} is stored as safetensors dtype {stored!r}, which has no torch "
                              f"dtype here, so it cannot be loaded; the dtypes read are {', '.join(SAFETENSORS_DTYPES)}")
    source = _MetaSource(dtype) if shape_only else sl
    return LazyTensor(source, shape, name, dtype)


class _MetaSource:
    """Stands in for a safetensors slice in the rehearsal: indexing yields a meta tensor of that shape."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype or torch.float32

    def __getitem__(self, index) -> torch.Tensor:
        if index is Ellipsis:
            return torch.empty((), dtype=self.dtype, device="meta")
        return torch.empty(tuple(s.stop - s.start for s in index), dtype=self.dtype, device="meta")


def read_tensor(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """One tensor from a checkpoint (for tools and tests)."""
    for f in checkpoint_files(path):
        with open_safetensors(f) as handle:
            if name in handle.keys():
                return materialize(lazy_slice(handle, name))
    raise CheckpointError(f"tensor {name!r} is not in checkpoint {str(path)!r}")
