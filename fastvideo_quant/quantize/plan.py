"""Which tensors of a checkpoint ``fvq quantize`` quantizes: the selection rule, the plan, pattern checks.

The rule (:class:`SelectionRule`), in order:

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
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from fastvideo_quant.errors import ConfigError, QuantizeError
from fastvideo_quant.loader import DEFAULT_PACKED_MODULES_MAPPING, SAFETENSORS_DTYPES, checkpoint_files, open_safetensors
from fastvideo_quant.quantization.base import matches_module_patterns

#: Components matching this are left unquantized by default (rule 4 above).
DEFAULT_EXCLUDE = re.compile(r"embed|norm", re.IGNORECASE)
FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
#: Tensor names only quantized checkpoints hold (AutoAWQ/GPTQ, bitsandbytes, fp8 and compressed-tensors).
QUANTIZED_SUFFIXES = ("qweight", "qzeros", "g_idx", "SCB", "weight_format", "weight_scale", "weight_scale_inv",
                      "weight_packed", "input_scale")


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
        if dtype not in FLOAT_DTYPES:
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


def plan_tensors(src: Path, rule: SelectionRule) -> list[PlannedTensor]:
    """Every tensor of the checkpoint with the rule's decision; reads headers only."""
    plan = []
    for file in checkpoint_files(src):
        with open_safetensors(file) as handle:
            for name in handle.keys():
                sl = handle.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype())
                quantize, why = rule.decide(name, shape, dtype)
                plan.append(PlannedTensor(name, file, shape, dtype, quantize, why))
    return plan


def check_float_source(plan: Iterable[PlannedTensor], src: Path) -> None:
    """Refuse a source whose tensors are already quantized though its config declares no method (a
    ``quantization_config`` removed by hand): what is copied would not match the config written."""
    found = [f"{t.name!r} ({t.dtype})" for t in plan
             if t.name.rpartition(".")[2] in QUANTIZED_SUFFIXES
             or (t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype is not None
                 and not t.dtype.is_floating_point) or t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)]
    if found:
        raise QuantizeError(
            f"source checkpoint {str(src)!r} holds quantized tensors ({len(found)}, e.g. {', '.join(found[:3])}) but "
            "declares no quantization method (its config.json has no quantization_config): it was quantized and "
            "its config edited. Quantize the original float checkpoint instead"
        )


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
        if not t.quantize and t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in FLOAT_DTYPES:
            if not any(pattern_matches(t.module, p) for p in rule.skip):
                names.append(t.module)
    return list(dict.fromkeys(names))


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
