"""Reading compressed-tensors ``pack-quantized`` int4 weight-only sections (llm-compressor W4A16 and W4A16_ASYM).

The section (compressed-tensors ``QuantizationConfig``; ``QuantizationArgs`` in ``quantization/quant_args.py``):
``{"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {name: {"targets": [...],
"weights": {"num_bits": 4, "type": "int", "symmetric": true|false, "strategy": "group"|"channel", "group_size":
128|64|32|null, "dynamic": false, "actorder": null|"weight"|"group", ...}, "input_activations": null}}, "ignore":
[...]}``. ``targets`` and ``ignore`` name modules by class (``"Linear"``), by name, or by an ``re:`` pattern matched
with ``re.match`` (compressed-tensors ``utils/match.py``; vLLM ``compressed_tensors/utils.py``); a fused layer goes by
its checkpoint modules (``fused_layer_matches``). The tensors: ``fvq_awq.ct_format``.

AWQ claims the W4A16 family (:func:`is_w4a16`: pack-quantized, every group's weights 4-bit ints, no activation
quantization) and reads it, or refuses a setting its kernels cannot run naming the field, the value found and what
it reads (:func:`parse`). Other compressed-tensors schemes (W8A16, W4A8, FP8, NVFP4) are left to other plugins.
"""

from __future__ import annotations

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

CT_FORMAT = "pack-quantized"
#: Group sizes the AWQ kernels run for strategy ``group`` (strategy ``channel`` is group_size -1 there).
CT_GROUP_SIZES = (32, 64, 128)
#: ``actorder`` values that keep contiguous groups (no ``weight_g_idx``); ``weight``'s alias is ``static``.
CONTIGUOUS_ACTORDER = (None, False, "weight", "static")
#: The ``actorder`` that stores a ``weight_g_idx`` (each input's group, anywhere in the input): ``fvq_awq.act_order``.
GROUP_ACTORDER = "group"
READS = ("awq reads compressed-tensors W4A16 checkpoints (llm-compressor W4A16 / W4A16_ASYM): format "
         f"'{CT_FORMAT}', weights {{num_bits: 4, type: 'int', symmetric: true|false, strategy: 'group' (group_size "
         f"{', '.join(map(str, CT_GROUP_SIZES))}) | 'channel', dynamic: false, actorder: null|'weight'|'group' "
         "('group' with strategy 'group')}, input_activations null")


def is_w4a16(section: dict[str, Any]) -> bool:
    """Whether a section is of the W4A16 family AWQ claims: compressed-tensors, format pack-quantized, and every config
    group int 4-bit weights with neither input nor output activations quantized. ``parse`` then reads it or names
    what its kernels cannot run (a group size of 256, say)."""
    groups = section.get("config_groups")
    if not is_compressed_tensors(section) or section.get("format") != CT_FORMAT or not isinstance(groups, dict):
        return False
    return bool(groups) and all(
        isinstance(g, dict) and isinstance(g.get("weights"), dict) and g["weights"].get("num_bits") == 4
        and str(g["weights"].get("type", "int")).lower() == "int"
        and g.get("input_activations") is None and g.get("output_activations") is None
        for g in groups.values())


def has_int4_group(section: dict[str, Any]) -> bool:
    """Whether a compressed-tensors section has a config group of 4-bit integer weights (whatever else it holds)."""
    groups = section.get("config_groups")
    return is_compressed_tensors(section) and isinstance(groups, dict) and any(
        isinstance(g, dict) and isinstance(g.get("weights"), dict) and g["weights"].get("num_bits") == 4
        and str(g["weights"].get("type", "int")).lower() == "int" for g in groups.values())


def parse(section: dict[str, Any]) -> dict[str, Any]:
    """AWQConfig keyword arguments for a compressed-tensors W4A16 section; ConfigError naming the field otherwise."""
    fmt = section.get("format")
    if fmt != CT_FORMAT:
        raise _refused(f"format {fmt!r}", "the section", f"awq reads '{CT_FORMAT}' (int4 weights, eight to an int32)")
    groups = section.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _refused(f"config_groups {groups!r}", "the section", "awq needs one config group (or several of one "
                       "scheme)")
    section.get("version")  # (compressed-tensors' own version: every one is read alike; asked, so not "unread")
    problem = runtime_work_problem(section, "awq")
    if problem is not None:
        raise ConfigError(problem)
    schemes = {str(name): _group(str(name), group) for name, group in groups.items()}
    described = {name: _describe(scheme) for name, (scheme, _) in schemes.items()}
    if len(set(described.values())) > 1:
        listed = "; ".join(f"config_groups.{name}: {text}" for name, text in described.items())
        raise ConfigError(f"compressed-tensors config: the config groups hold different schemes ({listed}); awq reads "
                          "one int4 scheme a checkpoint (its layers share one group size and zero-point rule). "
                          "Re-quantize with one scheme, or load the layers of the other scheme unquantized (ignore)")
    (symmetric, group_size, act_order), _ = next(iter(schemes.values()))
    targets = list(dict.fromkeys(t for _, group_targets in schemes.values() for t in group_targets))
    return {"group_size": group_size, "zero_point": not symmetric, "checkpoint_format": CT_METHOD,
            "targets": targets, "modules_to_not_convert": entries(section.get("ignore"), "ignore"),
            "act_order": act_order}


