"""Quantize a Hugging Face-style safetensors checkpoint with any registered method (``fvq quantize``).

Only the plugin contract is used: ``get_quantization_config(name).from_config(options)``,
its ``quantize_weight`` (the method's on-disk tensors) and ``to_dict`` (the
checkpoint's ``quantization_config``), so a new plugin works here unchanged.

Which tensors are quantized (:class:`SelectionRule`), in order:

1. only ``*.weight`` tensors that are 2-D and floating point (linear weights; convolutions,
   biases and integer tensors are copied unchanged);
2. a module matching a ``skip`` pattern is not quantized (patterns match like vLLM's
   ``modules_to_not_convert``: whole dotted components, ``"attn"`` matches ``blocks.0.attn.q_proj``);
3. a module matching an ``include`` pattern is quantized;
4. otherwise a module with a component containing ``embed`` or ``norm`` is not quantized
   (embeddings and norms; in video DiTs also the small timestep/patch embedders);
5. everything else is quantized.

Unquantized 2-D weights and the skip patterns go into the config's
``modules_to_not_convert``, so loaders build those layers unquantized.

The conversion streams: one source tensor is read at a time and output shards are
bounded in size, so a checkpoint larger than memory can be converted; the output is
written to a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fastvideo_quant.checkpoint_writer import DEFAULT_MAX_SHARD_BYTES, ShardWriter, atomic_directory, write_text
from fastvideo_quant.errors import CheckpointError, ConfigError, FastVideoQuantError
from fastvideo_quant.layers.linear import ReplicatedLinear, UnquantizedLinearMethod
from fastvideo_quant.loader import DEFAULT_PACKED_MODULES_MAPPING, SAFETENSORS_DTYPES, checkpoint_files
from fastvideo_quant.plugins.manager import get_registry
from fastvideo_quant.quantization.base import QuantizationConfig, matches_module_patterns
from fastvideo_quant.quantization.selection import (
    checkpoint_declarations,
    get_quantization_config,
    method_for_quant_section,
    quant_section,
)

#: Components matching this are left unquantized by default (rule 4 above).
DEFAULT_EXCLUDE = re.compile(r"embed|norm", re.IGNORECASE)
_FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
#: Device types whose tensors hold no data: nothing quantized there could be written out.
_NO_DATA_DEVICES = {"meta"}

Progress = Callable[[int, int, str], None]


def fused_pattern_parts(pattern: str, mapping: dict[str, list[str]] | None = None) -> list[str]:
    """The checkpoint-module patterns a pattern naming a fused module stands for (``[]`` when it names none).

    The loader fuses checkpoint modules into one layer (``DEFAULT_PACKED_MODULES_MAPPING``: q/k/v_proj →
    ``qkv_proj``, gate/up_proj → ``gate_up_proj``), so the fused name is what a model shows and what
    ``modules_to_not_convert`` may hold, while the checkpoint has only the parts:
    ``"blocks.0.attn.qkv_proj"`` → ``["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"]``.
    """
    mapping = mapping or DEFAULT_PACKED_MODULES_MAPPING
    components = pattern.strip(".").split(".")
    if not any(c in mapping for c in components):
        return []
    variants = [components]
    for i, component in enumerate(components):
        if component in mapping:
            variants = [[*v[:i], part, *v[i + 1:]] for v in variants for part in mapping[component]]
    return [".".join(v) for v in variants]


def pattern_matches(module: str, pattern: str) -> bool:
    """Whether ``pattern`` matches ``module`` as whole dotted components, directly or as a fused module's part."""
    return matches_module_patterns(module, [pattern, *fused_pattern_parts(pattern)])


class QuantizeError(FastVideoQuantError):
    """A checkpoint that cannot be quantized as asked (names the tensor, the method and the fix)."""


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """Decides which checkpoint tensors are quantized; see the module docstring for the rule."""

    skip: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def decide(self, name: str, shape: Sequence[int], dtype: torch.dtype | None) -> tuple[bool, str]:
        """``(quantize?, why)`` for one tensor."""
        if not name.endswith(".weight"):
            return False, "not a .weight tensor"
        if len(shape) != 2:
            return False, f"{len(shape)}-D, not a linear weight"
        if dtype not in _FLOAT_DTYPES:
            return False, f"dtype {dtype} is not floating point"
        module = name[: -len(".weight")]
        skip = [p for p in self.skip if pattern_matches(module, p)]
        include = [p for p in self.include if pattern_matches(module, p)]
        if skip and include:
            raise ConfigError(f"module {module!r} matches --skip {skip} and --include {include}; drop one of them")
        if skip:
            return False, f"--skip {skip[0]}"
        if include:
            return True, f"--include {include[0]}"
        if any(DEFAULT_EXCLUDE.search(part) for part in module.split(".")):
            return False, "embedding/norm by the default rule (--include to quantize it)"
        return True, "linear weight"


