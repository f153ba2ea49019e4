"""What every plugin reading compressed-tensors checkpoints reads alike: the method name, the keys of a config group
and of its ``QuantizationArgs`` (a misspelling is refused, :func:`check_keys`), lists of targets / ignore entries
(:func:`entries`), and sections whose tensors only compute right with work at run time that the layers here do not do
(:func:`runtime_work_problem`):

* ``transform_config`` (compressed-tensors ``TransformConfig``; llm-compressor's QuIP and SpinQuant modifiers): each
  config group lists where its rotation applies (``apply[i].location``). ``weight_input`` / ``weight_output``
  rotations are fused into the stored weights (a model runs them with no help); ``input``, ``output``, ``k_cache``,
  ``q_attn`` are *online*: applied to activations by forward hooks at run time (compressed-tensors
  ``transform/transform_args.py``, ``TransformLocation``). Layers that ignore them compute ``x (W H)^T`` for
  ``x W^T``: wrong outputs, no error. llm-compressor's W4A16 QuIP and SpinQuant (R4) examples write such sections.
* ``sparsity_config`` with a ``format`` other than ``dense``: weights stored in a sparse-compressed layout (2:4
  ``sparse-24-bitmask``, ``sparse-bitmask``), under other tensor names and shapes.

Plugins call :func:`runtime_work_problem` from their section parsers and raise its text as a ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

import torch

from fastvideo_quant.errors import ConfigError

CT_METHOD = "compressed-tensors"
#: Keys of a compressed-tensors ``QuantizationArgs`` (a group's ``weights`` / ``input_activations``) and of a
#: ``QuantizationScheme`` (a group): an unknown key close to one of these is a misspelling; others are accepted (later
#: compressed-tensors versions add fields).
ARGS_KEYS = ("num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic", "actorder",
             "observer", "observer_kwargs", "scale_dtype", "zp_dtype")
GROUP_KEYS = ("targets", "weights", "input_activations", "output_activations", "format")
#: ``TransformLocation`` values whose rotation is fused into the stored weights.
OFFLINE_LOCATIONS = ("weight_input", "weight_output")
#: The ``quantization_status`` of a checkpoint whose tensors are stored quantized (``weight`` fp8 and its scales,
#: ``weight_packed``), which the sections the plugins write must say: compressed-tensors' ``QuantizationConfig``
#: defaults a missing status to ``"initialized"`` (``quantization/quant_config.py``), and transformers' reader
#: (``CompressedTensorsConfig.is_quantization_compressed``, ``quantizers/quantizer_compressed_tensors.py``) sets up the
#: compressed layout (``compress_model``, run_compressed) only for ``"compressed"``: otherwise it builds float
#: fake-quantized layers, which take an fp8 ``weight`` as float values and have no ``weight_packed``. vLLM does not read
#: the key.
COMPRESSED_STATUS = "compressed"


def runtime_work_problem(section: dict[str, Any], method: str) -> str | None:
    """Why ``method`` cannot compute a compressed-tensors ``section`` right (an online transform, sparse-compressed
    weights), naming the field and the value found; None when nothing is asked of the run time."""
    transforms = section.get("transform_config")
    if transforms:
        groups = transforms.get("config_groups") if isinstance(transforms, dict) else None
        if not isinstance(groups, dict):
            return (f"compressed-tensors config: transform_config {transforms!r:.200} has no config_groups object, so "
                    f"{method} cannot tell whether its rotations are fused into the weights; it reads sections without "
                    "transforms or with weight_input / weight_output ones only")
        for name, group in groups.items():
            applies = group.get("apply") if isinstance(group, dict) else None
            if not isinstance(applies, list):
                return (f"compressed-tensors config: transform_config.config_groups.{name} has no 'apply' list (found "
                        f"{group!r:.200}), so {method} cannot tell where its rotation applies")
            for i, entry in enumerate(applies):
                location = entry.get("location") if isinstance(entry, dict) else None
                if location not in OFFLINE_LOCATIONS:
                    return (f"compressed-tensors config: transform_config.config_groups.{name}.apply[{i}] has location "
                            f"{location!r}, an online transform (a QuIP / SpinQuant rotation applied to activations at "
                            f"run time), which {method} does not apply: its layers would multiply unrotated inputs by "
                            "rotated weights and return wrong outputs. Load this checkpoint with a runtime that applies "
                            "compressed-tensors transforms, or export it with weight_input / weight_output rotations "
                            "only (fused into the weights)")
    sparsity = section.get("sparsity_config")
    if sparsity:
        fmt = sparsity.get("format") if isinstance(sparsity, dict) else sparsity
        if fmt not in (None, "dense"):
            return (f"compressed-tensors config: sparsity_config format {fmt!r}: the weights are stored sparse-"
                    f"compressed (other tensor names and shapes), which {method} does not read; it reads dense "
                    "checkpoints (sparsity_config {} or format 'dense')")
    return None


def is_compressed_tensors(section: dict[str, Any]) -> bool:
    """Whether a checkpoint's quantization section is compressed-tensors' (``quant_method``, any case)."""
    return str(section.get("quant_method", "")).lower() == CT_METHOD


def names_module(entry: str, name: str) -> bool:
    """compressed-tensors' rule for a ``targets`` / ``ignore`` entry and a module name (``utils/match.py``,
    ``match_name``): a name names itself; ``re:<pattern>`` the modules it matches at the start of their name
    (``re.match``)."""
    return re.match(entry[3:], name) is not None if entry.startswith("re:") else entry == name


def ignore_entry(ignore: Iterable[str], name: str) -> str | None:
    """The first ``ignore`` entry naming module ``name`` by :func:`names_module`, or None. (compressed-tensors also
    matches an entry to a module's class; a checkpoint's names do not say classes: ``fvq quantize`` refuses a class
    entry that may name a linear layer, :func:`may_name_a_linear_layer`.)"""
    return next((entry for entry in ignore if names_module(entry, name)), None)


def names_class(entry: str, layer: torch.nn.Module) -> bool:
    """Whether a class-name target names ``layer``: ``"Linear"`` (torch's ``nn.Linear``, what llm-compressor targets)
    names every linear layer; another name, the layer's class or a base class."""
    return entry == "Linear" or any(cls.__name__ == entry for cls in type(layer).__mro__)


def is_class_name(target: str) -> bool:
    """Whether a target reads as a class name (not an ``re:`` pattern, no dot, capitalized), not a module name."""
    return not target.startswith("re:") and "." not in target and target[:1].isupper()


def linear_class_names() -> set[str]:
    """The class names a target may use to name this package's linear layers (their classes and bases, ``Linear``,
    ``Module``)."""
    from fastvideo_quant.layers.linear import LinearBase

    found, stack = {"Linear", "Module"}, [LinearBase]
    while stack:
        cls = stack.pop()
        found.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return found


def may_name_a_linear_layer(entry: str) -> bool:
    """False for an entry that can only be a class name of another kind (``Embedding``, ``Conv2d``): not an ``re:``
    pattern, no dot, capitalized, and no linear class's name. Module names and patterns may name any layer."""
    return not is_class_name(entry) or entry in linear_class_names()


def unmatched_class_targets(targets: Iterable[str]) -> list[str]:
    """The class-name targets among ``targets`` that a checkpoint's names cannot match and that matter, sorted: those
    other than ``"Linear"`` (which names every linear weight) that may name a linear layer
    (:func:`may_name_a_linear_layer`: ``RowParallelLinear``, ``Module``). A class of another kind (``Embedding``)
    names no linear layer, so it decides nothing for one."""
    return sorted({t for t in targets if is_class_name(t) and t != "Linear" and may_name_a_linear_layer(t)})


def class_targets_note(classes: list[str]) -> str:
    """How messages say that :func:`unmatched_class_targets` ``classes`` cannot be matched when writing."""
    return f"class targets {classes} cannot be matched from a checkpoint name"


class Targeted(Protocol):
    """A config group as :class:`GroupTargets` reads it: its name and its ``targets``."""

    @property
    def name(self) -> str: ...

    @property
    def targets(self) -> tuple[str, ...]: ...


G = TypeVar("G", bound=Targeted)


class GroupTargets(Generic[G]):
    """Which config group's target gives a module its scheme, by compressed-tensors' rule (``utils/match.py``,
    ``match_targets``, as ``apply_quantization_config`` wrote the checkpoint): a target equal to the module's name,
    else the first ``re:`` pattern matching the start of its name (``re.match``), each in string order, else the first
    class target (string order) naming its class or a base class — across groups, whose order carries no meaning
    there. Asked about a name with no layer (writing a checkpoint: names, not classes), ``"Linear"`` names every
    module, a class of another kind none (:func:`unmatched_class_targets`), and a linear class other than ``Linear``
    cannot be told: :meth:`of_module` refuses it. ``fvq quantize`` (``quantize.targets``) and the plugins' readers
    (fp8, AWQ) ask this one rule."""

    def __init__(self, groups: Iterable[G]) -> None:
        self.groups = list(groups)
        listed = [(t, g) for g in self.groups for t in g.targets]
        # (every target is tried as a name too, as match_name tries them: a class name equals no module's name)
        self._by_name = sorted(listed, key=lambda e: (e[0].startswith("re:"), e[0]))
        self._classes = sorted(((t, g) for t, g in listed if is_class_name(t)), key=lambda e: e[0])
        self.unmatched_classes = unmatched_class_targets(t for t, _ in listed)

    def describe(self) -> str:
        """Every group's targets, for messages: ``config_groups.g0.targets ['re:.*attn.*']; ...``."""
        return describe_targets((g.name, g.targets) for g in self.groups)

    def naming(self, name: str) -> tuple[str, G] | None:
        """``(target, group)`` of the target naming module ``name`` (equal to it, else an ``re:`` pattern matching
        it), or None."""
        return next(((t, g) for t, g in self._by_name if names_module(t, name)), None)

    def by_class(self, layer: torch.nn.Module | None) -> tuple[str, G] | None:
        """``(target, group)`` of the first class target naming ``layer``'s class; ``layer`` None: ``"Linear"``."""
        return next(((t, g) for t, g in self._classes if (t == "Linear" if layer is None else names_class(t, layer))),
                    None)

    def of_module(self, name: str, layer: torch.nn.Module | None = None) -> tuple[str, G] | None:
        """``(target, group)`` giving module ``name`` (of ``layer``, or a checkpoint name when None) its scheme, or
        None when no group targets it. ConfigError, with no layer, for a module no name or pattern names when a class
        target that may name a linear layer (other than ``Linear``) might, and comes before ``Linear`` in string order
        (after it, ``Linear`` has decided, as it does for a layer)."""
        found = self.naming(name)
        if found is not None or layer is not None:
            return found if found is not None else self.by_class(layer)
        # (no layer: the class targets in their order until one decides — "Linear" names every module, a class of
        # another kind none; one that may name some linear layers cannot be told, unless "Linear" came first)
        undecided = next((t for t, _ in self._classes if t == "Linear" or t in self.unmatched_classes), None)
        if undecided is not None and undecided != "Linear":
            raise ConfigError(
                f"compressed-tensors config: module {name!r}: no config group names it by name or 're:' pattern, and "
                f"{class_targets_note(self.unmatched_classes)} (a checkpoint stores names, not classes), so whether a "
                f"group targets it is not known ({self.describe()}). Name the modules those classes stand for in the "
                "group's targets (full names or an 're:' pattern; 'Linear' for every linear layer), or list them in "
                "'ignore'"
            )
        return self.by_class(None)


@dataclasses.dataclass(frozen=True)
class TargetList:
    """Targets with no group of their own (a reader that merged its groups' targets: AWQ), for :class:`GroupTargets`."""

    targets: tuple[str, ...]
    name: str = ""  # (described as the config groups' targets together: describe_targets)


def group_targets(section: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(name, targets)`` of every config group of a compressed-tensors ``section`` (a group without targets targets
    ``"Linear"``, as the plugins read it)."""
    groups = section.get("config_groups")
    return [(str(name), list(group.get("targets", ["Linear"])))
            for name, group in (groups.items() if isinstance(groups, dict) else ()) if isinstance(group, dict)]


def misspelled_class_targets(targets: Iterable[str]) -> str:
    """``, did you mean 'Linear' for 'Lienar'?`` for class-name ``targets`` that name no linear class (nor a
    ``torch.nn`` class) and are close to one — compressed-tensors matches them to no module; "" otherwise."""
    known = sorted(linear_class_names())
    said = []
    for target in targets:
        close = difflib.get_close_matches(target, known, n=1, cutoff=0.75) \
            if is_class_name(target) and target not in known and not hasattr(torch.nn, target) else []
        said += [f"{close[0]!r} for {target!r}"] if close else []
    return f", did you mean {', '.join(said)}?" if said else ""


def untargeted_layer_error(layer: torch.nn.Module, prefix: str, matcher: GroupTargets, ignore: Iterable[str],
                           mapping: dict[str, list[str]]) -> ConfigError:
    """The error for linear ``layer`` (named ``prefix``) that no config group of a compressed-tensors config targets
    (``matcher``) and its ``ignore`` does not name. vLLM's and SGLang's readers refuse such a layer ("Unable to find
    matching target ...") rather than guess: a target that names nothing (a typo, or the model's names for what the
    targets name otherwise) would otherwise leave it in float with no word. A fused layer is named with its checkpoint
    modules (``mapping``: the config's ``packed_modules_mapping``); one the mapping does not know, whose targets may
    name its parts by their own names, is told to pass the model's mapping. (Was: built unquantized, silently.)"""
    from fastvideo_quant.quantization.base import fused_parts

    if not prefix:  # (targets by name or pattern cannot name a layer built without its name)
        return ConfigError(
            f"compressed-tensors config: linear layer {type(layer).__name__} was built without prefix= (its module "
            f"name), so no target but a class name can name it ({matcher.describe()}): build it with prefix= its name "
            "as the checkpoint names it (f\"{prefix}.<attribute>\": its parent module's prefix and its attribute name)"
        )
    parts = fused_parts(prefix, mapping)
    named = f"{type(layer).__name__} {prefix!r}" + (f" (checkpoint modules {parts})" if parts else "")
    targets = [t for g in matcher.groups for t in g.targets]
    fused = len(getattr(layer, "output_sizes", ()) or ()) > 1 and not parts
    leaf = prefix.rpartition(".")[2]
    mapping_note = (
        f" {type(layer).__name__} {leaf!r} fuses several checkpoint modules, and the config's packed_modules_mapping "
        f"does not say which ({sorted(mapping)} only), so targets naming them cannot name it: pass the model's "
        f"mapping, resolve_quant_config(..., packed_modules_mapping={{{leaf!r}: [<its checkpoint modules>]}})."
        if fused else "")
    return ConfigError(
        f"compressed-tensors config: no config group targets linear layer {named} and 'ignore' does not name it "
        f"({matcher.describe()}{misspelled_class_targets(targets)}; ignore {list(ignore)}), so it has no scheme: a "
        "compressed-tensors reader quantizes the linear layers its groups target, keeps in float those 'ignore' names, "
        f"and refuses one that is neither, as vLLM does.{mapping_note} If the checkpoint stores it in float, add it to "
        "'ignore' (or build it with quant_config=None); if quantized, correct the target meant to name it (its name, "
        "an 're:' pattern, or the class 'Linear' for every linear layer)"
    )


def ignore_class_error(layer: torch.nn.Module, prefix: str, ignore: Iterable[str]) -> ConfigError | None:
    """The error for a class-name ``ignore`` entry naming linear ``layer`` (``Linear``, ``ReplicatedLinear``), or None.
    The two readers disagree on it: compressed-tensors matches ``ignore`` by class too and leaves every layer of the
    class in float, vLLM's reader matches names only and quantizes them. (Was: the entry silently applied to nothing,
    and the load failed on the float weights with advice to add the layer to ``ignore``, which already meant it.)"""
    entry = next((e for e in ignore if is_class_name(e) and names_class(e, layer)), None)
    if entry is None:
        return None
    return ConfigError(
        f"compressed-tensors config: ignore entry {entry!r} is a class name, and it names linear layer "
        f"{type(layer).__name__} {prefix!r}: compressed-tensors leaves every layer of that class in float, while vLLM's "
        "reader matches 'ignore' by module name only and quantizes them, so which the checkpoint means is not known. "
        "List the modules meant in 'ignore' by their names or an 're:' pattern ('re:.*adaLN.*')"
    )


def describe_targets(groups: Iterable[tuple[str, Iterable[str]]]) -> str:
    """Config groups' ``(name, targets)`` for messages: ``config_groups.g0.targets ['re:.*attn.*']; ...``; a name ""
    (:class:`TargetList`: every group's targets together) as ``config_groups targets [...]``."""
    return "; ".join(f"config_groups.{name}.targets {list(targets)}" if name else f"config_groups targets {list(targets)}"
                     for name, targets in groups)


def check_keys(args: dict[str, Any], known: tuple[str, ...], where: str, reads: str,
               required: tuple[str, ...] = ()) -> None:
    """ConfigError for a key of ``args`` (at ``where``) close to a ``known`` one (a misspelling, whose value would be
    dropped), or a ``required`` key that is absent (naming what the plugin ``reads``)."""
    for key in args:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if key not in known else []
        if close:
            raise ConfigError(f"compressed-tensors config: key {key!r} of {where} is not a compressed-tensors key; did "
                              f"you mean {close[0]!r}? Rename it (its value would be ignored)")
    for key in required:
        if key not in args:
            raise ConfigError(f"compressed-tensors config: {where} has no {key!r} (found keys {sorted(args)}); {reads}")


def entries(value: Any, where: str, required: bool = False) -> list[str]:
    """A list of class names, module names and ``re:`` patterns (each pattern must compile) at ``where``; ConfigError
    naming it otherwise."""
    if value is None and not required:
        return []
    if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)) or (required and not value):
        raise ConfigError(f"compressed-tensors config: {where} must be a {'non-empty ' if required else ''}list of "
                          f"class names ('Linear'), module names or 're:' patterns, found {value!r}")
    for entry in value:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ConfigError(f"compressed-tensors config: {where} entry {entry!r} is not a valid regular "
                                  f"expression ({exc}); fix the pattern after 're:'") from exc
    return list(value)
