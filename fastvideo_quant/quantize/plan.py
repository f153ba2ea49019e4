"""Which tensors of a checkpoint ``fvq quantize`` quantizes: the selection rule, the plan, pattern checks.

The rule (:class:`SelectionRule`), in order:

1. only ``*.weight`` tensors that are 2-D and floating point (linear weights; convolutions,
   biases and integer tensors are copied unchanged);
2. a module matching a ``skip`` pattern is not quantized (patterns match like vLLM's
   ``modules_to_not_convert``: whole dotted components, ``"attn"`` matches ``blocks.0.attn.q_proj``);
3. with a compressed-tensors config (:mod:`~fastvideo_quant.quantize.targets`), a module its ``ignore`` names is not
   quantized;
4. a module matching an ``include`` pattern is quantized (a ``skip`` or ``include`` pattern whose modules have no
   2-D floating-point weight is an error: it would change nothing; so is including a module the compressed-tensors
   config ignores or no config group of it targets);
5. otherwise these are not quantized (the default rule):

   * output heads: a module named ``lm_head`` (vLLM builds it as ``ParallelLMHead``, never a quantized
     linear; transformers leaves it out for AWQ and fp8);
   * embedding tables: a module named like one (``wte``, ``wpe``, ``shared``, ``relative_attention_bias``),
     or whose weight's first dimension is a table size the source's ``config.json`` gives (``vocab_size``,
     ``n_positions``, ``max_position_embeddings``, ``relative_attention_num_buckets``, ...; a size that also
     appears under another key, e.g. ``max_position_embeddings == hidden_size``, proves nothing and is not
     used). A vocab-sized weight is a table or an output head tied to one;
   * a module with a dotted component containing ``embed`` (embeddings; in video DiTs also the small
     timestep/patch embedders);
   * a module whose own name (the last component) contains ``norm``: a norm's own weight. A linear inside a
     norm module (AdaLN modulation: ``norm1.linear``, ``norm1_context.linear``, ``norm_out.linear``) is
     quantized;
6. everything else is quantized — with a compressed-tensors config, only the modules a config group targets (by
   name, ``re:`` pattern or ``"Linear"``), each with its group's scheme.

Every module whose 2-D float weight is left unquantized goes into the config's ``modules_to_not_convert`` by
its full name (with the fused name, e.g. ``blocks.0.attn.qkv_proj``, when all of a fused group is), never as
the pattern typed: vLLM's fp8 reader matches full names exactly and the AWQ readers (vLLM, transformers) by
substring, so ``"model.layers.1"`` would skip nothing for one and ``model.layers.10`` too for the other. A full name
that lies inside a quantized module's name (a root ``proj_out``, ``blocks.0.proj_out``) still names both for
those readers: :func:`check_skip_shadowing` refuses such a skip list before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from fastvideo_quant.errors import ConfigError, QuantizeError
from fastvideo_quant.loader import DEFAULT_PACKED_MODULES_MAPPING, SAFETENSORS_DTYPES, checkpoint_files, open_safetensors
from fastvideo_quant.processing import names
from fastvideo_quant.quantization.base import (
    QuantizationConfig,
    as_model_shows,
    matches_module_patterns,
    packed_part_of,
)
from fastvideo_quant.quantize.fused_names import fuse_flag, fused_from
from fastvideo_quant.quantize.targets import IGNORED, UNTARGETED, ConfigTargets

#: Components matching this are left unquantized by default (rule 5 above): any component of the module's name.
DEFAULT_EXCLUDE = re.compile(r"embed", re.IGNORECASE)
#: A module whose own name (last component) matches this is left unquantized by default: a norm's weight.
NORM_NAME = re.compile(r"norm", re.IGNORECASE)
#: Output heads left unquantized by default (``--include lm_head`` quantizes one).
HEAD_NAMES = frozenset({"lm_head"})
#: Embedding tables under names without "embed" (GPT-2's wte/wpe, T5's shared and relative_attention_bias).
TABLE_NAMES = frozenset({"wte", "wpe", "shared", "relative_attention_bias"})
#: config.json keys giving an embedding table's number of rows: a 2-D weight with that first dimension is a table
#: (or an output head tied to one).
TABLE_SIZE_KEYS = ("vocab_size", "padded_vocab_size", "n_positions", "n_ctx", "max_position_embeddings",
                   "relative_attention_num_buckets")
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


def pattern_matches(module: str, pattern: str, mapping: dict[str, list[str]] | None = None) -> bool:
    """Whether ``pattern`` matches ``module`` as whole dotted components, directly or as a fused module's part
    (``mapping``: the fused modules, :data:`DEFAULT_PACKED_MODULES_MAPPING` when None)."""
    return matches_module_patterns(module, [pattern, *fused_pattern_parts(pattern, mapping)])


def merged_packed_mapping(given: dict[str, Sequence[str]] | None = None,
                          flag: str = "packed_modules_mapping") -> dict[str, list[str]]:
    """:data:`DEFAULT_PACKED_MODULES_MAPPING` with ``given`` added (``{"to_qkv": ["to_q", "to_k", "to_v"]}``: the
    modules a model's loader fuses besides q/k/v_proj and gate/up_proj); an entry of the same fused name replaces
    the built-in one, and so does one of the same parts (``qkv=q_proj,k_proj,v_proj``). ConfigError, naming ``flag``,
    for names that are not one dotted component, fewer than two or repeated parts, a part equal to its fused name, a
    part two fused names claim, or a fused name that is another's part (fused layers do not nest)."""
    mapping = {k: list(v) for k, v in DEFAULT_PACKED_MODULES_MAPPING.items()}
    for fused, parts in (given or {}).items():
        parts = list(parts) if isinstance(parts, (list, tuple)) else parts
        names_ok = all(isinstance(n, str) and n and "." not in n and n.strip() == n for n in [fused, *(parts or [])])
        if not isinstance(parts, list) or len(parts) < 2 or len(set(parts)) != len(parts) or not names_ok \
                or fused in parts:
            raise ConfigError(
                f"{flag} {fused!r}: {parts!r}: expected a fused module's name and two or more distinct parts, each one "
                "component of a module name (no dots), e.g. to_qkv=to_q,to_k,to_v"
            )
        for builtin in [k for k, v in mapping.items() if k in DEFAULT_PACKED_MODULES_MAPPING and set(v) == set(parts)]:
            del mapping[builtin]  # (the same parts under the model's own name: qkv=q_proj,k_proj,v_proj)
        mapping[fused] = parts
    claimed: dict[str, str] = {}
    for fused, parts in mapping.items():
        for part in parts:
            if part in claimed:
                raise ConfigError(f"{flag}: module {part!r} is a part of both {claimed[part]!r} and {fused!r}; a "
                                  "module is loaded into one fused layer")
            claimed[part] = fused
    nested = sorted((name, claimed[name]) for name in mapping if name in claimed)
    if nested:
        name, outer = nested[0]
        raise ConfigError(f"{flag}: {name!r} is both a fused module ({name}={','.join(mapping[name])}) and a part of "
                          f"{outer!r}; a fused layer's parts are checkpoint modules, not other fused layers")
    return mapping


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """Decides which checkpoint tensors are quantized; see the module docstring for the rule."""

    skip: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    #: ``(config key, size)``: a 2-D weight whose first dimension is ``size`` is an embedding table (or an
    #: output head tied to one); :func:`table_sizes` reads them from a checkpoint's config.json.
    table_sizes: tuple[tuple[str, int], ...] = ()
    #: The fused modules a pattern may name (``qkv_proj`` for q/k/v_proj); :data:`DEFAULT_PACKED_MODULES_MAPPING`
    #: when None (:func:`merged_packed_mapping` adds a model's own).
    packed_modules_mapping: dict[str, list[str]] | None = None
    #: A compressed-tensors config's groups and ignore list (rules 3 and 6); None for other configs.
    targets: ConfigTargets | None = None

    def decide(self, name: str, shape: Sequence[int], dtype: torch.dtype | None) -> tuple[bool, str]:
        """``(quantize?, why)`` for one tensor."""
        if not name.endswith(".weight"):
            return False, "not a .weight tensor"
        if len(shape) != 2:
            return False, f"{len(shape)}-D, not a linear weight"
        if dtype not in FLOAT_DTYPES:
            return False, f"dtype {dtype} is not floating point"
        module = name[: -len(".weight")]
        skip = [p for p in self.skip if pattern_matches(module, p, self.packed_modules_mapping)]
        include = [p for p in self.include if pattern_matches(module, p, self.packed_modules_mapping)]
        if skip and include:
            raise ConfigError(f"module {module!r} matches --skip {skip} and --include {include}; drop one of them")
        if skip:
            return False, f"--skip {skip[0]}"
        if self.targets is not None and include:
            self.targets.check_include(module, include)
        entry = None if self.targets is None else self.targets.ignored_by(module)
        if entry is not None:
            return False, f"{IGNORED} {entry!r} of the compressed-tensors config"
        if include:
            return True, f"--include {include[0]}"
        own = module.rpartition(".")[2]
        if own in HEAD_NAMES:
            return False, f"{HEAD_WHY} (--include {own} to quantize it)"
        if own in TABLE_NAMES:
            return False, f"{TABLE_WHY}: its name (--include {own} to quantize it)"
        keys = [key for key, size in self.table_sizes if size == shape[0]]
        if keys:
            return False, f"{TABLE_WHY}: {shape[0]} rows, config.json {keys[0]} (--include {own} to quantize it)"
        if any(DEFAULT_EXCLUDE.search(part) for part in module.split(".")):
            return False, f"embedding {DEFAULT_RULE} (--include to quantize it)"
        if NORM_NAME.search(own):
            return False, f"norm {DEFAULT_RULE} (--include to quantize it)"
        if self.targets is not None:
            return self.targets.decide(module)
        return True, "linear weight"


#: What every reason :meth:`SelectionRule.decide` gives for a module the default rule leaves unquantized says (read by
#: :func:`~.targets.targeted_left_notes`); how it starts the reason for a head or a table (:func:`default_rule_notes`).
DEFAULT_RULE = "by the default rule"
HEAD_WHY = f"output head {DEFAULT_RULE}"
TABLE_WHY = f"embedding table (or an output head tied to one) {DEFAULT_RULE}"


def table_sizes(config: dict) -> tuple[tuple[str, int], ...]:
    """``(key, size)`` for each :data:`TABLE_SIZE_KEYS` key of a ``config.json`` (nested sections too, e.g.
    ``text_config``) whose size appears under no other key: ``max_position_embeddings == hidden_size`` (Llama-2)
    would mark every ``[hidden, hidden]`` linear as a table."""
    found: list[tuple[str, int]] = []
    others: set[int] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    (found.append((key, value)) if key in TABLE_SIZE_KEYS else others.add(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return tuple(dict.fromkeys((k, v) for k, v in found if v > 1 and v not in others))


def _source_config(src: Path) -> dict:
    """The source's config.json, or ``{}`` when it has none readable (``quantize_checkpoint`` reports that)."""
    try:
        config = json.loads((Path(src) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


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


def plan_tensors(src: Path, rule: SelectionRule, hf_config: dict | None = None) -> list[PlannedTensor]:
    """Every tensor of the checkpoint with the rule's decision; reads headers only. Table sizes the rule lacks are
    taken from ``hf_config`` (the source's config.json, already read), else read from ``src`` (:func:`table_sizes`)."""
    if not rule.table_sizes:
        config = _source_config(src) if hf_config is None else hf_config
        rule = dataclasses.replace(rule, table_sizes=table_sizes(config))
    plan = []
    for file in checkpoint_files(src):
        with open_safetensors(file) as handle:
            for name in handle.keys():
                sl = handle.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype())
                quantize, why = rule.decide(name, shape, dtype)
                if quantize and 0 in shape:
                    raise QuantizeError(
                        f"checkpoint tensor {name!r} ({file.name}) has shape {list(shape)}: a weight with no "
                        f"{'rows' if shape[0] == 0 else 'input features'} is no layer's, and no linear layer can be "
                        "built for it; remove it from the source checkpoint, or leave it unquantized (--skip the "
                        "module)")
                plan.append(PlannedTensor(name, file, shape, dtype, quantize, why))
    return plan


def check_float_source(plan: Iterable[PlannedTensor], src: Path) -> None:
    """Refuse a source whose tensors are already quantized though its config declares no method (a
    ``quantization_config`` removed by hand): what is copied would not match the config written."""
    found = [f"{t.name!r} ({t.dtype})" for t in plan
             if t.name.rpartition(".")[2] in QUANTIZED_SUFFIXES
             or (t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype is not None
                 and not t.dtype.is_floating_point)
             or (t.dtype is not None and t.dtype.is_floating_point and t.dtype.itemsize == 1)]  # (every float8)
    if found:
        raise QuantizeError(
            f"source checkpoint {str(src)!r} holds quantized tensors ({len(found)}, e.g. {', '.join(found[:3])}) but "
            "declares no quantization method (its config.json has no quantization_config): it was quantized and "
            "its config edited. Quantize the original float checkpoint instead"
        )


def check_fused_groups(plan: Iterable[PlannedTensor], mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse quantizing some but not all parts of a module the loader fuses (q/k/v → qkv_proj, gate/up)."""
    mapping = mapping or DEFAULT_PACKED_MODULES_MAPPING
    part_of = packed_part_of(mapping)
    groups: dict[tuple[str, str], dict[str, PlannedTensor]] = {}
    for t in plan:
        if not t.name.endswith(".weight"):
            continue
        parent, _, leaf = t.module.rpartition(".")
        if leaf in part_of:
            groups.setdefault((parent, part_of[leaf]), {})[leaf] = t
    for (parent, fused), parts in groups.items():
        if len({t.quantize for t in parts.values()}) > 1:
            whole = f"{parent}.{fused}" if parent else fused
            left = "; ".join(f"{leaf}: {t.why}" for leaf, t in sorted(parts.items()) if not t.quantize)
            raise ConfigError(
                f"modules {sorted(parts)} under {parent or '<root>'!r} are fused into {fused!r} when loaded, "
                f"but only {sorted(k for k, t in parts.items() if t.quantize)} would be quantized ({left}); "
                + _fused_fix([t for t in parts.values() if not t.quantize], mapping[fused], whole)
            )


def _fused_fix(left: list[PlannedTensor], parts: list[str], whole: str) -> str:
    """How to treat a fused layer's parts alike: where the compressed-tensors config leaves some (no group targets
    them, or ignore names them), through the config (--include cannot quantize a module no group targets, nor one
    ignore names), or --skip of the fused name; else --skip or --include of the fused name."""
    untargeted = any(t.why.startswith(UNTARGETED) for t in left)
    ignored = any(t.why.startswith(IGNORED) for t in left)
    if not (untargeted or ignored):
        return f"skip or include all of them together (the fused name does: --skip {whole!r})"
    pattern = rf"re:.*\.({'|'.join(parts)})$"
    fixes = ([f"target all of them from a config group (e.g. an 're:' pattern naming {', '.join(parts)}: "
              f"'{pattern}')"] if untargeted else []) + (
             [f"have the config's ignore name all of them or none (the fused name {whole!r} names all)"]
             if ignored else [])
    return f"{' and '.join(fixes)}, or leave them all in float: --skip {whole!r}"


def check_planned_some(plan: Sequence[PlannedTensor], method: str, src: Path) -> None:
    """Refuse a plan that quantizes no tensor: the output would be the float checkpoint under a
    ``quantization_config`` naming ``method``, a checkpoint that claims a quantization it does not have. The error
    gives why the first tensors were left (weights first: those are what the operator expected quantized)."""
    if any(t.quantize for t in plan):
        return
    if not plan:
        raise QuantizeError(f"checkpoint {str(src)!r} holds no tensor: nothing to quantize with method {method!r}. "
                            "Nothing was written")
    shown = sorted(plan, key=lambda t: (not t.name.endswith(".weight"), len(t.shape) != 2))
    why = names(shown, show=lambda t: f"{t.name!r} {list(t.shape)} {t.dtype}: {t.why}", limit=5)
    raise QuantizeError(
        f"no tensor of checkpoint {str(src)!r} would be quantized by method {method!r}: of its {len(plan)} "
        f"tensor(s), none is a 2-D floating-point linear weight ([out, in]) that the rule selects. Left as they are: "
        f"{why}. Nothing was written (the output would be the float checkpoint under a quantization_config that "
        "claims a quantization it does not have). Check that SRC holds the model's linear weights; quantize modules "
        "the default rule leaves with --include PATTERN, or narrow a --skip pattern that covers them all"
    )


def unconverted_modules(plan: Iterable[PlannedTensor], mapping: dict[str, list[str]] | None = None) -> list[str]:
    """``modules_to_not_convert``: the full name of every module whose 2-D float weight is left unquantized, never
    the ``--skip`` patterns themselves.

    Other readers match these names their own way: vLLM's fp8 ``is_layer_skipped`` only full names (a pattern
    ``model.layers.1`` would skip nothing), the AWQ readers of vLLM and transformers by substring (it would skip
    ``model.layers.10`` too, stored quantized); this package's loader by whole components, which full names
    satisfy. When all modules of a fused group are listed (``blocks.0.attn.q/k/v_proj``), the fused name
    (``blocks.0.attn.qkv_proj``) comes first, the parts right after it in the mapping's order: the name the
    model's layer has, which a substring reader needs.
    """
    mapping = mapping or DEFAULT_PACKED_MODULES_MAPPING
    part_of = packed_part_of(mapping)
    left = [t.module for t in plan
            if not t.quantize and t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in FLOAT_DTYPES]
    listed = set(left)
    names: list[str] = []
    for module in left:
        parent, dot, leaf = module.rpartition(".")
        fused = part_of.get(leaf)
        if fused is not None and all(f"{parent}{dot}{part}" in listed for part in mapping[fused]):
            names.append(f"{parent}{dot}{fused}")  # the fused name, then its parts together, in the mapping's order
            names.extend(f"{parent}{dot}{part}" for part in mapping[fused])
        names.append(module)
    return list(dict.fromkeys(names))


def check_weight_shapes(plan: Iterable[PlannedTensor], config: QuantizationConfig, method: str, src: Path,
                        mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse, in one error listing them all, the weights planned for quantizing whose shape the method cannot
    quantize: the config's ``quantize_shape_problem(shape) -> str | None`` says why (AWQ: its group and packing
    rules). Asked before anything is quantized or written, so an operator fixes every such module in one run rather
    than meeting them one per run as ``quantize_weight`` refuses each."""
    bad = [(t, why) for t in plan if t.quantize and (why := config.quantize_shape_problem(tuple(t.shape)))]
    if not bad:
        return
    skips = list(dict.fromkeys(as_model_shows(t.module, mapping) for t, _ in bad))
    listed = names(bad, show=lambda b: f"{b[0].module!r} [out={b[0].shape[0]}, in={b[0].shape[1]}]: {b[1]}", limit=6)
    raise QuantizeError(
        f"method {method!r} cannot quantize {len(bad)} module(s) of checkpoint {str(src)!r} with these settings: "
        f"{listed}. Nothing was written. Leave them unquantized with --skip (each of {names(skips, show=str, limit=8)},"
        " or a pattern covering them), or choose settings (--option) under which they fit, where a problem above "
        "names one"
    )


#: Skip-list keys whose other readers match an entry as a substring of a layer's name, not as whole dotted
#: components: vLLM's AWQ ``is_layer_skipped_awq`` (``any(entry in prefix ...)``); transformers' quantizers (an entry
#: equal to the layer's own name, its suffix, its prefix followed by a dot, or a regular expression matching at its
#: start); vLLM's bitsandbytes reader (an entry equal to one component, or to a leading run of them).
SUBSTRING_SKIP_KEYS = ("modules_to_not_convert", "llm_int8_skip_modules")


def _names(entry: str, name: str, substring: bool, pattern: re.Pattern | None, ours: QuantizationConfig | None) -> bool:
    """Whether a reader skips layer ``name`` for a skip-list ``entry``: this package's loader by the method's own rule
    (``ours``: a config holding only ``entry``, asked ``skip_entry_matches``; whole dotted components by default,
    AWQ's substrings); with ``substring``, other readers also when it is anywhere in it, or (``pattern``: the entry
    compiled, as transformers reads it, its dots matching any character) a regular expression matching at its start."""
    if substring and entry in name:
        return True
    if ours.skip_entry_matches(name) if ours is not None else matches_module_patterns(name, [entry]):
        return True
    return pattern is not None and pattern.match(name) is not None


def holding_only(config: QuantizationConfig | None, entry: str) -> QuantizationConfig | None:
    """A shallow copy of ``config`` whose skip list is ``[entry]`` (to ask its rule about one entry)."""
    if config is None:
        return None
    one = copy.copy(config)
    one.modules_to_not_convert = [entry]
    return one


def _compiled(entry: str) -> re.Pattern | None:
    try:
        return re.compile(entry)
    except re.error:
        return None


def check_skip_shadowing(plan: Iterable[PlannedTensor], section: dict, not_converted: Sequence[str],
                         config: QuantizationConfig | None = None, mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse a skip list that would make a reader skip a module this run quantizes.

    Each entry of ``not_converted`` (full names, :func:`unconverted_modules`) is matched against every quantized
    module's name, and its fused name (``qkv_proj``, the layer vLLM builds), the way readers match: this package's
    loader by the method's rule (``config.skip_entry_matches``: whole dotted components unless the method declares
    otherwise, as AWQ declares substrings), and for :data:`SUBSTRING_SKIP_KEYS` in ``section`` (AWQ, bitsandbytes)
    other readers by substring. A skipped ``proj_out`` then also names ``blocks.0.proj_out``, and
    ``transformer_blocks.0.attn.to_q`` names ``single_transformer_blocks.0.attn.to_q``: those readers would build
    the quantized layers unquantized and fail to load their tensors. No entry can name the skipped module without
    naming the other (every substring of its name is one of the other's), so the checkpoint cannot say this.
    """
    plan = list(plan)
    seen_as = {t.module: list(dict.fromkeys([t.module, as_model_shows(t.module, mapping)])) for t in plan if t.quantize}
    substring = {e for key in SUBSTRING_SKIP_KEYS for e in (section.get(key) or []) if isinstance(e, str)}
    clashes: list[tuple[str, list[str]]] = []
    for entry in not_converted:
        by_substring = entry in substring
        pattern = _compiled(entry) if by_substring else None
        ours = holding_only(config, entry)
        hit = [m for m, seen in seen_as.items() if any(_names(entry, n, by_substring, pattern, ours) for n in seen)]
        if hit:
            clashes.append((entry, hit))
    if not clashes:
        return
    key = next((k for k in (*SUBSTRING_SKIP_KEYS, "ignored_layers", "ignore") if section.get(k)), "skip list")
    why = {t.module: t.why for t in plan if not t.quantize}
    why.update({as_model_shows(m, mapping): r for m, r in list(why.items())})
    quantize_instead = []
    for entry, _ in clashes:
        reason = why.get(entry, "")
        quantize_instead.append(f"narrow or drop {reason}" if reason.startswith("--skip ")
                                else f"--include {entry}")
    shown = names(clashes, limit=4, show=lambda c: f"{c[0]!r} (left unquantized) also names quantized "
                                                   f"{names(c[1], limit=4)}")
    default = config is None or type(config).skip_entry_matches is QuantizationConfig.skip_entry_matches
    own = "as whole dotted components" if default else f"by {type(config).__name__}'s own rule (skip_entry_matches)"
    readers = ("vLLM's and transformers' readers of this key match an entry within a layer's name (as a substring, "
               f"suffix or prefix), this package's loader {own}" if substring
               else f"This package's loader matches an entry to a layer's name {own}")
    shadowed = list(dict.fromkeys(as_model_shows(m, mapping) for _, hit in clashes for m in hit))
    raise QuantizeError(
        f"the skip list written ({key}) would make readers skip modules this run quantizes: {shown}. {readers}, so "
        "a reader would build those layers unquantized and fail to load their quantized tensors; no entry can name "
        "the skipped module without naming those. Nothing was written. Either leave them unquantized too (--skip "
        f"{names(shadowed, show=str, limit=6)}), or quantize the skipped module(s) "
        f"({names(list(dict.fromkeys(quantize_instead)), show=str, limit=4)})"
    )


def default_rule_notes(plan: Iterable[PlannedTensor]) -> list[str]:
    """Summary notes naming the output heads and embedding tables the default rule left unquantized, and how to
    quantize them anyway (``--include``)."""
    plan = [t for t in plan if not t.quantize]
    heads = [t.module for t in plan if t.why.startswith(HEAD_WHY)]
    tables = [t.module for t in plan if t.why.startswith(TABLE_WHY)]
    notes = []
    if heads:
        notes.append(f"output head(s) left unquantized by default: {names(heads, show=str, limit=6)} (vLLM builds "
                     "lm_head unquantized; --include lm_head quantizes it)")
    if tables:
        notes.append(f"embedding table(s) (or output heads tied to one) left unquantized by default: "
                     f"{names(tables, show=str, limit=6)}; --include {tables[0].rpartition('.')[2]} (or another of "
                     "their names) quantizes them")
    return notes


def _linear_weight(t: PlannedTensor) -> bool:
    """Whether ``t`` is a weight the rule could quantize (rule 1): ``*.weight``, 2-D, floating point."""
    return t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in FLOAT_DTYPES


def check_patterns(plan: Iterable[PlannedTensor], patterns: Sequence[str], flag: str, src: Path,
                   mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse ``--skip``/``--include`` patterns that match no module of the checkpoint (a typo would do nothing),
    and patterns matching only modules without a 2-D float weight (:func:`check_pattern_targets`). ``mapping``: the
    fused modules a pattern may name (default :data:`DEFAULT_PACKED_MODULES_MAPPING`)."""
    plan = list(plan)
    modules = list(dict.fromkeys(t.name.rpartition(".")[0] or t.name for t in plan))
    unmatched = [p for p in patterns if not any(pattern_matches(m, p, mapping) for m in modules)]
    check_pattern_targets(plan, [p for p in patterns if p not in unmatched], flag, mapping)
    if not unmatched:
        return
    # Suggest names as the model shows them: a fused module (qkv_proj), never one of its parts (q_proj),
    # which could not be skipped alone (check_fused_groups).
    part_of = packed_part_of(mapping)
    candidates: set[str] = set()
    for m in modules:
        parts = [part_of.get(c, c) for c in m.split(".")]
        candidates.update(parts)
        candidates.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    hints = []
    for p in unmatched:
        if parts := _fused_pattern(p.strip("."), modules):
            hints.append(f"{p!r} (looks like a fused module of {', '.join(map(repr, parts))}, which the checkpoint "
                         "stores separately: tell fvq quantize which modules the model fuses with "
                         f"{fuse_flag(p.strip('.').rpartition('.')[2], parts)}, and a pattern may name the fused module)")
            continue
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


def _fused_pattern(pattern: str, modules: list[str]) -> list[str] | None:
    """The modules that ``pattern``, matching none, looks fused from (:func:`fused_from`): among the modules whose
    parent ends with the pattern's parent (any module, for a pattern of one component)."""
    parent, _, leaf = pattern.rpartition(".")
    siblings = {m.rpartition(".")[2] for m in modules
                if not parent or f".{m.rpartition('.')[0]}".endswith(f".{parent}")}
    return fused_from(leaf, siblings)


def check_pattern_targets(plan: Iterable[PlannedTensor], patterns: Sequence[str], flag: str = "--include",
                          mapping: dict[str, list[str]] | None = None) -> None:
    """Refuse a skip or include pattern whose modules have no 2-D floating-point weight (a convolution, a norm's
    vector): only linear weights are quantized, so including it would quantize nothing and skipping it would leave
    nothing unquantized that was not already; accepted, it would change nothing."""
    plan = list(plan)
    for p in patterns:
        matched = [t for t in plan if pattern_matches(t.name.rpartition(".")[0] or t.name, p, mapping)]
        if not matched or any(_linear_weight(t) for t in matched):
            continue
        weights = [t for t in matched if t.name.endswith(".weight")] or matched
        shown = names(weights, limit=4, show=lambda t: f"{t.module!r} (weight {list(t.shape)}, {t.dtype})"
                      if t.name.endswith(".weight") else f"{t.name!r} ({list(t.shape)}, {t.dtype})")
        raise QuantizeError(
            f"{flag} pattern {p!r} matches module(s) {shown}, none with a 2-D floating-point weight: only linear "
            "weights ([out, in], floating point) are quantized, so the pattern would change nothing. Drop it (the "
            "tensors are copied unchanged), or name a linear module"
        )