@dataclasses.dataclass
class PlannedTensor:
    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    quantize: bool
    why: str

    @property
    def module(self) -> str:
        return self.name[: -len(".weight")] if self.name.endswith(".weight") else self.name

    @property
    def nbytes(self) -> int:
        size = torch.empty((), dtype=self.dtype).element_size() if self.dtype is not None else 1
        return size * int(torch.Size(self.shape).numel())


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

    def summary(self) -> str:
        def mib(n: int) -> str:
            return f"{n / 2**20:,.1f} MiB"

        lines = [
            f"wrote {self.dst} ({self.method}): {self.tensors_quantized} of {self.tensors_in} tensors quantized",
            f"  all tensors:       {mib(self.bytes_in)} -> {mib(self.bytes_out)} "
            f"({self.bytes_out / max(self.bytes_in, 1):.3f}x)",
            f"  quantized weights: {mib(self.quantized_bytes_in)} -> {mib(self.quantized_bytes_out)} "
            f"({self.quantized_bytes_out / max(self.quantized_bytes_in, 1):.3f}x)",
            f"  files: {', '.join(p.name for p in self.files)}",
        ]
        if self.modules_to_not_convert:
            shown = self.modules_to_not_convert[:8]
            more = len(self.modules_to_not_convert) - len(shown)
            lines.append(f"  left unquantized: {', '.join(shown)}" + (f" (+{more} more)" if more > 0 else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_tensors(src: Path, rule: SelectionRule) -> list[PlannedTensor]:
    """Every tensor of the checkpoint with the rule's decision; reads headers only."""
    plan = []
    for file in checkpoint_files(src):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                sl = handle.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype())
                quantize, why = rule.decide(name, shape, dtype)
                plan.append(PlannedTensor(name, file, shape, dtype, quantize, why))
    return plan


def check_fused_groups(plan: Iterable[PlannedTensor], mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse quantizing some but not all parts of a module the loader fuses (q/k/v → qkv_proj, gate/up)."""
    mapping = mapping or DEFAULT_PACKED_MODULES_MAPPING
    part_of = {part: fused for fused, parts in mapping.items() for part in parts}
    groups: dict[tuple[str, str], dict[str, bool]] = {}
    for t in plan:
        if not t.name.endswith(".weight"):
            continue
        parent, _, leaf = t.module.rpartition(".")
        if leaf in part_of:
            groups.setdefault((parent, part_of[leaf]), {})[leaf] = t.quantize
    for (parent, fused), decisions in groups.items():
        if len(set(decisions.values())) > 1:
            whole = f"{parent}.{fused}" if parent else fused
            raise ConfigError(
                f"modules {sorted(decisions)} under {parent or '<root>'!r} are fused into {fused!r} when loaded, "
                f"but only {sorted(k for k, q in decisions.items() if q)} would be quantized; "
                f"skip or include all of them together (the fused name does: --skip {whole!r})"
            )


def unconverted_modules(plan: Iterable[PlannedTensor], rule: SelectionRule) -> list[str]:
    """``modules_to_not_convert``: the skip patterns plus every 2-D float weight's module left unquantized.

    A pattern naming a fused module (``blocks.0.attn.qkv_proj``) is followed by its parts' patterns:
    loaders (ours, vLLM's) skip a fused layer when all its checkpoint modules are listed.
    """
    names = [name for p in rule.skip for name in (p, *fused_pattern_parts(p))]
    for t in plan:
        if not t.quantize and t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in _FLOAT_DTYPES:
            if not any(pattern_matches(t.module, p) for p in rule.skip):
                names.append(t.module)
    return list(dict.fromkeys(names))


class _KeyTracker(dict):
    """A config dict that records which keys ``from_config`` asks for (present or not).

    A ``from_config`` that iterates or copies the whole dict is marked ``opaque``: which
    keys it uses cannot be told from the outside, so lookups after that are not recorded.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.asked: set[str] = set()
        self.opaque = False

    def _ask(self, key) -> None:
        if not self.opaque:  # once the whole dict is read (copied), a key looked up is no longer telling
            self.asked.add(key)

    def __getitem__(self, key):
        self._ask(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._ask(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._ask(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self._ask(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self._ask(key)
        return super().setdefault(key, default)

    def _whole(self):
        self.opaque = True
        return self

    def __iter__(self):
        return super(_KeyTracker, self._whole()).__iter__()

    def keys(self):
        return super(_KeyTracker, self._whole()).keys()

    def items(self):
        return super(_KeyTracker, self._whole()).items()

    def values(self):
        return super(_KeyTracker, self._whole()).values()

    def copy(self):
        return dict(super(_KeyTracker, self._whole()).items())


def describe_method(method: str) -> str:
    """``method 'fp8' of plugin 'fp8' (distribution 'fastvideo-quant')`` for error messages."""
    reg = get_registry().by_name.get(method)
    return reg.described if reg is not None else f"method {method!r}"


def _same_value(given: Any, written: Any) -> bool:
    """Whether an option's value and the one the config writes back mean the same (``"GEMM"`` is ``"gemm"``)."""
    if given in (None, [], ()) and written in (None, [], ()):
        return True
    if isinstance(given, str) and isinstance(written, str):
        return given.lower() == written.lower()
    if isinstance(given, (list, tuple)) and isinstance(written, (list, tuple)):
        return len(given) == len(written) and all(_same_value(a, b) for a, b in zip(given, written))
    return given == written


def quantizing_options(cls: type[QuantizationConfig], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the config's :attr:`~QuantizationConfig.quantized_checkpoint_keys` set: the dict the
    config that writes a checkpoint is built from."""
    return {**cls.quantized_checkpoint_keys, **options}


def check_options(method: str, options: dict[str, Any]) -> QuantizationConfig:
    """The method's config built from ``options``; ConfigError for a key it does not read or a value it overrides.

    Which keys a config accepts is what its ``from_config`` asks for: with ``{}`` (its keys and
    their defaults) and with ``options`` (keys read only in some modes). A key it never asks
    for, or an alias it does not read because another key was given, would be dropped
    silently; a key its ``to_dict()`` writes back with another value would be overridden.
    """
    cls = get_quantization_config(method)
    where = describe_method(method)
    if "quant_method" in options:
        raise ConfigError(
            f"option 'quant_method' ({options['quant_method']!r}) for {where}: the method is chosen by --method "
            f"(method=) and writes its own quant_method; drop the option"
        )
    for key, fixed in cls.quantized_checkpoint_keys.items():
        if key in options and not _same_value(options[key], fixed):
            raise ConfigError(
                f"option {key}={json.dumps(options[key])} for {where}: {key!r} says how a checkpoint's tensors are "
                f"stored, and the checkpoint fvq quantize writes has {key}={json.dumps(fixed)} (it holds what "
                f"{cls.__name__}.quantize_weight produces), so the option would be ignored. Drop it; it is a key for "
                "loading a checkpoint that is stored the other way"
            )
    defaults = _KeyTracker(dict(cls.quantized_checkpoint_keys))
    try:
        cls.from_config(defaults)
    except Exception:  # noqa: BLE001 - a config that needs keys: the keys it asked for before failing still count
        pass
    given = _KeyTracker(quantizing_options(cls, options))
    try:
        config = cls.from_config(given)
    except ConfigError as exc:
        if not options or type(exc) is not ConfigError:
            raise
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in options.items())
        raise ConfigError(f"option(s) {shown} for {where}: {exc}") from exc
    section = config.to_dict()
    # A from_config that copies its whole dict: a key counts as read when to_dict() writes it back.
    read = set(given.asked) | (set(section) if given.opaque else set())
    accepted = sorted((set(defaults.asked) | set(given.asked)) - {"quant_method"})
    for key in options:
        if key in read:
            continue
        if key in accepted:
            why = (f"not with the other options given ({sorted(options)}): it is an alias of another key given, "
                   "or read only in another mode")
        else:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.6)
            why = "it is not a key this config reads"
            why += f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(
            f"option {key}={json.dumps(options[key])}: {cls.__name__}.from_config of {where} does not read "
            f"{key!r}, so it would be ignored; {why}. Keys it reads: {', '.join(accepted)}"
        )
    for key, value in options.items():
        if key in section and not _same_value(value, section[key]):
            raise ConfigError(
                f"option {key}={json.dumps(value)}: {where} ignores this value; it writes {key}="
                f"{json.dumps(section[key])} into the quantization_config whatever the option says. Drop the "
                f"option (or use a method that writes {key}={json.dumps(value)})"
            )
    return config


def check_patterns(plan: Iterable[PlannedTensor], patterns: Sequence[str], flag: str, src: Path) -> None:
    """Refuse ``--skip``/``--include`` patterns that match no module of the checkpoint (a typo would do nothing)."""
    modules = list(dict.fromkeys(t.name.rpartition(".")[0] or t.name for t in plan))
    unmatched = [p for p in patterns if not any(pattern_matches(m, p) for m in modules)]
    if not unmatched:
        return
    # Suggest names as the model shows them: a fused module (qkv_proj), never one of its parts (q_proj),
    # which could not be skipped alone (check_fused_groups).
    part_of = {part: fused for fused, parts in DEFAULT_PACKED_MODULES_MAPPING.items() for part in parts}
    candidates: set[str] = set()
    for m in modules:
        parts = [part_of.get(c, c) for c in m.split(".")]
        candidates.update(parts)
        candidates.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    hints = []
    for p in unmatched:
        close = difflib.get_close_matches(p.strip("."), sorted(candidates), n=3, cutoff=0.7)
        hints.append(f"{p!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    linear = sorted({".".join(part_of.get(c, c) for c in t.module.split("."))
                     for t in plan if t.name.endswith(".weight") and len(t.shape) == 2})
    raise QuantizeError(
        f"{flag} pattern(s) {', '.join(hints)} match no module of checkpoint {str(src)!r}. Patterns match whole "
        f"dotted components of module names (e.g. 'attn' matches 'blocks.0.attn.o_proj', 'blocks.3' everything in "
        f"block 3; a fused name such as 'qkv_proj' matches the modules fused into it); its linear modules include "
        f"{linear[:6]}"
    )


def check_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """``device`` as a torch.device (None: CPU); ConfigError naming ``what`` when it cannot be used here."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{what} {str(device)!r} is not a device name ({exc}); use e.g. cpu, cuda or cuda:1") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = (f"torch {torch.__version__} is built with CUDA {torch.version.cuda}" if torch.version.cuda
                     else f"torch {torch.__version__} is built without CUDA")
            raise ConfigError(f"{what} {str(device)!r}: no CUDA device is visible ({built}); use {what} cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{what} {str(device)!r}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type in _NO_DATA_DEVICES:
        raise ConfigError(
            f"{what} {str(device)!r}: a {dev.type} tensor holds no data (shapes and dtypes only), so quantized "
            f"weights could not be written from it; use {what} cpu or cuda"
        )
    if dev.type != "cpu":
        try:  # quantize_weight runs there and its output is copied back to CPU memory to be written
            torch.zeros(1, device=dev).to("cpu")
        except Exception as exc:  # noqa: BLE001 - any backend's refusal, reported with the option's name
            raise ConfigError(
                f"{what} {str(device)!r} cannot be used here (torch {torch.__version__}: {type(exc).__name__}: "
                f"{_first_line(exc)}); use {what} cpu or cuda"
            ) from exc
    return dev


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of an exception: its first line, up to the first sentence's end, at most ``limit`` characters.

    Torch's dispatcher errors run to ~60 lines (every backend's kernel registrations); the first
    sentence says what failed ("Could not run 'aten::empty.memory_format' ... from the 'MPS' backend").
    """
    lines = str(exc).strip().splitlines()
    line = lines[0].strip() if lines else ""
    end = line.find(". ")
    if end > 0:
        line = line[:end]
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def build_config(method: str, options: dict[str, Any], not_converted: list[str],
                 quantized_modules: list[str]) -> tuple[QuantizationConfig, dict[str, Any]]:
    """The method's config from ``options`` and the ``quantization_config`` dict it writes, checked to round-trip."""
    cls = get_quantization_config(method)
    # The skip list goes in twice: under Hugging Face's generic key, for plugins whose
    # from_config reads it, and as the contract attribute, for plugins whose to_dict
    # writes it under their format's own key. The round trip below checks the result.
    config = cls.from_config({"modules_to_not_convert": list(not_converted), **quantizing_options(cls, options)})
    config.modules_to_not_convert = list(not_converted)
    section = config.to_dict()
    # What resolve_quant_config does on load, minus the availability check: quantizing
    # may work where the method's kernels cannot run (e.g. no bitsandbytes, no GPU).
    selected_name = method_for_quant_section(section, None)
    if selected_name != method:
        raise QuantizeError(
            f"{cls.__name__}.to_dict() wrote {section}, but reading it back selects method "
            f"{selected_name!r}; the plugin for {method!r} must write a quant_method that selects it"
        )
    selected = cls.from_config(section)
    lost = [m for m in not_converted if not _builds_unquantized(selected, m)]
    wrongly = [m for m in quantized_modules if selected.is_layer_skipped(m)]
    if lost or wrongly:
        raise QuantizeError(
            f"{cls.__name__}: quantization_config {section} does not round-trip modules_to_not_convert: "
            + (f"modules left unquantized that would load as quantized layers: {lost[:5]}; " if lost else "")
            + (f"quantized modules that would load as skipped: {wrongly[:5]}; " if wrongly else "")
            + "the plugin's to_dict()/from_config() must store modules_to_not_convert"
        )
    return config, section


def _builds_unquantized(config: QuantizationConfig, module: str) -> bool:
    """Whether a linear layer named ``module`` built with ``config`` gets the unquantized method."""
    with torch.device("meta"):
        probe = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32, prefix=module)
    return isinstance(config.get_quant_method(probe, prefix=module), UnquantizedLinearMethod)


class _Calibration:
    """Per-module input activations from a safetensors file keyed by module name (``blocks.0.attn.q_proj``)."""

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        if not path.is_file():
            raise QuantizeError(f"calibration file {str(path)!r} does not exist")
        self.path = path
        self.handle = stack.enter_context(safe_open(str(path), framework="pt"))
        self.keys = set(self.handle.keys())

    def check(self, modules: list[str]) -> None:
        missing = [m for m in modules if m not in self.keys]
        if missing:
            raise QuantizeError(
                f"calibration file {self.path} has no activations for {len(missing)} quantized module(s), e.g. "
                f"{missing[:5]}; it has {sorted(self.keys)[:5]}... Key it by module name (the tensor name without "
                "'.weight'), holding [tokens, in_features] inputs, or --skip those modules"
            )

    def get(self, module: str) -> torch.Tensor:
        x = self.handle.get_tensor(module)
        return x.reshape(-1, x.shape[-1])


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
) -> QuantizeReport:
    """Write ``dst``: ``src`` with its linear weights quantized by ``method`` (see the module docstring).

    :param options: the method's config keys (``from_config``), e.g. ``{"group_size": 128}``; a key the config
        does not read, or a value its ``to_dict`` overrides, is a ConfigError (:func:`check_options`).
    :param skip: module patterns left unquantized; one matching no module of ``src`` is a QuantizeError
        (so is an ``include`` pattern).
    :param calibration: a safetensors file of per-module input activations, passed as ``activations=``.
    :param force: replace a non-empty ``dst``.
    :param device: where ``quantize_weight`` runs (e.g. ``"cuda"`` for AWQ's search on large layers);
        tensors are read to and written from CPU memory either way. One not visible here is a ConfigError.
    :param progress: called as ``progress(done, total, tensor_name)`` after each tensor.
    """
    src, dst = Path(src), Path(dst)
    run_device = check_device(device)
    # A skip list given in the method's own key (--option ignored_layers=[...]) joins --skip.
    option_skips = check_options(method, dict(options or {})).modules_to_not_convert
    hf_config = _read_source_config(src)
    _check_disjoint(src, dst)
    rule = SelectionRule(tuple(dict.fromkeys([*skip, *option_skips])), tuple(include))
    plan = plan_tensors(src, rule)
    check_patterns(plan, skip, "--skip", src)
    check_patterns(plan, [p for p in option_skips if p not in skip], "the skip list in --option (options=)", src)
    check_patterns(plan, include, "--include", src)
    check_fused_groups(plan)
    quantized = [t.module for t in plan if t.quantize]
    not_converted = unconverted_modules(plan, rule)
    config, section = build_config(method, options or {}, not_converted, quantized)
    notes: list[str] = []
    if not quantized:
        notes.append("no tensor matched the rule; the checkpoint is copied with a quantization_config only")
    with contextlib.ExitStack() as stack:
        calib = _Calibration(Path(calibration), stack) if calibration is not None else None
        if calib is not None:
            calib.check(quantized)
        with atomic_directory(dst, force) as tmp:
            writer = ShardWriter(tmp, max_shard_bytes)
            q_out = _convert(plan, config, writer, calib, stack, progress, method, run_device)
            files = writer.close()
            notes += _copy_extras(src, tmp)
            write_text(tmp / "config.json", json.dumps({**hf_config, "quantization_config": section}, indent=2) + "\n")
    return QuantizeReport(
        dst=dst, method=method, quantization_config=section, tensors_in=len(plan), tensors_quantized=len(quantized),
        bytes_in=sum(t.nbytes for t in plan), bytes_out=writer.total_bytes,
        quantized_bytes_in=sum(t.nbytes for t in plan if t.quantize), quantized_bytes_out=q_out,
        files=[dst / p.name for p in files] + [dst / "config.json"], modules_to_not_convert=not_converted, notes=notes,
    )


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


def _convert(plan: list[PlannedTensor], config: QuantizationConfig, writer: ShardWriter,
             calib: _Calibration | None, stack: contextlib.ExitStack, progress: Progress | None, method: str,
             device: torch.device) -> int:
    """Stream every tensor into ``writer``; returns the bytes written for quantized tensors."""
    handles: dict[Path, Any] = {}
    quantized_bytes = 0
    for i, t in enumerate(plan):
        if t.file not in handles:
            handles[t.file] = stack.enter_context(safe_open(str(t.file), framework="pt"))
        tensor = handles[t.file].get_tensor(t.name)
        if t.quantize:
            before = writer.total_bytes
            for suffix, out in _quantize_one(config, tensor.to(device), t, calib, method).items():
                writer.add(f"{t.module}.{suffix}", out)
            quantized_bytes += writer.total_bytes - before
        else:
            writer.add(t.name, tensor)
        del tensor
        if progress is not None:
            progress(i + 1, len(plan), t.name)
    return quantized_bytes


def _quantize_one(config: QuantizationConfig, weight: torch.Tensor, t: PlannedTensor,
                  calib: _Calibration | None, method: str) -> dict[str, torch.Tensor]:
    activations = calib.get(t.module).to(weight.device) if calib is not None else None
    try:
        out = config.quantize_weight(weight, prefix=t.module, activations=activations)
    except FastVideoQuantError:
        raise
    except Exception as exc:
        raise QuantizeError(
            f"method {method!r} could not quantize tensor {t.name!r} (shape {list(t.shape)}, {t.dtype}): "
            f"{type(exc).__name__}: {exc}. Pass --skip {t.module} to leave it unquantized"
        ) from exc
    if not isinstance(out, dict) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise QuantizeError(
            f"{type(config).__name__}.quantize_weight returned {type(out).__name__} for {t.name!r}; "
            "expected a non-empty dict {suffix: tensor}"
        )
    return out


def _read_source_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not src.is_dir():
        raise CheckpointError(f"source checkpoint {str(src)!r} is not a directory")
    if not path.is_file():
        raise CheckpointError(f"source checkpoint {str(src)!r} has no config.json; a Hugging Face-style directory "
                              "(config.json plus *.safetensors) is expected")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    try:
        section = quant_section(config)  # None when absent or null (null means not quantized)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if section is not None:
        key = "quantization_config" if config.get("quantization_config") is not None else "compression_config"
        raise QuantizeError(f"{path} already has a {key!r} ({section.get('quant_method', '?')}); "
                            "quantize the original float checkpoint instead")
    declared = checkpoint_declarations(src)  # (also a method's own file, e.g. AutoAWQ's quant_config.json)
    if declared:
        listed = "; ".join(f"{d.source} says {d.method!r}" for d in declared)
        raise QuantizeError(f"source checkpoint {str(src)!r} is already quantized ({listed}); quantize the original "
                            "float checkpoint instead")
    return config


def _copy_extras(src: Path, dst: Path) -> list[str]:
    """Copy everything that is not a weight file or config.json; returns notes on what was left out."""
    notes = []
    for entry in sorted(src.iterdir()):
        name = entry.name
        if name.startswith(".") or name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json")):
            continue
        if entry.is_file() and entry.suffix in _PICKLE_SUFFIXES:
            notes.append(f"not copied: {name} (pickle weights; only safetensors are read and written)")
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / name)
        else:
            shutil.copy2(entry, dst / name)
    return notes
