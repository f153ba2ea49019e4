"""Reading compressed-tensors ``float-quantized`` configs (the llm-compressor FP8, FP8_DYNAMIC and FP8_BLOCK recipes).

The layout (compressed-tensors ``QuantizationConfig``): ``config_groups`` maps a group name to ``{"targets": [...],
"weights": {"num_bits": 8, "type": "float", "strategy": "tensor"|"channel"|"block", "block_structure": [bn, bk],
"symmetric": true, "dynamic": false, ...}, "input_activations": {"num_bits": 8, "type": "float", "dynamic": true|false,
...} | null}``; ``targets`` are class names (``"Linear"``) or module names, ``re:``-prefixed entries being regular
expressions, and ``ignore`` lists modules the same way. Tensors are named ``weight``, ``weight_scale`` (``[1]``,
``[out, 1]``, or ``[ceil(out/bn), ceil(in/bk)]`` for block — compressed-tensors ``initialize.py``) and ``input_scale``
(``[1]``). llm-compressor's presets (``quantization/quant_scheme.py``): FP8 = tensor weights + static tensor
activations, FP8_DYNAMIC = channel weights + dynamic token activations, FP8_BLOCK = ``[128, 128]`` block weights + dynamic
activations in groups of 128 columns.

Config groups may hold different fp8 schemes (FP8 static for attention, FP8_DYNAMIC elsewhere): each linear layer then
holds the scheme of the group that targets it (``Fp8Config.scheme_group_for``), as vLLM's compressed-tensors reader
gives each layer its group's scheme.

A section of float weights fp8 cannot read is refused naming the field, the value found and what fp8 reads
(``reading_problem``), so that a checkpoint of another compressed-tensors scheme is not reported as a method no plugin
registers; one of integer weights (``has_integer_weights``) is the integer readers' to explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.compressed_tensors import (
    ARGS_KEYS,
    COMPRESSED_STATUS,
    CT_METHOD,
    GROUP_KEYS,
    check_keys,
    entries,
    is_compressed_tensors,
    runtime_work_problem,
)

CT_FORMATS = ("float-quantized", "naive-quantized")
WEIGHT_STRATEGIES = ("tensor", "channel", "block")
READS = ("fp8 reads compressed-tensors float8 checkpoints: format 'float-quantized', every config group with weights "
         "{num_bits: 8, type: 'float', symmetric: true, strategy: 'tensor'|'channel'|'block'} and input_activations "
         "{num_bits: 8, type: 'float'}")


def is_fp8_compressed_tensors(section: dict[str, Any]) -> bool:
    """True when a compressed-tensors section is one fp8 reads (W8A8 float8, tensor/channel/block weight scales)."""
    return is_compressed_tensors(section) and reading_problem(section) is None


def has_integer_weights(section: dict[str, Any]) -> bool:
    """Whether a config group of the section declares integer weights (``type`` 'int', or no ``type``:
    compressed-tensors' ``QuantizationArgs`` default) — a scheme of the integer readers, never fp8's."""
    groups = section.get("config_groups")
    return isinstance(groups, dict) and any(
        isinstance(g, dict) and isinstance(g.get("weights"), dict)
        and str(g["weights"].get("type", "int")).lower() == "int" for g in groups.values())


def reading_problem(section: dict[str, Any]) -> str | None:
    """Why fp8 cannot read this compressed-tensors section (the field, the value found, what fp8 reads), or None."""
    try:
        parse_compressed_tensors(section)
    except ConfigError as exc:
        return str(exc)
    return None


def parse_compressed_tensors(section: dict[str, Any]) -> dict[str, Any]:
    """Fp8Config keyword arguments for a compressed-tensors float-quantized section; ConfigError naming the field
    fp8 cannot use otherwise."""
    fmt = section.get("format")
    if fmt not in CT_FORMATS:
        raise _refused(f"format {fmt!r}", "the section", "fp8 reads 'float-quantized' (float8 weights; "
                       "'naive-quantized' too)" + (f"; an {fmt!r} checkpoint stores integer weights, not fp8" if
                                                   str(fmt).startswith("int") else ""))
    groups = section.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _refused(f"config_groups {groups!r}", "the section", "fp8 needs at least one config group")
    problem = runtime_work_problem(section, "fp8")
    if problem is not None:
        raise ConfigError(problem)
    groups_read = []
    for name, group in groups.items():
        scheme, group_targets = _group_scheme(name, group)
        groups_read.append(SchemeGroup(str(name), tuple(group_targets), *scheme))
    _check_one_scheme_a_target(groups_read)
    targets = list(dict.fromkeys(t for group in groups_read for t in group.targets))
    first = groups_read[0]
    mixed = len({group.scheme for group in groups_read}) > 1
    return {
        "is_checkpoint_fp8_serialized": True,
        "activation_scheme": first.activation_scheme,
        "weight_scale_strategy": first.strategy,
        "weight_block_size": list(first.block) if first.block else None,
        "ignored_layers": entries(section.get("ignore"), "ignore"),
        "targets": targets,
        "checkpoint_format": CT_METHOD,
        # Several schemes: each layer takes its group's (SchemeGroup docs); one: the config's own fields say it.
        "scheme_groups": groups_read if mixed else None,
    }


@dataclass(frozen=True)
class SchemeGroup:
    """One compressed-tensors config group fp8 reads: its name, ``targets``, and the scheme its layers hold — weight
    scale ``strategy`` (``tensor`` / ``channel`` / ``block``), ``block`` ``(bn, bk)`` for block scales, and
    ``activation_scheme`` (``dynamic``: per token at run time; ``static``: a stored ``input_scale``)."""

    name: str
    targets: tuple[str, ...]
    strategy: str
    block: tuple[int, int] | None
    activation_scheme: str

    @property
    def scheme(self) -> tuple[str, tuple[int, int] | None, str]:
        return self.strategy, self.block, self.activation_scheme

    def describe(self) -> str:
        return _describe(self.scheme)


def _check_one_scheme_a_target(groups: list[SchemeGroup]) -> None:
    """ConfigError for a target entry two groups list with different schemes: the layers it names would hold both."""
    seen: dict[str, SchemeGroup] = {}
    for group in groups:
        for target in group.targets:
            other = seen.setdefault(target, group)
            if other.scheme != group.scheme:
                raise ConfigError(
                    f"compressed-tensors config: target {target!r} is listed by config_groups.{other.name} "
                    f"({other.describe()}) and config_groups.{group.name} ({group.describe()}); the layers it names "
                    "can hold one scheme. List it in one group"
                )


def _group_scheme(name: str, group: Any) -> tuple[tuple[str, tuple[int, int] | None, str], list[str]]:
    """A group's ``(weight strategy, block, activation scheme)`` and its targets."""
    where = f"config_groups.{name}"
    if not isinstance(group, dict):
        raise _refused(f"{group!r}", where, "a config group is an object with targets, weights, input_activations")
    check_keys(group, GROUP_KEYS, where, READS)
    if group.get("format") not in (None, *CT_FORMATS):
        raise _refused(f"format {group['format']!r}", where, f"fp8 reads {' and '.join(map(repr, CT_FORMATS))}")
    # (a group without targets — hand-written; compressed-tensors itself requires them — targets llm-compressor's
    # default, every Linear)
    targets = entries(group.get("targets", ["Linear"]), f"{where}.targets", required=True)
    strategy, block = _weights(group.get("weights"), f"{where}.weights")
    activations = _activations(group.get("input_activations"), f"{where}.input_activations", strategy)
    return (strategy, block, activations), targets


def _weights(args: Any, where: str) -> tuple[str, tuple[int, int] | None]:
    if not isinstance(args, dict):
        raise _refused(f"{args!r}", where, "fp8 reads groups with 8-bit float weights")
    check_keys(args, ARGS_KEYS, where, READS, required=("num_bits", "type", "strategy"))
    if args["type"] != "float":
        raise _refused(f"type {args['type']!r}", where, "fp8 reads float weights (type 'float', num_bits 8); "
                       "integer ones (W8A8-INT8, W4A16) are another method's")
    if args["num_bits"] != 8:
        raise _refused(f"num_bits {args['num_bits']!r}", where, "fp8 reads 8-bit float weights (float8 e4m3); "
                       "4-bit floats (NVFP4, MXFP4) are another format")
    if args.get("symmetric", True) is not True:
        raise _refused(f"symmetric {args['symmetric']!r}", where, "fp8 reads symmetric weights (a scale and no "
                       "weight_zero_point)")
    if args.get("dynamic", False) is not False:
        raise _refused(f"dynamic {args['dynamic']!r}", where, "fp8 reads weights with stored scales (dynamic false)")
    strategy = args["strategy"]
    if strategy not in WEIGHT_STRATEGIES:
        raise _refused(f"strategy {strategy!r}", where, f"fp8 reads {', '.join(map(repr, WEIGHT_STRATEGIES))} "
                       "weight scales" + ("; group-wise scales (W8A16/W4A16 recipes) are not read" if strategy ==
                                          "group" else ""))
    if strategy != "block":
        return strategy, None
    block = args.get("block_structure")
    if isinstance(block, str) and "x" in block:  # (early compressed-tensors wrote "128x128")
        block = [int(b) if b.strip().isdigit() else b for b in block.split("x")]
    if not (isinstance(block, list) and len(block) == 2 and all(type(b) is int and b > 0 for b in block)):
        raise _refused(f"block_structure {args.get('block_structure')!r}", where,
                       "strategy 'block' needs block_structure [block_n, block_k] of positive ints (FP8_BLOCK: [128, 128])")
    return strategy, (block[0], block[1])


def _activations(args: Any, where: str, weights: str) -> str:
    if args is None:
        raise ConfigError(
            f"compressed-tensors config: {where} is null (weight-only fp8, W8A16); fp8 runs W8A8 only. Re-export with "
            "input_activations {num_bits: 8, type: 'float'}"
        )
    if not isinstance(args, dict):
        raise _refused(f"{args!r}", where, "input_activations is an object {num_bits: 8, type: 'float', dynamic: ...}")
    check_keys(args, ARGS_KEYS, where, READS, required=("num_bits", "type"))
    if args["num_bits"] != 8 or args["type"] != "float":
        raise _refused(f"num_bits {args['num_bits']!r} type {args['type']!r}", where,
                       "fp8 quantizes activations to 8-bit float (num_bits 8, type 'float')")
    if args.get("symmetric", True) is not True:
        raise _refused(f"symmetric {args['symmetric']!r}", where, "fp8 reads symmetric activation scales (no zero point)")
    dynamic = args.get("dynamic", False)
    if dynamic is True:
        # Dynamic activations are quantized per token (row) whatever the recorded strategy (token, tensor, or group for
        # block weights, where the block path quantizes per token and block_k columns): at least as accurate, and the
        # weights are read exactly either way.
        return "dynamic"
    if dynamic is not False:
        raise _refused(f"dynamic {dynamic!r}", where, "fp8 reads dynamic true (per token at run time) or false (a "
                       "stored input_scale)")
    if weights == "block":
        raise _refused("dynamic false", where, "with weights strategy 'block' fp8 quantizes activations at run time: "
                       "dynamic true (as llm-compressor's FP8_BLOCK writes)")
    if args.get("strategy", "tensor") not in ("tensor", None):
        raise _refused(f"strategy {args['strategy']!r} with dynamic false", where,
                       "static activation scales are one per tensor (strategy 'tensor', an input_scale [1])")
    return "static"


def _refused(found: str, where: str, reads: str) -> ConfigError:
    return ConfigError(f"compressed-tensors config: {found} of {where}: {reads}. This checkpoint is not one fp8 can "
                       "load; re-export it with an FP8 scheme (llm-compressor FP8, FP8_DYNAMIC or FP8_BLOCK), or use a "
                       "plugin that reads its scheme")


def _describe(scheme: tuple) -> str:
    strategy, block, activations = scheme
    return f"weights {strategy!r}" + (f" {block}" if block else "") + f", {activations} activations"


def to_compressed_tensors(strategy: str, activation_scheme: str, ignore: list[str], targets: list[str] | None = None,
                          block: tuple[int, int] | None = None,
                          groups: list[SchemeGroup] | None = None) -> dict[str, Any]:
    """The compressed-tensors section describing the same checkpoint tensors: one config group, or ``groups``."""
    if groups is None:
        groups = [SchemeGroup("group_0", tuple(targets or ["Linear"]), strategy, block, activation_scheme)]
    return {
        "quant_method": CT_METHOD,
        "format": "float-quantized",
        "quantization_status": COMPRESSED_STATUS,  # (else transformers reads float weights: COMPRESSED_STATUS)
        "config_groups": {group.name: _group_section(group) for group in groups},
        "ignore": list(ignore),
    }


def _group_section(group: SchemeGroup) -> dict[str, Any]:
    dynamic = group.activation_scheme == "dynamic"
    weights: dict[str, Any] = {"num_bits": 8, "type": "float", "strategy": group.strategy, "symmetric": True,
                               "dynamic": False}
    acts: dict[str, Any] = {"num_bits": 8, "type": "float", "strategy": "token" if dynamic else "tensor",
                            "symmetric": True, "dynamic": dynamic}
    if group.block is not None:
        weights["block_structure"] = list(group.block)
        acts.update(strategy="group", group_size=group.block[1])
    return {"targets": list(group.targets), "weights": weights, "input_activations": acts}
