"""Which modules a compressed-tensors config quantizes when ``fvq quantize`` writes it: its config groups' ``targets``
and its ``ignore`` list, matched against the checkpoint's module names.

compressed-tensors' writer (``apply_quantization_config``; ``utils/match.py``) gives a module the scheme of the group
whose target names it — its full name, else an ``re:`` pattern matching at the start of the name (``re.match``; in
string order), else its class (``"Linear"``: every linear layer) — and leaves a module no group targets, or one
``ignore`` names, in float — and lists in ``ignore`` each linear module it left so, for vLLM's and this package's readers
refuse a linear layer no group targets and ``ignore`` does not name. A checkpoint holds names,
not classes, so here:

* a target naming the module (by name or ``re:``) gives it that group; else a ``"Linear"`` target does, for every
  2-D weight the default rule keeps (:class:`~fastvideo_quant.quantize.plan.SelectionRule`: embeddings and norms stay
  float unless ``--include``\\ d);
* a class target naming linear layers other than ``"Linear"`` (``"RowParallelLinear"``) cannot be matched from a
  name: a module no name or pattern names is then refused, not guessed; a class of another kind (``"Embedding"``)
  names no linear layer and decides nothing. The rule is
  :class:`~fastvideo_quant.quantization.compressed_tensors.GroupTargets`, which the fp8 and AWQ readers ask too;
* targets name checkpoint modules (``q_proj``), as the writer matches them; ``ignore`` may also name a fused module
  (``qkv_proj``), as the skip lists ``fvq quantize`` writes do;
* a target naming no linear module is refused (a typo: compressed-tensors would skip it silently); an ``ignore``
  entry naming no module (``lm_head`` on a DiT, a class of another kind such as ``Embedding``) is a note, as
  compressed-tensors drops it, and one naming a linear class (``Linear``) is refused (:func:`unmatched_ignore`).

A module left in float is listed in the written ``ignore`` by its full name (:func:`~.plan.unconverted_modules`),
followed by the ``ignore`` entries naming no module, as given.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastvideo_quant.errors import ConfigError, QuantizeError
from fastvideo_quant.loader import DEFAULT_PACKED_MODULES_MAPPING
from fastvideo_quant.processing import names
from fastvideo_quant.quantization.base import as_model_shows, packed_part_of
from fastvideo_quant.quantization.compressed_tensors import (
    GroupTargets,
    entries,
    ignore_entry,
    is_class_name,
    is_compressed_tensors,
    may_name_a_linear_layer,
    names_module,
)

#: How :meth:`ConfigTargets.decide` starts the reason for a module no group targets (``plan.check_fused_groups``).
UNTARGETED = "no config group targets it"
#: How :meth:`~.plan.SelectionRule.decide` starts the reason for a module an ``ignore`` entry names.
IGNORED = "ignore entry"


@dataclasses.dataclass(frozen=True)
class TargetGroup:
    """One config group: its name, ``targets``, and its other fields as JSON (groups whose fields are equal hold one
    scheme)."""

    name: str
    targets: tuple[str, ...]
    settings: str


@dataclasses.dataclass(frozen=True)
class ConfigTargets:
    """A compressed-tensors config's groups and ``ignore`` entries, asked about checkpoint module names."""

    groups: tuple[TargetGroup, ...]
    ignore: tuple[str, ...]
    #: The fused modules (an ``ignore`` entry may name one); :data:`DEFAULT_PACKED_MODULES_MAPPING` when None.
    mapping: dict[str, list[str]] | None = None

    @functools.cached_property
    def matcher(self) -> GroupTargets[TargetGroup]:
        """compressed-tensors' rule for which group's target names a module, as the plugins' readers ask it."""
        return GroupTargets(self.groups)

    @classmethod
    def of_section(cls, section: Any, mapping: dict[str, list[str]] | None = None) -> ConfigTargets | None:
        """The targets of a compressed-tensors ``section`` (the options ``fvq quantize`` was given); None for any
        other config, whose method quantizes every linear weight the rule selects."""
        if not isinstance(section, dict) or not is_compressed_tensors(section):
            return None
        groups = section.get("config_groups")
        if not isinstance(groups, dict):
            return None  # (the method's from_config refused it before this is asked)
        read = []
        for name, group in groups.items():
            # (a group without targets targets every Linear, as both plugins read it)
            targets = entries(group.get("targets", ["Linear"]), f"config_groups.{name}.targets", required=True)
            settings = json.dumps({k: v for k, v in group.items() if k != "targets"}, sort_keys=True, default=str)
            read.append(TargetGroup(str(name), tuple(targets), settings))
        return cls(tuple(read), tuple(entries(section.get("ignore"), "ignore")), mapping)

    def describe(self) -> str:
        """Every group's targets, for messages: ``config_groups.g0.targets ['re:.*attn.*']; ...``."""
        return self.matcher.describe()

    def ignored_by(self, module: str) -> str | None:
        """The ``ignore`` entry naming checkpoint module ``module`` (or the fused module it is loaded into), or None."""
        for name in dict.fromkeys([module, as_model_shows(module, self.mapping)]):
            entry = ignore_entry(self.ignore, name)
            if entry is not None:
                return entry
        return None

    def group_of(self, module: str) -> tuple[str, TargetGroup] | None:
        """``(target, group)`` giving checkpoint module ``module`` its scheme by compressed-tensors' rule
        (:class:`~fastvideo_quant.quantization.compressed_tensors.GroupTargets`: its name, then ``re:`` patterns in
        string order, then ``"Linear"``), or None when no group targets it. ConfigError when no name or pattern names
        it and a linear class other than ``"Linear"`` might."""
        return self.matcher.of_module(module)

    def naming(self, module: str) -> tuple[str, TargetGroup] | None:
        """``(target, group)`` of the target naming ``module`` by its name or an ``re:`` pattern, or None."""
        return self.matcher.naming(module)

    def decide(self, module: str) -> tuple[bool, str]:
        """``(quantize?, why)`` for a linear weight's module the other rules quantize."""
        found = self.group_of(module)
        if found is None:
            return False, f"{UNTARGETED} ({self.describe()})"
        target, group = found
        return True, f"config_groups.{group.name} targets it ({target!r})"

    def check_include(self, module: str, include: Sequence[str]) -> None:
        """Refuse ``--include`` of a module the config leaves in float: an ``ignore`` entry names it (the two
        contradict), or no group targets it (it would have no scheme to be quantized with)."""
        entry = self.ignored_by(module)
        if entry is not None:
            raise ConfigError(f"module {module!r} matches --include {list(include)} and the compressed-tensors config's "
                              f"ignore entry {entry!r}; drop one of them")
        if self.group_of(module) is None:
            raise ConfigError(
                f"--include {include[0]!r} matches module {module!r}, which no config group of the compressed-tensors "
                f"config targets ({self.describe()}): it has no scheme to be quantized with. Add it to a group's "
                f"targets (its name, or an 're:' pattern), or drop --include {include[0]!r}"
            )


