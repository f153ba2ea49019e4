"""What a checkpoint's scale tensors say about its fp8 variant, when they do not fit the config: one hint per setting,
naming the config key and the value the tensors imply (``Fp8Config.stored_tensor_hints``). Where that key is set for
a load — the checkpoint's config.json, or for a checkpoint given as one file (whose load reads no config.json) the
config the layers were built with — the loader says after them (``fastvideo_quant.loader.config_source``).

Per tensor, per channel and block scales, and static activations, are told apart by name and shape (format.py):
``weight_scale`` of one element (per tensor), ``[out, 1]`` (per channel) or a 2-D grid (compressed-tensors block);
``weight_scale_inv`` (block, the fp8 format); ``input_scale`` (static activations). Block grids of a size the config
does not give are read against their weights for the block size they imply, named only where one power of two fits
each dimension across the layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from fastvideo_quant.processing import names as listed

if TYPE_CHECKING:
    from fvq_fp8.config import Fp8Config

#: A checkpoint tensor as the hint reads it: dtype (None when unknown) and shape.
Stored = tuple[torch.dtype | None, tuple[int, ...]]


def stored_tensor_hints(config: Fp8Config, stored: Mapping[str, Stored]) -> list[str]:
    """Hints for the tensors ``stored`` (every checkpoint tensor: name → (dtype, shape)) that contradict ``config``."""
    if not config.is_checkpoint_fp8_serialized:
        return []
    kinds = _weight_scale_kinds(config, stored)
    hints = []
    found = [kind for kind, names in kinds.items() if names]
    if len(found) == 1 and found[0] != config.weight_scale_strategy:
        hints.append(_strategy_hint(config, found[0], kinds[found[0]], stored))
    elif found == ["block"] and config.weight_scale_strategy == "block":
        hints += _block_size_hint(config, kinds["block"], stored)
    inputs = sorted(n for n in stored if n.endswith(".input_scale"))
    scaled = sorted({n.rpartition(".")[0] for names in kinds.values() for n in names})
    without = [m for m in scaled if f"{m}.input_scale" not in stored]
    if inputs and config.activation_scheme == "dynamic" and "block" in found:
        hints.append(_block_static_hint(config, inputs))
    elif inputs and config.activation_scheme == "dynamic" and without:
        hints.append(_some_static_hint(config, inputs, without))
    elif inputs and config.activation_scheme == "dynamic":
        hints.append(_activation_hint(config, "static", inputs))
    elif not inputs and found and config.activation_scheme == "static":
        hints.append(_activation_hint(config, "dynamic", []))
    return hints


def group_scheme_hints(config: Fp8Config, stored: Mapping[str, Stored], limit: int = 3) -> list[str]:
    """For a config of several schemes (``config.scheme_groups``): one line per config group whose modules' stored
    tensors are of another scheme than the group's — the modules, the target that gave them the group, what the group
    declares and what is stored — so that a corrupt tensor can be told from a module in an unexpected group."""
    kinds = {name.rpartition(".")[0]: kind for kind, names in _weight_scale_kinds(config, stored).items()
             for name in names}
    inputs = {n.rpartition(".")[0] for n in stored if n.endswith(".input_scale")}
    found: dict[tuple[str, str, str], list[str]] = {}
    for module, kind in sorted(kinds.items()):
        held = config.target_of_module(module)
        if held is None:
            continue
        target, group = held
        problems = []
        if kind != group.strategy:
            problems.append(f"{_KIND_WORDS[kind]} weight scales")
        if (module in inputs) != (group.activation_scheme == "static"):
            problems.append("an input_scale (static activations)" if module in inputs else "no input_scale")
        if problems:
            found.setdefault((group.name, target, " and ".join(problems)), []).append(module)
    lines = []
    for (name, target, problem), modules in found.items():
        group = next(g for g in config.scheme_groups or () if g.name == name)
        shown = ", ".join(map(repr, modules[:limit])) + (f" and {len(modules) - limit} more" if len(modules) > limit else "")
        lines.append(f"module(s) {shown} hold config_groups.{name} ({group.describe()}) by its target {target!r}, but the "
                     f"checkpoint stores {problem} for them: the tensors or that group's targets are wrong (a module "
                     "takes the group of the target naming it — its name, then 're:' patterns in string order, then "
                     "the class 'Linear')")
    return lines


def _weight_scale_kinds(config: Fp8Config, stored: Mapping[str, Stored]) -> dict[str, list[str]]:
    """The checkpoint's weight scales by the strategy their name and shape imply: tensor, channel, block."""
    kinds: dict[str, list[str]] = {"tensor": [], "channel": [], "block": []}
    for name, (_, shape) in sorted(stored.items()):
        leaf = name.rpartition(".")[2]
        numel = math.prod(shape)
        if leaf == "weight_scale_inv":
            kinds["block"].append(name)
        elif leaf != "weight_scale":
            continue
        elif numel == 1:
            kinds["tensor"].append(name)
        elif len(shape) == 2 and shape[1] == 1:
            kinds["channel"].append(name)
        elif len(shape) == 2:
            kinds["block"].append(name)
    return kinds


