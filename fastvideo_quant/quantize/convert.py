"""``quantize_checkpoint``: stream a checkpoint through a method's ``quantize_weight`` into a new directory.

The conversion streams: one source tensor is read at a time and output shards are
bounded in size, so a checkpoint larger than memory can be converted; the output is
written to a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fastvideo_quant.checkpoint_writer import (
    DEFAULT_BASE_NAME,
    DEFAULT_MAX_SHARD_BYTES,
    DIFFUSERS_BASE_NAME,
    ShardWriter,
    atomic_directory,
    oversized_note,
    resolve_destination,
    write_text,
)
from fastvideo_quant.errors import CheckpointError, ConfigError, FastVideoQuantError, QuantizeError
from fastvideo_quant.loader import open_safetensors
from fastvideo_quant.loader.files import pipeline_hint
from fastvideo_quant.processing import names
from fastvideo_quant.quantization.base import QuantizationConfig
from fastvideo_quant.quantization.selection import (
    SECTION_KEYS,
    _method_file_declarations,  # the method files alone: config.json's sections are checked from the dict read
    quant_section,
)
from fastvideo_quant.quantize.calibration import Calibration, check_calibration_given, check_calibration_read
from fastvideo_quant.quantize.contract import check_quantizing_config
from fastvideo_quant.quantize.device import check_device
from fastvideo_quant.quantize.finite import check_finite_weight
from fastvideo_quant.quantize.options import build_config, builds_unquantized, check_options
from fastvideo_quant.quantize.plan import (
    PlannedTensor,
    SelectionRule,
    check_float_source,
    check_fused_groups,
    check_patterns,
    check_planned_some,
    check_skip_shadowing,
    check_weight_shapes,
    default_rule_notes,
    merged_packed_mapping,
    plan_tensors,
    unconverted_modules,
)
from fastvideo_quant.quantize.section_keys import observer_notes
from fastvideo_quant.quantize.targets import (
    ConfigTargets,
    check_entries,
    check_fused_schemes,
    targeted_left_notes,
    unmatched_ignore_notes,
)

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
#: Weight files of other frameworks and runtimes (Flax, TensorFlow/Keras, ONNX and its external data — also named
#: ``*.onnx.data``, matched by name —, GGUF/GGML,
#: TensorFlow Lite, PaddlePaddle, rust-bert): full-precision copies of the weights. Copied into the output they would
#: sit beside the quantized safetensors, and a loader asked for that framework (``from_flax``, ``from_tf``, an ONNX or
#: llama.cpp runtime) would load them, unquantized, instead.
_OTHER_FORMAT_SUFFIXES = {".msgpack", ".h5", ".keras", ".onnx", ".onnx_data", ".gguf", ".ggml", ".tflite",
                          ".pdparams", ".ot"}

Progress = Callable[[int, int, str], None]


@dataclasses.dataclass
class QuantizeReport:
    """What ``quantize_checkpoint`` wrote, for the CLI summary and for tests."""

    dst: Path
    method: str
    quantization_config: dict[str, Any]
    tensors_in: int
    tensors_quantized: int
    bytes_in: int
    bytes_out: int
    quantized_bytes_in: int
    quantized_bytes_out: int
    files: list[Path]
    modules_to_not_convert: list[str]
    notes: list[str]
    #: Files and folders copied unchanged from the source (folders with a trailing ``/``).
    copied: list[str] = dataclasses.field(default_factory=list)
    #: Where the checkpoint was written: ``dst`` with symbolic links resolved.
    written_to: Path | None = None

    def summary(self) -> str:
        """The report as lines of text (``fvq quantize`` prints it): where the checkpoint was written (and the path
        that resolves to, when ``dst`` goes through a symbolic link), the method, how many tensors it quantized, the
        size of all tensors and of the quantized weights before and after (MiB and ratio), the files written; then,
        where there are any, the files copied from the source, the modules left unquantized (long lists shortened)
        and the notes."""

        def mib(n: int) -> str:
            return f"{n / 2**20:,.1f} MiB"

        where = str(self.dst)
        if self.written_to is not None and self.written_to != self.dst.absolute():
            where += f" (a link to {self.written_to})"
        lines = [
            f"wrote {where} ({self.method}): {self.tensors_quantized} of {self.tensors_in} tensors quantized",
            f"  all tensors:       {mib(self.bytes_in)} -> {mib(self.bytes_out)} "
            f"({self.bytes_out / max(self.bytes_in, 1):.3f}x)",
            f"  quantized weights: {mib(self.quantized_bytes_in)} -> {mib(self.quantized_bytes_out)} "
            f"({self.quantized_bytes_out / max(self.quantized_bytes_in, 1):.3f}x)",
            f"  files: {', '.join(p.name for p in self.files)}",
        ]
        if self.copied:
            lines.append(f"  copied from the source: {names(self.copied, show=str, limit=12)}")
        if self.modules_to_not_convert:
            lines.append(f"  left unquantized: {names(self.modules_to_not_convert, show=str, limit=8)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def quantize_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    method: str,
    *,
    options: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
    include: Sequence[str] = (),
    calibration: str | os.PathLike[str] | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    packed_modules_mapping: dict[str, Sequence[str]] | None = None,
) -> QuantizeReport:
    """Write ``dst``: ``src`` with its linear weights quantized by ``method`` (see the module docstring).

    Two problems are refused before anything is quantized or written, each in one QuantizeError listing every
    module at fault: weights whose shape the method cannot quantize
    (:func:`~fastvideo_quant.quantize.plan.check_weight_shapes`), and a skip list that would make a reader skip a
    quantized module (:func:`~fastvideo_quant.quantize.plan.check_skip_shadowing`). So is a plan that quantizes no
    tensor (:func:`~fastvideo_quant.quantize.plan.check_planned_some`), and a config it cannot use: a
    ``quantize_weight`` that cannot take the call ``quantize_weight(weight, prefix=..., activations=...)``, or an
    ``__init__`` that skips ``super().__init__()`` (:func:`~fastvideo_quant.quantize.contract.check_quantizing_config`).
    A weight's values are checked when it is read,
    for every method, before the method sees them: NaN/inf is a QuantizeError naming the tensor
    (:mod:`~fastvideo_quant.quantize.finite`); the output directory is then removed, as on any error.

    :param options: the method's config keys (``from_config``), e.g. ``{"group_size": 128}``; a key the config
        does not read, a value its ``to_dict`` overrides, or a key it declares load-time only
        (``load_time_keys``, e.g. AWQ's ``fp8_compute``) is a ConfigError (:func:`check_options`).
    :param skip: module patterns left unquantized; one matching no module of ``src`` is a QuantizeError
        (so is an ``include`` pattern).
    :param calibration: a safetensors file of per-module input activations, passed as ``activations=``; a
        QuantizeError, before anything is read, for a config whose ``uses_calibration()`` is False; and None is a
        QuantizeError, before any tensor is read, for one that cannot quantize without activations
        (:func:`~fastvideo_quant.quantize.calibration.check_calibration_given`: fp8 with static activations).
    :param force: replace a non-empty ``dst``.
    :param device: where ``quantize_weight`` runs (e.g. ``"cuda"`` for AWQ's search on large layers);
        tensors are read to and written from CPU memory either way. One not visible here is a ConfigError.
    :param progress: called as ``progress(done, total, tensor_name)`` after each tensor.
    :param packed_modules_mapping: modules the model's loader fuses besides the built-in q/k/v_proj → qkv_proj and
        gate/up_proj → gate_up_proj, e.g. ``{"to_qkv": ["to_q", "to_k", "to_v"]}`` (``fvq quantize --fuse``): a
        pattern may name the fused module, skipping only some of its parts is refused, calibration activations keyed
        by its name serve its parts, and the skip list gives its name. A malformed entry is a ConfigError
        (:func:`~fastvideo_quant.quantize.plan.merged_packed_mapping`).
    """
    if progress is not None and not callable(progress):  # (False for "no bar" failed after the first tensor)
        raise TypeError(f"quantize_checkpoint: progress must be None or a callable progress(done, total, tensor_name), "
                        f"found {type(progress).__name__} {progress!r}")
    src, dst = Path(src), Path(dst)
    run_device = check_device(device)
    mapping = merged_packed_mapping(packed_modules_mapping)
    # A skip list given in the method's own key (--option ignored_layers=[...]) joins --skip.
    checked = check_options(method, dict(options or {}))
    check_quantizing_config(method, checked)
    # A compressed-tensors config's targets and ignore list choose the modules (its ignore entries are full names and
    # re: patterns, not --skip patterns). Its groups need not target a layer named "probe", so that question is left
    # to build_config's round trip, which asks about every quantized module.
    targets = ConfigTargets.of_section(options, mapping)
    if targets is None and builds_unquantized(checked, "probe"):
        raise QuantizeError(
            f"method {method!r} builds unquantized layers (its quantize_weight would write the float weights "
            "unchanged, under a quantization_config other tools do not know): nothing to quantize. Copy the "
            "checkpoint as it is, or pick a quantizing method (fvq plugins lists them)"
        )
    if calibration is not None:
        check_calibration_read(method, checked, calibration)
    option_skips = checked.modules_to_not_convert if targets is None else []
    hf_config, notes = _read_source_config(src)
    _check_disjoint(src, dst)
    _check_inputs_outside(dst, src, calibration)
    rule = SelectionRule(tuple(dict.fromkeys([*skip, *option_skips])), tuple(include), packed_modules_mapping=mapping,
                         targets=targets)
    plan = plan_tensors(src, rule, hf_config)  # table sizes from the config.json read above, not read again
    check_float_source(plan, src)
    # (ignore entries naming no module, lm_head on a DiT: kept in the ignore written, a note in the summary)
    unmatched = check_entries(plan, targets, src) if targets is not None else []
    # (the entries written as given beside the full names: those, and every re: pattern, matched or not)
    kept = [*unmatched, *(e for e in targets.ignore if e.startswith("re:"))] if targets is not None else []
    check_patterns(plan, skip, "--skip", src, mapping)
    listed = [k for k, v in (options or {}).items() if isinstance(v, (list, tuple))]
    check_patterns(plan, [p for p in option_skips if p not in skip],
                   f"--option {listed[0]}" if len(listed) == 1 else "the skip list given with --option", src, mapping)
    check_patterns(plan, include, "--include", src, mapping)
    check_fused_groups(plan, mapping)
    if targets is not None:
        check_fused_schemes(plan, targets)
    check_planned_some(plan, method, src)
    notes += default_rule_notes(plan) + (targeted_left_notes(plan, targets) if targets is not None else [])
    notes += unmatched_ignore_notes(unmatched) + (observer_notes(options) if targets is not None else [])
    quantized = [t.module for t in plan if t.quantize]
    not_converted = unconverted_modules(plan, mapping)
    config, section = build_config(method, options or {}, not_converted, quantized,
                                   check_section=lambda written, reader: _refuse_in_planning(
                                       plan, written, not_converted, reader, method, src, mapping),
                                   kept_entries=kept)
    read_files = {t.file for t in plan}
    base_name = _weight_base_name(src, read_files)
    if calibration is None:
        check_calibration_given(method, config, dict(options or {}))
    with contextlib.ExitStack() as stack:
        calib = Calibration(Path(calibration), stack, without=_without_calibration(method, config), mapping=mapping) \
            if calibration is not None else None
        if calib is not None:
            calib.check(quantized, (t.name.rpartition(".")[0] or t.name for t in plan))
            notes += calib.notes
        with atomic_directory(dst, force) as tmp:
            writer = ShardWriter(tmp, max_shard_bytes, base_name)
            q_out = _convert(plan, config, writer, calib, stack, progress, method, run_device, mapping)
            files = writer.close()
            notes += [n for n in [oversized_note(writer.oversized, max_shard_bytes)] if n]
            copied, copy_notes = _copy_extras(src, tmp, read_files)
            notes += copy_notes
            write_text(tmp / "config.json", json.dumps({**hf_config, "quantization_config": section}, indent=2) + "\n")
    return QuantizeReport(
        dst=dst, method=method, quantization_config=section, tensors_in=len(plan), tensors_quantized=len(quantized),
        bytes_in=sum(t.nbytes for t in plan), bytes_out=writer.total_bytes,
        quantized_bytes_in=sum(t.nbytes for t in plan if t.quantize), quantized_bytes_out=q_out,
        files=[dst / p.name for p in files] + [dst / "config.json"], modules_to_not_convert=not_converted, notes=notes,
        copied=copied, written_to=resolve_destination(dst),
    )


def _without_calibration(method: str, config: QuantizationConfig) -> str:
    """How to run ``method`` without calibration activations, for advice: dropping ``--calibration`` unless the config
    cannot quantize without them (fp8's static activations: its dynamic ones need none)."""
    if config.requires_calibration() is not True:
        return ""
    return f"choose options under which method {method!r} needs no activations (fp8: --option activation_scheme=dynamic)"


def _check_disjoint(src: Path, dst: Path) -> None:
    """Refuse a destination that is, contains or lies inside the source: ``--force`` replaces all of ``dst``."""
    s, d = src.absolute().resolve(), dst.absolute().resolve()
    if d == s:
        raise QuantizeError(f"destination {str(dst)!r} is the source checkpoint; write to another directory")
    if d in s.parents:
        raise QuantizeError(
            f"destination {str(dst)!r} contains the source checkpoint {str(src)!r}; replacing it would delete the "
            "source. Write to a directory outside it, e.g. a sibling of the source"
        )
    if s in d.parents:
        raise QuantizeError(
            f"destination {str(dst)!r} is inside the source checkpoint {str(src)!r}; the output would land in (and "
            "be copied with) the source. Write to a directory outside it, e.g. a sibling of the source"
        )


def _check_inputs_outside(dst: Path, src: Path, calibration: str | os.PathLike[str] | None) -> None:
    """Refuse a destination that is or contains a file the command reads besides the source directory itself
    (:func:`_check_disjoint`): the calibration file, or a file or folder a link in the source points to (a Hugging Face
    cache snapshot links to its blobs). ``--force`` replaces all of ``dst``, so the input would be deleted, silently,
    after it was read."""
    d = dst.absolute().resolve()
    inputs: list[tuple[str, Path]] = []
    if calibration is not None:
        inputs.append((f"the calibration file {str(calibration)!r}", Path(calibration)))
    for root, dirs, files in os.walk(src):  # links are not followed, only checked
        for name in [*dirs, *files]:
            entry = Path(root) / name
            if entry.is_symlink():
                inputs.append((f"{str(entry.resolve())!r}, which the source's {str(entry)!r} links to", entry))
    for what, path in inputs:
        r = path.absolute().resolve()
        if r == d or d in r.parents:
            verb = "is" if r == d else "contains"
            raise QuantizeError(
                f"destination {str(dst)!r} {verb} {what}, an input of this command; replacing it would delete that "
                "input. Write to a directory outside it, or move the input out of the destination first"
            )


def _convert(plan: list[PlannedTensor], config: QuantizationConfig, writer: ShardWriter,
             calib: Calibration | None, stack: contextlib.ExitStack, progress: Progress | None, method: str,
             device: torch.device, mapping: dict[str, list[str]] | None = None) -> int:
    """Stream every tensor into ``writer``; returns the bytes written for quantized tensors."""
    handles: dict[Path, Any] = {}
    quantized_bytes = 0
    for i, t in enumerate(plan):
        if t.file not in handles:
            handles[t.file] = stack.enter_context(open_safetensors(t.file, pread=True))  # RSS = what is held
        tensor = handles[t.file].get_tensor(t.name)
        if t.quantize:
            before = writer.total_bytes
            for suffix, out in _quantize_one(config, tensor.to(device), t, calib, method, mapping).items():
                writer.add(f"{t.module}.{suffix}", out)
            quantized_bytes += writer.total_bytes - before
        else:
            writer.add(t.name, tensor)
        del tensor
        if progress is not None:
            progress(i + 1, len(plan), t.name)
    return quantized_bytes


def _quantize_one(config: QuantizationConfig, weight: torch.Tensor, t: PlannedTensor,
                  calib: Calibration | None, method: str,
                  mapping: dict[str, list[str]] | None = None) -> dict[str, torch.Tensor]:
    check_finite_weight(weight, t.name, t.file.name, method,  # every method's scales would be NaN/inf
                        mapping or getattr(config, "packed_modules_mapping", None))
    activations = calib.get(t.module, weight.shape[1]).to(weight.device) if calib is not None else None
    try:
        out = config.quantize_weight(weight, prefix=t.module, activations=activations)
    except Exception as exc:  # the method's own errors too: they may not name the checkpoint tensor
        what = "" if isinstance(exc, FastVideoQuantError) else f"{type(exc).__name__}: "
        # (a ConfigError is the config's: every module would fail alike, so skipping this one is no fix)
        fix = "" if isinstance(exc, ConfigError) else f". Pass --skip {t.module} to leave it unquantized"
        raise QuantizeError(
            f"method {method!r} could not quantize tensor {t.name!r} (shape {list(t.shape)}, {t.dtype}): "
            f"{what}{exc}{fix}"
        ) from exc
    if not isinstance(out, dict) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise QuantizeError(
            f"{type(config).__name__}.quantize_weight returned {type(out).__name__} for {t.name!r}; "
            "expected a non-empty dict {suffix: tensor}"
        )
    return out


def _read_source_config(src: Path) -> tuple[dict[str, Any], list[str]]:
    """The source's config.json (refused when it declares a quantization) and notes for the summary.

    An empty section (``"quantization_config": {}``) names no method, so declares nothing: it is dropped (the
    output's ``quantization_config`` replaces it) with a note.
    """
    path = src / "config.json"
    if not src.exists():
        raise CheckpointError(f"source checkpoint {str(src)!r} does not exist; give the checkpoint's directory "
                              "(config.json plus *.safetensors)")
    if not src.is_dir():
        hint = (f": give the directory that holds it ({str(src.parent)!r}), with its config.json"
                if src.suffix == ".safetensors" and src.is_file() else "")
        raise CheckpointError(f"source checkpoint {str(src)!r} is not a directory{hint}")
    if not path.is_file():
        # (nothing of the source's config.json is needed but its absence of a quantization_config: DST's is the
        # source's with the method's quantization_config added)
        pipeline = pipeline_hint(src, "quantize")
        raise CheckpointError(
            f"source checkpoint {str(src)!r} has no config.json; a Hugging Face-style directory (config.json plus "
            "*.safetensors) is expected" + (pipeline or f". For safetensors without one, a config.json holding {{}} "
                                            f"is enough ({str(path)!r}; the output's gets the quantization_config)"))
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    notes = []
    empty = [key for key in SECTION_KEYS if isinstance(config, dict) and config.get(key) == {}]
    if empty:
        config = {k: v for k, v in config.items() if k not in empty}
        keys = " and ".join(repr(k) for k in empty)
        notes.append(f"the source's config.json has an empty {keys} ({{}}), which names no method: dropped, and "
                     "the checkpoint read as unquantized")
    try:
        section = quant_section(config)  # None when absent or null (null means not quantized)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if section is not None:
        key = "quantization_config" if config.get("quantization_config") is not None else "compression_config"
        named = section.get("quant_method") or section.get("format") or "naming no quant_method"
        raise QuantizeError(f"{path} already has a {key!r} ({named}); quantize the original float checkpoint instead")
    # A method's own file (e.g. AutoAWQ's quant_config.json); config.json's sections were checked above, from the
    # dict read once (checkpoint_declarations would read the file again and find none).
    declared = _method_file_declarations(src, None)
    if declared:
        listed = "; ".join(f"{d.source} says {d.method!r}" for d in declared)
        raise QuantizeError(f"source checkpoint {str(src)!r} is already quantized ({listed}); quantize the original "
                            "float checkpoint instead")
    return config, notes


def _refuse_in_planning(plan, section: dict, not_converted: list[str], config: QuantizationConfig, method: str,
                        src: Path, mapping: dict[str, list[str]] | None = None) -> None:
    """The planning-stage refusals (a skip list shadowing quantized modules, weights the method cannot quantize),
    both reported in one error when both apply, before anything is quantized or written."""
    found = []
    for check in (lambda: check_skip_shadowing(plan, section, not_converted, config, mapping),
                  lambda: check_weight_shapes(plan, config, method, src, mapping)):
        try:
            check()
        except QuantizeError as exc:
            found.append(str(exc))
    if found:
        raise QuantizeError(" Also: ".join(found))


def _weight_base_name(src: Path, read_files: set[Path]) -> str:
    """``diffusion_pytorch_model`` for a diffusers model folder (its index, or all the weight files read, carry that
    name; diffusers' ``from_pretrained`` looks for no other), else ``model`` (transformers' ``save_pretrained``)."""
    if (src / f"{DIFFUSERS_BASE_NAME}.safetensors.index.json").is_file():
        return DIFFUSERS_BASE_NAME
    pattern = re.compile(rf"{DIFFUSERS_BASE_NAME}(-\d+-of-\d+)?\.safetensors")
    if read_files and all(pattern.fullmatch(f.name) for f in read_files):
        return DIFFUSERS_BASE_NAME
    return DEFAULT_BASE_NAME


def _copy_extras(src: Path, dst: Path, read_files: set[Path]) -> tuple[list[str], list[str]]:
    """Copy everything that is not a weight file (safetensors, pickle or another framework's format), an index of
    one, or config.json; returns what was copied (folders with a trailing ``/``) and notes on what was left out. Only
    the top level is sorted so: a folder (``scheduler/``, a pipeline's ``text_encoder/``) is copied whole.

    Contents only: files get the permissions of any file made in ``dst`` (the umask), not the source's (a 0600
    tokenizer.json would be unreadable to a serving user); links are followed, as in a Hugging Face cache snapshot.
    """
    copied: list[str] = []
    weights: list[tuple[str, int]] = []  # (weight files in other formats inside copied folders, with their sizes)
    left: dict[str, list[str]] = {why: [] for why in _NOT_COPIED}
    read_names = {f.name for f in read_files}
    for entry in sorted(src.iterdir()):
        why = _not_copied(entry, read_names)
        if why:
            left[why].append(entry.name)
        elif why is None and entry.is_dir():
            weights += _copy_tree_contents(entry, dst / entry.name, entry.name)
            copied.append(entry.name + "/")
        elif why is None:
            shutil.copyfile(entry, dst / entry.name)
            copied.append(entry.name)
    notes = [f"not copied: {', '.join(found)} ({_NOT_COPIED[why]})" for why, found in left.items() if found]
    if weights:
        total = sum(size for _, size in weights) / 2**20
        listed = ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in weights[:8])
        more = f" and {len(weights) - 8} more" if len(weights) > 8 else ""
        notes.append(f"copied whole, with {len(weights)} weight file(s) in another format, {total:.1f} MiB: {listed}"
                     f"{more} (a folder may be another component's weights, so its files are kept; if one is a "
                     "full-precision copy of the weights quantized here, such as Meta's original/, remove it from "
                     "the output)")
    return copied, notes


#: Why a top-level entry of the source is not copied, by :func:`_not_copied`'s answer, in the summary's order.
_NOT_COPIED = {
    "pickle": "pickle files; only safetensors are read and written",
    "other format": "weights in another framework's format: full-precision copies that a loader for that format "
                    "would pick instead of the quantized safetensors",
    "index": "the index of weights in another format, which are not copied",
    "unread": "safetensors files that are not part of the checkpoint read",
    "hidden": "hidden files and folders",
}


def _not_copied(entry: Path, read_names: set[str]) -> str | None:
    """Why ``entry`` (top level of the source) is not copied: a key of :data:`_NOT_COPIED`, ``""`` for a file the
    output gets anew (config.json, the safetensors read and their index), None to copy it."""
    name = entry.name
    if name.startswith("."):
        return "hidden"
    if name == "config.json" or name.endswith(".safetensors.index.json"):
        return ""
    if name.endswith(".safetensors"):
        return "" if name in read_names else "unread"
    if name.endswith(".index.json") and Path(name[: -len(".index.json")]).suffix in _PICKLE_SUFFIXES | _OTHER_FORMAT_SUFFIXES:
        return "index"  # e.g. pytorch_model.bin.index.json: the files it names are not copied
    if entry.is_file() and entry.suffix in _PICKLE_SUFFIXES:
        return "pickle"
    if entry.is_file() and (entry.suffix in _OTHER_FORMAT_SUFFIXES or name.endswith(".onnx.data")):
        return "other format"
    return None


def _copy_tree_contents(src: Path, dst: Path, shown: str) -> list[tuple[str, int]]:
    """Copy a folder's files without their modes (not ``shutil.copytree``: it copies the folders' modes too); returns
    the weight files in another format it copied (pickle, another framework's), as ``(shown/name, bytes)``."""
    dst.mkdir()  # mode 0o777 & ~umask
    weights: list[tuple[str, int]] = []
    for entry in sorted(src.iterdir()):
        if entry.is_dir():
            weights += _copy_tree_contents(entry, dst / entry.name, f"{shown}/{entry.name}")
        else:
            shutil.copyfile(entry, dst / entry.name)
            if entry.suffix in _PICKLE_SUFFIXES | _OTHER_FORMAT_SUFFIXES or entry.name.endswith(".onnx.data"):
                weights.append((f"{shown}/{entry.name}", entry.stat().st_size))
    return weights
