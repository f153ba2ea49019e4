"""Which linear layers an fp8 config quantizes: its skip list and compressed-tensors' ``targets`` (a fused layer
through its parts: ``fastvideo_quant.quantization.base.fused_layer_matches``).

compressed-tensors (``utils/match.py``: ``match_name``, ``_match_class``) matches an entry to a module's name by
equality, or by ``re.match`` for an ``re:`` entry, and a class-name target to a module whose class (or a base class) has
that name, ``"Linear"`` naming every linear layer. vLLM's compressed-tensors reader (``compressed_tensors/utils.py``:
``should_ignore_layer``, ``find_matched_target``) matches a fused layer (``qkv_proj``) through the names of the
checkpoint modules it is made of (``q_proj``, ``k_proj``, ``v_proj``: the config's ``packed_modules_mapping``), which
must all agree, since one layer holds one scheme.
"""

from __future__ import annotations

import re

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.compressed_tensors import is_class_name


def compile_patterns(entries: list[str], key: str) -> list[re.Pattern[str]]:
    """The ``re:`` entries of ``entries`` compiled; ConfigError naming the entry and ``key`` for a bad expression."""
    patterns = []
    for entry in entries:
        if entry.startswith("re:"):
            try:
                patterns.append(re.compile(entry[3:]))
            except re.error as exc:
                raise ConfigError(f"fp8 config: {key} entry {entry!r} is not a valid regular expression ({exc}); fix "
                                  "the pattern after 're:'") from exc
    return patterns


def linear_class_names() -> set[str]:
    """The class names a target may use to name our linear layers."""
    from fastvideo_quant.layers.linear import LinearBase

    found, stack = {"Linear", "Module"}, [LinearBase]
    while stack:
        cls = stack.pop()
        found.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return found


def may_name_a_linear_layer(target: str) -> bool:
    """False for a target that can only be a class name of another kind (``Embedding``, ``Conv2d``): not an ``re:``
    pattern, no dot, capitalized, and no linear class's name. Module names and patterns may name any layer."""
    return not is_class_name(target) or target in linear_class_names()
