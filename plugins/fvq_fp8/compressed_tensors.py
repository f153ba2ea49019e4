"""Reading compressed-tensors ``float-quantized`` configs (the llm-compressor FP8 recipes).

The layout (compressed-tensors ``QuantizationConfig``): ``config_groups`` maps a group
name to ``{"targets": [...], "weights": {"num_bits": 8, "type": "float", "strategy":
"tensor"|"channel", ...}, "input_activations": {"dynamic": true|false, ...} | null}``;
``ignore`` lists layer names, ``re:``-prefixed entries being regular expressions.
Tensors are named ``weight``, ``weight_scale`` (``[1]`` or ``[out, 1]``) and ``input_scale``.
"""

from __future__ import annotations

from typing import Any

from fastvideo_quant.errors import ConfigError

CT_METHOD = "compressed-tensors"
CT_FORMATS = ("float-quantized", "naive-quantized")


def _fp8_weights(group: dict[str, Any]) -> bool:
    w = group.get("weights") or {}
    return w.get("num_bits") == 8 and w.get("type") == "float" and w.get("strategy") in ("tensor", "channel")


def is_fp8_compressed_tensors(section: dict[str, Any]) -> bool:
    """True when a compressed-tensors section is W8A8/W8A16 float8 with tensor or channel weight scales."""
    if str(section.get("quant_method", "")).lower() != CT_METHOD:
        return False
    if section.get("format") not in CT_FORMATS:
        return False
    groups = section.get("config_groups") or {}
    return bool(groups) and all(_fp8_weights(g) for g in groups.values())


def parse_compressed_tensors(section: dict[str, Any]) -> dict[str, Any]:
    """Fp8Config keyword arguments for a compressed-tensors float-quantized section; ConfigError otherwise."""
    if not is_fp8_compressed_tensors(section):
        raise ConfigError(
            "compressed-tensors config is not one fp8 reads: expected format 'float-quantized' and every "
            "config group with weights {num_bits: 8, type: 'float', strategy: 'tensor'|'channel'}; found "
            f"format {section.get('format')!r}, groups {section.get('config_groups')!r}"
        )
    schemes = {_scheme(name, g) for name, g in section["config_groups"].items()}
    if len(schemes) != 1:
        raise ConfigError(
            f"compressed-tensors config mixes fp8 schemes across config_groups ({sorted(schemes)}); "
            "fp8 reads one scheme per checkpoint"
        )
    strategy, activation_scheme = schemes.pop()
    return {
        "is_checkpoint_fp8_serialized": True,
        "activation_scheme": activation_scheme,
        "weight_scale_strategy": strategy,
        "ignored_layers": list(section.get("ignore") or []),
        "checkpoint_format": CT_METHOD,
    }


def _scheme(name: str, group: dict[str, Any]) -> tuple[str, str]:
    acts = group.get("input_activations")
    if acts is None:
        raise ConfigError(
            f"compressed-tensors config group {name!r} has no input_activations (weight-only fp8, W8A16); "
            "fp8 runs W8A8 only. Re-export with input_activations {num_bits: 8, type: 'float'}"
        )
    if acts.get("num_bits") != 8 or acts.get("type") != "float":
        raise ConfigError(
            f"compressed-tensors config group {name!r}: input_activations must be 8-bit float, "
            f"found num_bits={acts.get('num_bits')!r} type={acts.get('type')!r}"
        )
    # dynamic activations are quantized per token (row) whatever the recorded strategy: that is
    # at least as accurate as per tensor and the weights are read exactly either way.
    return group["weights"]["strategy"], "dynamic" if acts.get("dynamic") else "static"


def to_compressed_tensors(strategy: str, activation_scheme: str, ignore: list[str]) -> dict[str, Any]:
    """The compressed-tensors section describing the same checkpoint tensors."""
    dynamic = activation_scheme == "dynamic"
    return {
        "quant_method": CT_METHOD,
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True,
                            "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token" if dynamic else "tensor",
                                      "symmetric": True, "dynamic": dynamic},
            }
        },
        "ignore": list(ignore),
    }
