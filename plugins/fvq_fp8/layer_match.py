"""Checking the ``re:`` entries of an fp8 config's skip list and compressed-tensors ``targets`` (each must compile).

Which target or ``ignore`` entry names a module is compressed-tensors' rule (``utils/match.py``: ``match_name``,
``_match_class``), kept in one place for this plugin, AWQ's and ``fvq quantize``:
``fastvideo_quant.quantization.compressed_tensors`` (``GroupTargets``, ``ignore_entry``). A fused layer (``qkv_proj``)
goes through the checkpoint modules it is made of, as vLLM's reader matches it (``fused_layer_matches``).
"""

from __future__ import annotations

import re

from fastvideo_quant.errors import ConfigError


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
