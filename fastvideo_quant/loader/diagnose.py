"""Hints that say why a tensor is missing or unexpected, for the load's error: a layer's prefix, a fused layer's
missing mapping entry, a positional mapping in the wrong order, a module stored unquantized (or quantized) against
how the model built it, a loaded model's state_dict saved as a checkpoint, a plain tensor attribute or a
non-persistent buffer where a parameter was expected.

They live by concern in :mod:`fastvideo_quant.loader.hints` (``tensor_names``, ``fused``, ``undeclared``, ``probe``,
``quantized``, ``unquantized``, ``config``, ``processed``); this module is where the rest of the loader imports them
from."""

from __future__ import annotations

from fastvideo_quant.loader.hints.config import config_tensor_hints, settings_hints
from fastvideo_quant.loader.hints.fused import WHOLE_SHAPE, fused_name_hints, mixed_fused_parts, order_hint
from fastvideo_quant.loader.hints.processed import kernel_format_hint
from fastvideo_quant.loader.hints.quantized import other_methods_tensors, stored_quantized
from fastvideo_quant.loader.hints.tensor_names import (
    built_as,
    kv_scale_hint,
    name_prefix_hints,
    non_persistent_hint,
    plain_attribute_hint,
    prefix_hints,
    renamed_module_hints,
)
from fastvideo_quant.loader.hints.undeclared import settings_of, undeclared
from fastvideo_quant.loader.hints.unquantized import stored_unquantized

__all__ = [
    "WHOLE_SHAPE",
    "built_as",
    "config_tensor_hints",
    "fused_name_hints",
    "kernel_format_hint",
    "kv_scale_hint",
    "mixed_fused_parts",
    "name_prefix_hints",
    "non_persistent_hint",
    "order_hint",
    "other_methods_tensors",
    "plain_attribute_hint",
    "prefix_hints",
    "renamed_module_hints",
    "settings_hints",
    "settings_of",
    "stored_quantized",
    "stored_unquantized",
    "undeclared",
]