def _group(name: str, group: Any) -> tuple[tuple[bool, int, bool], list[str]]:
    """A config group's ``(symmetric, group_size, act_order)`` (group_size -1: strategy channel) and its targets."""
    where = f"config_groups.{name}"
    if not isinstance(group, dict):
        raise _refused(repr(group), where, "a config group is an object with targets, weights, input_activations")
    check_keys(group, GROUP_KEYS, where, READS)
    if group.get("format") not in (None, CT_FORMAT):
        raise _refused(f"format {group['format']!r}", where, f"awq reads '{CT_FORMAT}'")
    for key, what in (("input_activations", "W4A8 and W4AFP8 quantize the activations too"),
                      ("output_activations", "output activations are quantized")):
        if group.get(key) is not None:
            raise _refused(f"{key} {group[key]!r}", where, f"awq is weight-only (W4A16): {key} must be null; {what}, "
                           "which awq does not")
    targets = entries(group.get("targets", ["Linear"]), f"{where}.targets", required=True)
    return _weights(group.get("weights"), f"{where}.weights"), targets


def _weights(args: Any, where: str) -> tuple[bool, int, bool]:
    if not isinstance(args, dict):
        raise _refused(repr(args), where, "awq reads groups with 4-bit integer weights")
    check_keys(args, ARGS_KEYS, where, READS, required=("num_bits",))
    kind = str(args.get("type", "int")).lower()
    if kind != "int":
        raise _refused(f"type {args['type']!r}", where, "awq reads integer weights (type 'int'); 4-bit floats "
                       "(NVFP4, MXFP4) are another format")
    if args["num_bits"] != 4:
        raise _refused(f"num_bits {args['num_bits']!r}", where, "awq reads 4-bit weights"
                       + ("; 8-bit ones (W8A16) are not AWQ's int4 format" if args["num_bits"] == 8 else ""))
    symmetric = args.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise _refused(f"symmetric {symmetric!r}", where, "symmetric is true (W4A16) or false (W4A16_ASYM)")
    if args.get("dynamic", False) is not False:
        raise _refused(f"dynamic {args['dynamic']!r}", where, "awq reads weights with stored scales (dynamic false)")
    actorder = args.get("actorder")
    if isinstance(actorder, bool):  # (compressed-tensors reads true as 'group', false as null)
        actorder = GROUP_ACTORDER if actorder else None
    elif isinstance(actorder, str):
        actorder = actorder.lower()
        actorder = GROUP_ACTORDER if actorder == "dynamic" else actorder  # (compressed-tensors' alias of 'group')
    if actorder not in CONTIGUOUS_ACTORDER and actorder != GROUP_ACTORDER:
        raise _refused(f"actorder {args['actorder']!r}", where, "actorder is null, 'weight' (alias 'static': "
                       "contiguous groups) or 'group' (alias 'dynamic' or true: a weight_g_idx gives each input its "
                       "group)")
    group_size = _group_size(args, where)
    if actorder == GROUP_ACTORDER and group_size == -1:
        raise _refused(f"actorder {args['actorder']!r} with strategy 'channel'", where, "activation ordering 'group' "
                       "reorders groups of inputs, so it needs strategy 'group' (compressed-tensors refuses it with "
                       "another strategy)")
    return symmetric, group_size, actorder == GROUP_ACTORDER


def _group_size(args: dict[str, Any], where: str) -> int:
    """The group size AWQ runs (-1: strategy channel), from ``strategy`` and ``group_size`` as compressed-tensors
    relates them (``QuantizationArgs.validate_model_after``: without strategy, group_size > 0 is group and -1 channel)."""
    size, strategy = args.get("group_size"), args.get("strategy")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise _refused(f"group_size {size!r}", where, "group_size is an int (or null for strategy 'channel')")
    if strategy is None:
        strategy = "group" if size is not None and size > 0 else "channel" if size == -1 else "tensor"
    strategy = str(strategy).lower()
    if strategy == "channel":
        if size not in (None, -1):
            raise _refused(f"group_size {size!r} with strategy 'channel'", where, "strategy 'channel' has one scale a "
                           "row (group_size null or -1); a positive group_size needs strategy 'group'")
        return -1
    if strategy != "group":
        raise _refused(f"strategy {strategy!r}", where, "awq reads strategy 'group' (a scale per output row and group "
                       "of inputs) or 'channel' (one per output row)")
    if size not in CT_GROUP_SIZES:
        raise _refused(f"group_size {size!r}", where, "the AWQ kernels run groups of "
                       f"{', '.join(map(str, CT_GROUP_SIZES))} inputs (or strategy 'channel'); re-quantize with one "
                       "of them")
    return size


def _describe(scheme: tuple[bool, int, bool]) -> str:
    symmetric, group_size, act_order = scheme
    return (("symmetric" if symmetric else "asymmetric") + (", channel" if group_size == -1 else f", group {group_size}")
            + (", actorder group" if act_order else ""))


def _refused(found: str, where: str, reads: str) -> ConfigError:
    return ConfigError(f"compressed-tensors config: {found} of {where}: {reads}. This checkpoint is not one awq can "
                       f"load ({READS})")


def to_section(group_size: int, symmetric: bool, targets: list[str], ignore: list[str],
               act_order: bool = False) -> dict[str, Any]:
    """The compressed-tensors section describing these tensors (one config group)."""
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric,
               "strategy": "channel" if group_size == -1 else "group",
               "group_size": None if group_size == -1 else group_size, "dynamic": False,
               "actorder": GROUP_ACTORDER if act_order else None}
    return {"quant_method": CT_METHOD, "format": CT_FORMAT,
            "quantization_status": COMPRESSED_STATUS,  # (else transformers reads no weight_packed: COMPRESSED_STATUS)
            "config_groups": {"group_0": {"targets": list(targets), "weights": weights, "input_activations": None,
                                          "output_activations": None}},
            "ignore": list(ignore)}
