"""Choosing and building a quantization config: by name, from config.json, or from a checkpoint dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fastvideo_quant.errors import ConfigError, MethodUnavailableError, UnknownMethodError
from fastvideo_quant.plugins.manager import get_registry
from fastvideo_quant.plugins.registry import LiveNames
from fastvideo_quant.quantization.base import QuantizationConfig

#: Names of the registered methods, recomputed from the live registry on each use.
QUANTIZATION_METHODS = LiveNames(lambda: sorted(get_registry().by_name))



def get_quantization_config(name: str) -> type[QuantizationConfig]:
    """The config class registered under ``name``; UnknownMethodError listing the available names."""
    registry = get_registry()
    reg = registry.by_name.get(name)
    if reg is None:
        raise UnknownMethodError(
            f"unknown quantization method {name!r}; available: {sorted(registry.by_name)}. "
            "Install the plugin that provides it, or check FVQ_PLUGINS / FVQ_DISABLE_PLUGINS"
        )
    return reg.config_cls


def check_available(config_cls: type[QuantizationConfig]) -> None:
    """Raise MethodUnavailableError when the method's dependencies are missing."""
    reason = config_cls.unavailable_reason()
    if reason:
        raise MethodUnavailableError(f"quantization method {config_cls.get_name()!r} is unavailable: {reason}")


def check_layer_supported(config: QuantizationConfig, params_dtype: torch.dtype, prefix: str) -> None:
    """Refuse a method that cannot run this layer here: dependency, GPU capability, CPU support or dtype."""
    cls = type(config)
    name = cls.get_name()
    check_available(cls)
    dtypes = cls.get_supported_act_dtypes()
    if params_dtype not in dtypes:
        raise MethodUnavailableError(
            f"layer {prefix!r}: quantization method {name!r} supports activation dtypes "
            f"{[str(d) for d in dtypes]}, but the model's dtype is {params_dtype}"
        )
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        have, need = major * 10 + minor, cls.get_min_capability()
        if have < need:
            raise MethodUnavailableError(
                f"layer {prefix!r}: quantization method {name!r} needs a GPU of compute capability "
                f">= {need // 10}.{need % 10}; {torch.cuda.get_device_name()} has {major}.{minor}"
            )
    elif cls.cpu_support() is None:
        raise MethodUnavailableError(f"layer {prefix!r}: quantization method {name!r} needs a CUDA GPU and none is visible")


def quant_section(hf_config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``quantization_config`` (or ``compression_config``) object of a config.json, or None."""
    for key in ("quantization_config", "compression_config"):
        section = hf_config.get(key)
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"config.json's {key!r} must be an object, found {type(section).__name__}")
            return section
    return None


def method_for_quant_section(section: dict[str, Any], user_quant: str | None) -> str:
    """The registered method name that reads a quantization section, honouring override_quantization_method."""
    registry = get_registry()
    for reg in registry.by_name.values():
        claimed = reg.config_cls.override_quantization_method(section, user_quant)
        if claimed is not None:
            return claimed
    method = section.get("quant_method") or section.get("format")
    if not method:
        raise ConfigError(f"quantization config has no 'quant_method'; found keys {sorted(section)}")
    return str(method).lower()


def _from_section(section: dict[str, Any], method: str | None, source: str) -> QuantizationConfig:
    found = method_for_quant_section(section, method)
    if method is not None and method != found:
        raise ConfigError(
            f"quantization method {method!r} was asked for, but {source} is quantized with {found!r}; "
            f"drop the flag or pass {found!r}"
        )
    cls = get_quantization_config(found)
    check_available(cls)
    return cls.from_config(section)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def resolve_quant_config(
    method: str | None = None,
    *,
    hf_config: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> QuantizationConfig | None:
    """Select and build the quantization config; None means unquantized.

    :param method: an explicit method name (a flag). Alone, it builds the method's
        default config (``from_config({})``) for online quantization.
    :param hf_config: a Hugging Face ``config.json`` dict; its ``quantization_config``
        (or ``compression_config``) selects the method.
    :param checkpoint: a checkpoint directory: its ``config.json``, else a method's own
        file from ``get_config_filenames()``.

    A method that contradicts the checkpoint, an unknown name, or a checkpoint
    without a quantization section asked to load as a quantized method is an error;
    nothing falls back to unquantized silently.
    """
    explicit = "unquantized" if method == "none" else (method or None)
    if explicit is not None:
        get_quantization_config(explicit)  # unknown name → error listing names
    source = "the given config"
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_dir():
            raise ConfigError(f"checkpoint directory {str(ckpt)!r} does not exist or is not a directory")
        if (ckpt / "config.json").is_file():
            hf_config = _read_json(ckpt / "config.json")
            source = str(ckpt / "config.json")
        section = quant_section(hf_config or {})
        if section is None:
            section, source = _method_file_section(ckpt, explicit)
        if section is not None:
            return _from_section(section, explicit, source)
    elif hf_config is not None:
        section = quant_section(hf_config)
        if section is not None:
            return _from_section(section, explicit, source)
    if explicit is None:
        return None
    cls = get_quantization_config(explicit)
    check_available(cls)
    if not cls.online_quantization:
        where = f"checkpoint {str(checkpoint)!r} has no quantization config" if checkpoint is not None else \
            "no checkpoint config was given"
        raise ConfigError(
            f"quantization method {explicit!r} cannot quantize a float checkpoint on load ({where}); "
            f"quantize it first: fvq quantize SRC --method {explicit} --out DST, then load DST"
        )
    return cls.from_config({})


def _method_file_section(ckpt: Path, method: str | None) -> tuple[dict[str, Any] | None, str]:
    registry = get_registry()
    regs = [registry.by_name[method]] if method else list(registry.by_name.values())
    for reg in regs:
        for filename in reg.config_cls.get_config_filenames():
            path = ckpt / filename
            if path.is_file():
                section = _read_json(path)
                section.setdefault("quant_method", reg.name)
                return section, str(path)
    return None, str(ckpt)