def _linear_modules(plan: Iterable[Any]) -> list[str]:
    """The modules of ``plan`` (:class:`~.plan.PlannedTensor`) with a 2-D floating-point weight."""
    return [t.module for t in plan if t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype is not None
            and t.dtype.is_floating_point]


def check_entries(plan: Iterable[Any], targets: ConfigTargets, src: Path) -> list[str]:
    """Refuse a target (a name or an ``re:`` pattern) that names no linear module of the checkpoint: a typo, which
    would leave the modules meant in float (compressed-tensors' writer skips such a target silently). Targets name
    checkpoint modules, so one naming only fused modules (``qkv_proj``) is told their parts. Returns the ``ignore``
    entries that name no module (:func:`unmatched_ignore`), kept in the written ``ignore`` as given."""
    plan = list(plan)
    linear = _linear_modules(plan)
    bad = []
    for group in targets.groups:
        for target in group.targets:
            if is_class_name(target) or any(names_module(target, m) for m in linear):
                continue
            parts = [m for m in linear if names_module(target, as_model_shows(m, targets.mapping))]
            hint = (f": targets name the checkpoint's modules ({names(parts, limit=3)}), not the fused layer they "
                    "load into" if parts else "")
            bad.append(f"config_groups.{group.name}.targets entry {target!r} names no linear module{hint}")
    if bad:
        raise QuantizeError(
            f"compressed-tensors config, quantizing checkpoint {str(src)!r}: {'; '.join(bad)}. A target names a module "
            "by its full name, or by an 're:' pattern matched at the start of the name ('re:.*attn.*' for every module "
            f"with 'attn' in its name); the checkpoint's linear modules include {linear[:6]}. compressed-tensors would "
            "skip such a target silently, leaving the modules it was meant for in float; fix the target, or drop it "
            "if the checkpoint has no such module. Nothing was written"
        )
    return unmatched_ignore(plan, targets, src)


