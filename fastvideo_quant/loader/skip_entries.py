"""Skip-list entries that name no module of a loaded model while one is spelled almost like a module's name: a typo
(``proj_ot`` for ``proj_out``) keeps nothing unquantized, silently, in vLLM as here. Warned once a load has written,
where the model is known; an entry naming no module and close to none (a checkpoint's skip list written for a whole
pipeline, ``lm_head`` of another model) is left alone."""

from __future__ import annotations

import difflib

import torch

from fastvideo_quant.errors import CheckpointWarning, warn_at_caller

#: How close (difflib's ratio) an entry must be to a module's name, or to one of its dotted components, to be taken
#: for a misspelling of it.
CLOSE = 0.8


def misspelled_skip_entries(model: torch.nn.Module, mapping: dict[str, list[str]]) -> list[str]:
    """One line per skip-list entry of the configs the model's linear layers were built with that matches no module
    (by the config's own rule, or as a substring) — a fused layer's checkpoint modules (``mapping``, the config's
    ``packed_modules_mapping``: ``q_proj`` of ``qkv_proj``) count as modules — and is close to a module's name,
    saying which."""
    from fastvideo_quant.layers.linear import LinearBase
    from fastvideo_quant.quantization.base import fused_parts
    from fastvideo_quant.quantize.plan import holding_only

    layers = [m for m in model.modules() if isinstance(m, LinearBase)]
    names = {n for n, _ in model.named_modules() if n} | {m.prefix for m in layers if m.prefix}
    for layer in layers:
        for packed in (mapping, getattr(layer.quant_config, "packed_modules_mapping", None) or {}):
            names.update(fused_parts(layer.prefix, packed) or ())
    names = sorted(names)
    if not names:
        return []
    words = sorted({*names, *(part for n in names for part in n.split("."))})
    configs = {id(m.quant_config): m.quant_config for m in layers if m.quant_config is not None}
    lines = []
    for config in configs.values():
        for entry in getattr(config, "modules_to_not_convert", None) or []:
            if not isinstance(entry, str) or not entry or any(entry in n for n in names):
                continue
            one = holding_only(config, entry)
            if any(one.skip_entry_matches(n) for n in names):
                continue
            close = difflib.get_close_matches(entry, words, n=1, cutoff=CLOSE)
            if close:
                lines.append(f"{type(config).__name__} {config.skip_entry_key(entry)} entry {entry!r} names no module of the "
                             f"model, so it keeps nothing unquantized; did you mean {close[0]!r}? (a layer named so "
                             f"was built with {config.get_name()!r})")
    return lines


def warn_misspelled_skip_entries(model: torch.nn.Module, mapping: dict[str, list[str]]) -> None:
    """:func:`misspelled_skip_entries` as one :class:`CheckpointWarning`."""
    lines = misspelled_skip_entries(model, mapping)
    if lines:
        warn_at_caller("; ".join(lines), CheckpointWarning)
