"""Where a load's quantization settings come from, for the hints that say where to change one.

A checkpoint directory's load reads its declaration (config.json's ``quantization_config``, or a method file), and
``resolve_quant_config(checkpoint=directory)`` builds the layers from it: a setting that contradicts the stored tensors
is fixed there. A checkpoint given as one ``.safetensors`` file is loaded without reading any config.json, even one
beside it (``resolve_quant_config(checkpoint=file)`` is refused): its settings are those of the config the layers were
built with, and the fix is said in terms of what the user passes — a ``quantization_config`` dict, or the directory
whose config.json declares it. The declaration beside the file is read here for the hints only.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from fastvideo_quant.processing import names


@dataclasses.dataclass
class ConfigSource:
    """What a load of ``path`` reads of the checkpoint's quantization declaration: ``read``, the first declaration of a
    method the load read (a directory's); for one file, :attr:`beside`, the first its directory declares (never read by
    the load; read here when a hint asks, so a load that succeeds reads no config.json). ``directory`` is what
    ``resolve_quant_config(checkpoint=...)`` takes: the path, or the file's directory."""

    path: str
    directory: str
    one_file: bool
    read: object | None = None

    @functools.cached_property
    def beside(self) -> object | None:
        if not self.one_file:
            return None
        try:
            from fastvideo_quant.quantization.selection import checkpoint_declarations

            return _first_method(checkpoint_declarations(self.directory))
        except Exception:  # noqa: BLE001 - only a hint: a declaration that cannot be read is not offered
            return None


def config_source(path, declarations: list) -> ConfigSource:
    """:class:`ConfigSource` of a load of ``path`` whose check read ``declarations`` (empty for a file)."""
    if Path(path).is_file():
        return ConfigSource(str(path), str(Path(path).parent), True)
    return ConfigSource(str(path), str(path), False, read=_first_method(declarations))


def _first_method(declarations: list) -> object | None:
    """The first declaration of a quantization method (one declaring none, "unquantized", is no method's settings)."""
    return next((d for d in declarations if d.method not in ("unquantized", "none")), None)


def beside_settings_line(source: ConfigSource, name: str, written: str, built: str, layers: list[str]) -> str:
    """For one file whose directory declares method ``name`` with other settings than the layers were built with
    (``written`` against ``built``, as ``key=value``): that declaration, and the call that builds the layers from it."""
    beside = source.beside
    return (f"the checkpoint was given as one file, so no config.json was read, and {beside.source} beside it declares "
            f"{name!r} with {written}, but the model's {len(layers)} layer(s) of that method ({names(layers, limit=3)}) "
            f"were built with {built}: build the layers with the config beside the file, quant_config="
            f"resolve_quant_config(checkpoint={source.directory!r}) (from fastvideo_quant.quantization), then load again")


def where_to_set(config, source: ConfigSource) -> str:
    """The line after a layer config's :meth:`~QuantizationConfig.stored_tensor_hints` (each names a key and the value
    the stored tensors imply): where that setting is, for this load, and the call that builds the layers again."""
    name = config.get_name()
    said = f"to set the {name!r} setting(s) above"
    declared = source.read if not source.one_file else source.beside
    if declared is not None and declared.method == name:
        where = f"{declared.source}, whose settings the layers were built with"
        if source.one_file:
            where = (f"{declared.source} beside the file (the checkpoint was given as one file, so the load read no "
                     "config.json; the layers were built with its settings)")
        return (f"{said}: set them in {where}, then build the layers from it again, quant_config=resolve_quant_config("
                f"checkpoint={source.directory!r}) (from fastvideo_quant.quantization), and load again")
    if source.one_file:
        why = "the checkpoint was given as one file, so no config.json was read" + (
            f" (and none beside it declares {name!r})" if declared is None else
            f" ({declared.source} beside it declares {declared.method!r}, not {name!r})")
    else:
        why = "the checkpoint declares no quantization method (no config.json quantization_config)"
    try:
        section = f"{config.to_dict()!r}"
    except Exception:  # noqa: BLE001 - a config that cannot write its settings: the call is named without them
        section = "{...}"
    return (f"{said}: {why}, so they are the settings of the config the layers were built with: build the layers with "
            f"those set, quant_config=resolve_quant_config(hf_config={{'quantization_config': {section}}}) with the "
            f"setting(s) above changed (from fastvideo_quant.quantization), then load again; or put that "
            f"quantization_config in {str(Path(source.directory) / 'config.json')!r} and build them with "
            f"resolve_quant_config(checkpoint={source.directory!r})")