def _strategy_hint(config: Fp8Config, kind: str, names: list[str], stored: Mapping[str, Stored]) -> str:
    first = names[0]
    found = f"{len(names)} {_KIND_WORDS[kind]} weight scale(s), e.g. {first!r} {tuple(stored[first][1])}"
    declared = _KIND_WORDS[config.weight_scale_strategy]
    ct = config.checkpoint_format == "compressed-tensors"
    block = _block_size(names, stored) if kind == "block" else None
    if ct:
        value = f"'{kind}'" + (f" with block_structure {list(block) if block else '[block_n, block_k]'}"
                               if kind == "block" else "")
        fix = f"set config_groups.<group>.weights.strategy to {value} in every config group"
    elif kind == "block":
        fix = (f"set \"weight_block_size\": {list(block) if block else '[block_n, block_k]'} (the tiles that give these "
               "grids)")
    elif config.weight_scale_strategy == "block":
        fix = ("remove \"weight_block_size\" (the checkpoint has no weight_scale_inv block grids)"
               + (" and set \"weight_scale_strategy\": \"channel\"" if kind == "channel" else ""))
    elif kind == "channel":
        fix = ("set \"weight_scale_strategy\": \"channel\" (this package's key: vLLM's fp8 format is per tensor only; "
               "per-channel fp8 for other tools is stored as compressed-tensors, strategy 'channel')")
    else:
        fix = "remove \"weight_scale_strategy\" (per tensor is the default) or set it to \"tensor\""
    return (f"the checkpoint stores {found}, but the {_section(config)} declares {declared} weight scales: the tensors "
            f"imply weight scale strategy {kind!r}; {fix}")


def _block_size_hint(config: Fp8Config, names: list[str], stored: Mapping[str, Stored]) -> list[str]:
    """The block size the stored grids imply, where the config's does not give their shapes and one power of two a
    dimension fits every layer (:func:`_block_size`); else nothing (a grid of one row fits any bn >= out, and a
    checkpoint whose grids fit no size is not a block-size mistake)."""
    names = [n for n in names if n.rpartition(".")[2] == config.block_scale_name]
    pairs = _grid_pairs(names, stored)
    declared = tuple(config.weight_block_size or ())
    if not pairs or len(declared) != 2 or _fits(pairs, *declared):
        return []
    implied = _block_size(names, stored)
    if implied is None:
        return []
    first = names[0]
    ct = config.checkpoint_format == "compressed-tensors"
    key = "config_groups.<group>.weights.block_structure" if ct else "weight_block_size"
    fix = (f"set config_groups.<group>.weights.block_structure to {list(implied)} in every config group" if ct else
           f"set \"weight_block_size\": {list(implied)}")
    return [f"{key}: the {_section(config)} says {list(declared)}; the stored {config.block_scale_name} grids of all "
            f"{len(names)} layers (each (ceil(out/bn), ceil(in/bk)) of its weight, e.g. {first!r} "
            f"{tuple(stored[first][1])} for weight {tuple(pairs[0][0])}) fit {list(implied)} and no other power-of-two "
            f"block size: {fix}"]


def _activation_hint(config: Fp8Config, scheme: str, inputs: list[str]) -> str:
    ct = config.checkpoint_format == "compressed-tensors"
    if scheme == "static":
        found = f"{len(inputs)} input_scale tensor(s) (static activation scales), e.g. {inputs[0]!r}"
        fix = ("set config_groups.<group>.input_activations.dynamic to false (strategy 'tensor')" if ct else
               "set \"activation_scheme\": \"static\"")
    else:
        found = "no input_scale tensor (dynamic activations)"
        fix = ("set config_groups.<group>.input_activations.dynamic to true" if ct else
               "set \"activation_scheme\": \"dynamic\"")
    return (f"the checkpoint stores {found}, but the {_section(config)} declares {config.activation_scheme} "
            f"activations: the tensors imply activation_scheme {scheme!r}; {fix}")