def unmatched_ignore(plan: Iterable[Any], targets: ConfigTargets, src: Path) -> list[str]:
    """The ``ignore`` entries that name no module of the checkpoint (``lm_head``, which llm-compressor recipes list, on
    a DiT or a model whose head is tied to its embeddings; a class of another kind, ``Embedding``): compressed-tensors
    drops such an entry silently, and it changes no module written here. QuantizeError for a class name that may name a
    linear layer (``Linear``, ``RowParallelLinear``): compressed-tensors would leave every layer of that class in
    float, and a checkpoint's names do not say which those are."""
    plan = list(plan)
    modules = list(dict.fromkeys(t.name.rpartition(".")[0] or t.name for t in plan))
    unmatched = [e for e in targets.ignore
                 if not any(names_module(e, m) or names_module(e, as_model_shows(m, targets.mapping)) for m in modules)]
    linear_classes = [e for e in unmatched if is_class_name(e) and may_name_a_linear_layer(e)]
    if linear_classes:
        raise QuantizeError(
            f"compressed-tensors config, quantizing checkpoint {str(src)!r}: ignore entries {linear_classes} are class "
            "names that name linear layers: compressed-tensors leaves every module of such a class in float, and a "
            "checkpoint stores names, not classes, so which of its modules the entries leave is not known here. List "
            "the modules meant by full name or an 're:' pattern ('re:.*attn.*'). Nothing was written"
        )
    return unmatched


def unmatched_ignore_notes(unmatched: Sequence[str]) -> list[str]:
    """The summary note for :func:`unmatched_ignore`'s entries."""
    if not unmatched:
        return []
    classes = [e for e in unmatched if is_class_name(e)]
    others = [e for e in unmatched if e not in classes]
    said = []
    if others:
        said.append(f"{others} name no module of the checkpoint (an entry names one module by its full name, or those "
                    "an 're:' pattern matches at the start of their name, not the modules under it)")
    if classes:
        said.append(f"{classes} are class names of modules that are not linear layers, which a checkpoint's names do "
                    "not say and which nothing here quantizes")
    return [f"ignore entries {'; '.join(said)}: they change no module written, and are kept in the written ignore as "
            "given (compressed-tensors drops an entry that matches nothing; a model that has such a module, as an "
            "lm_head tied to the embeddings, keeps it in float)"]


def check_fused_schemes(plan: Iterable[Any], targets: ConfigTargets) -> None:
    """Refuse a fused layer (q/k/v → ``qkv_proj``) whose quantized parts config groups of different schemes target:
    one layer holds one scheme. Groups whose fields other than ``targets`` are equal hold one scheme."""
    mapping = targets.mapping or DEFAULT_PACKED_MODULES_MAPPING
    part_of = packed_part_of(mapping)
    layers: dict[str, dict[str, TargetGroup]] = {}
    for t in plan:
        if t.quantize and t.name.endswith(".weight") and t.module.rpartition(".")[2] in part_of:
            found = targets.group_of(t.module)
            if found is not None:
                layers.setdefault(as_model_shows(t.module, mapping), {})[t.module] = found[1]
    for layer, groups in layers.items():
        if len({g.settings for g in groups.values()}) > 1:
            held = "; ".join(f"{m!r}: config_groups.{g.name}" for m, g in sorted(groups.items()))
            raise ConfigError(
                f"compressed-tensors config: {layer!r} fuses modules that config groups of different schemes target: "
                f"{held}; one layer holds one scheme. Target all of them from one group (or from groups of equal "
                "settings), or list them all in 'ignore'"
            )


def targeted_left_notes(plan: Iterable[Any], targets: ConfigTargets) -> list[str]:
    """A summary note naming the modules a config group names (by name or ``re:`` pattern) that the default rule left
    in float (an embedder, a module named like a norm, an output head), and how to quantize them anyway (``--include``)."""
    from fastvideo_quant.quantize.plan import DEFAULT_RULE  # (plan imports this module)

    left = [t.module for t in plan if not t.quantize and DEFAULT_RULE in t.why and targets.naming(t.module)]
    if not left:
        return []
    return [f"module(s) a config group names but the default rule leaves unquantized (listed in ignore): "
            f"{names(left, show=str, limit=6)}; --include them to quantize them with their group's scheme"]