def _some_static_hint(config: Fp8Config, inputs: list[str], without: list[str]) -> str:
    """input_scale tensors for some of the fp8 layers only: static activations would need one for every layer, so
    the advice is not to set them (a stray tensor, or schemes mixed by layer). (Was: "set "activation_scheme":
    "static"" on any one input_scale, which then refused every layer without one as missing its input_scale.)"""
    layers = [n.rpartition(".")[0] for n in inputs]
    ct = config.checkpoint_format == "compressed-tensors"
    mixed = ("give those layers a config group of their own with input_activations.dynamic false (strategy 'tensor')"
             if ct else "declare it in a compressed-tensors config (the fp8 format has one activation scheme for all "
             "layers): a config group for those layers with input_activations.dynamic false")
    return (f"the checkpoint stores an input_scale (static activation scale) for {len(layers)} of its "
            f"{len(layers) + len(without)} fp8 layers ({listed(layers, limit=3)}) and none for the others "
            f"({listed(without, limit=3)}); "
            f"the {_section(config)} declares dynamic activations, and static ones would need an input_scale for every "
            f"layer. If those tensors are stray, remove them from the checkpoint; if the checkpoint runs static "
            f"activations for those layers only, {mixed}")


def _block_static_hint(config: Fp8Config, inputs: list[str]) -> str:
    """input_scale tensors beside block-scaled weights: static activations are not a scheme block weights run (their
    activations are quantized per token and block at run time), so no setting reads them: they are stray. (Was: the
    advice to declare static activations, which the config then refuses for block weights.)"""
    return (f"the checkpoint stores {len(inputs)} input_scale tensor(s) (static activation scales), e.g. "
            f"{inputs[0]!r}, beside block-scaled weights ({config.block_scale_name}), but block-scaled weights run "
            "dynamic activations only (quantized per token and block at run time; the fp8 config refuses static ones "
            "with them), so no setting reads those tensors: remove them from the checkpoint")


def _section(config: Fp8Config) -> str:
    return "compressed-tensors config" if config.checkpoint_format == "compressed-tensors" else "fp8 config"


_KIND_WORDS = {"tensor": "per-tensor", "channel": "per-channel ([out, 1])", "block": "block"}


def _grid_pairs(names: list[str], stored: Mapping[str, Stored]) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """(weight shape, grid shape) of each block scale ``names``; None when a weight is not stored or not 2-D."""
    pairs = []
    for name in names:
        weight = stored.get(f"{name.rpartition('.')[0]}.weight")
        grid = stored[name][1]
        if weight is None or len(weight[1]) != 2 or len(grid) != 2:
            return None
        pairs.append((tuple(weight[1]), tuple(grid)))
    return pairs


def _fits(pairs: list[tuple[tuple[int, ...], tuple[int, ...]]], bn: int, bk: int) -> bool:
    return all(math.ceil(w[0] / bn) == g[0] and math.ceil(w[1] / bk) == g[1] for w, g in pairs)


#: The block sizes a grid is read against: powers of two from 16 to 4096 (FP8_BLOCK and DeepSeek write 128).
_BLOCK_SIZES = [2 ** k for k in range(4, 13)]


def _block_size(names: list[str], stored: Mapping[str, Stored]) -> tuple[int, int] | None:
    """The block size every grid fits with its module's weight ([ceil(out/bn), ceil(in/bk)]) when exactly one power of
    two (16 to 4096) fits each dimension across the layers; None when none or several do (a grid of one row fits any
    bn >= out: the layers of a small model may leave the size open), or a weight is not stored. (Was: [128, 128] tried
    first, so an open size was said to be 128.)"""
    pairs = _grid_pairs(names, stored)
    if not pairs:
        return None
    rows = [bn for bn in _BLOCK_SIZES if all(math.ceil(w[0] / bn) == g[0] for w, g in pairs)]
    cols = [bk for bk in _BLOCK_SIZES if all(math.ceil(w[1] / bk) == g[1] for w, g in pairs)]
    return (rows[0], cols[0]) if len(rows) == 1 and len(cols) == 1 else None
