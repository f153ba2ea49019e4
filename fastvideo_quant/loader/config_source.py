"""Where a load's quantization settings come from, for the hints that say where to change one.

A checkpoint directory's load reads its declaration (config.json's ``quantization_config``, or a method file), and
``resolve_quant_config(checkpoint=directory)`` builds the layers from it: a setting that contradicts the stored tensors
is fixed there. A checkpoint given as one ``.safetensors`` file is loaded without reading any config.json, even one
beside it (``resolve_quant_config(checkpoint=file)`` is refused): its settings are those of the config the layers were
built with, and the fix is said in terms of what the user passes — a ``quantization_config`` dict, or the directory
whose config.json declares it. The declaration beside the file is read here for the hints only (one that cannot be
read is said so, with why). The ``fvq quantize`` command a float file is told to run names its directory only where
that directory is the file alone with a config.json declaring no method.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path

from fastvideo_quant.processing import names

#: How a hint says that a load of one file read no config.json (not even the one beside it: the load is the file's).
ONE_FILE = "the checkpoint was given as one file, so no config.json was read"


@dataclasses.dataclass
class ConfigSource:
    """What a load of ``path`` reads of the checkpoint's quantization declaration: ``read``, the first declaration of a
    method the load read (a directory's); for one file, :attr:`beside`, the first its directory declares (never read by
    the load; read here when a hint asks, so a load that succeeds reads no config.json). ``directory`` is what
    ``resolve_quant_config(checkpoint=...)`` takes: the path, or the file's directory. Where the declaration beside
    the file cannot be read (a truncated config.json), :attr:`beside_error` says why and :attr:`beside` is None."""

    path: str
    directory: str
    one_file: bool
    read: object | None = None

    @functools.cached_property
    def _beside_read(self) -> tuple[object | None, str | None]:
        """(the first method the file's directory declares, None) or, where that cannot be read, (None, why)."""
        if not self.one_file:
            return None, None
        try:
            from fastvideo_quant.quantization.selection import checkpoint_declarations

            return _first_method(checkpoint_declarations(self.directory)), None
        except Exception as exc:  # noqa: BLE001 - only a hint: it says why, and the load's own error is raised
            return None, str(exc) or type(exc).__name__

    @property
    def beside(self) -> object | None:
        return self._beside_read[0]

    @property
    def beside_error(self) -> str | None:
        return self._beside_read[1]

    @property
    def config_json(self) -> str:
        """The config.json ``resolve_quant_config(checkpoint=directory)`` reads."""
        return str(Path(self.directory) / "config.json")

    @property
    def config_json_unread(self) -> bool:
        """Whether what could not be read beside the file is its config.json (the error names that file first; else a
        method file, or an error naming none)."""
        return self.beside_error is not None and self.beside_error.startswith(self.config_json)

    @property
    def beside_unread(self) -> str | None:
        """``the config.json beside it could not be read (<why>)``, or None where it was read, or there is none."""
        if self.beside_error is None:
            return None
        what = "the config.json" if self.config_json_unread else "the quantization declaration"
        return f"{what} beside it could not be read ({self.beside_error})"


def config_source(path, declarations: list) -> ConfigSource:
    """:class:`ConfigSource` of a load of ``path`` whose check read ``declarations`` (empty for a file)."""
    from fastvideo_quant.loader.files import declaring_directory

    directory = declaring_directory(path)
    if directory is None:
        return ConfigSource(str(path), str(Path(path).parent), True)
    return ConfigSource(str(path), str(directory), False, read=_first_method(declarations))


def _first_method(declarations: list) -> object | None:
    """The first declaration of a quantization method (one declaring none, "unquantized", is no method's settings)."""
    return next((d for d in declarations if d.method not in ("unquantized", "none")), None)


def beside_settings_line(source: ConfigSource, name: str, written: str, built: str, layers: list[str]) -> str:
    """For one file whose directory declares method ``name`` with other settings than the layers were built with
    (``written`` against ``built``, as ``key=value``): that declaration, and the call that builds the layers from it."""
    beside = source.beside
    return (f"{ONE_FILE}, and {beside.source} beside it declares "
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
            where = f"{declared.source} beside the file ({ONE_FILE} by the load; the layers were built with its settings)"
        return (f"{said}: set them in {where}, then build the layers from it again, quant_config=resolve_quant_config("
                f"checkpoint={source.directory!r}) (from fastvideo_quant.quantization), and load again")
    if source.one_file:
        beside = source.beside_unread or (f"none beside it declares {name!r}" if declared is None else None)
        why = ONE_FILE + (f" (and {beside})" if beside is not None else
                          f" ({declared.source} beside it declares {declared.method!r}, not {name!r})")
    else:
        why = "the checkpoint declares no quantization method (no config.json quantization_config)"
    try:
        section = f"{config.to_dict()!r}"
    except Exception:  # noqa: BLE001 - a config that cannot write its settings: the call is named without them
        section = "{...}"
    return (f"{said}: {why}, so they are the settings of the config the layers were built with: build the layers with "
            f"those set, quant_config=resolve_quant_config(hf_config={{'quantization_config': {section}}}) with the "
            f"setting(s) above changed (from fastvideo_quant.quantization), then load again; or "
            f"{put_in_config_json(source, 'that quantization_config', unread_said=True)}")


def put_in_config_json(source: ConfigSource, what: str, *, unread_said: bool = False) -> str:
    """``put {what} in <directory>/config.json and build them with resolve_quant_config(checkpoint=<directory>)``: the
    way to build a file's layers from a declaration of their own. Where the declaration beside the file could not be
    read, it is to be repaired first (with why, unless the line said it already: ``unread_said``)."""
    path = source.config_json
    build = f"build them with resolve_quant_config(checkpoint={source.directory!r})"
    if source.beside_error is None:
        return f"put {what} in {path!r} and {build}"
    why = "" if unread_said else f", which could not be read ({source.beside_error})"
    if source.config_json_unread:
        return f"repair {path!r}{why}, put {what} in it and {build}"
    return f"repair the declaration beside the file{why or ' (see above)'}, put {what} in {path!r} and {build}"


def quantize_first(source: ConfigSource, name: str, config: object | None = None, skipped: list[str] | None = None) -> str:
    """The ``fvq quantize`` command that writes a quantized copy of the checkpoint to load instead. It takes a directory
    whose config.json declares no method and reads the weight files :func:`~fastvideo_quant.loader.files.
    checkpoint_files` finds there: a file's directory is named only where that is this file alone; else the file is to
    go in a directory of its own with its model's config.json. ``config``, the config the layers were built with: the
    command carries the settings it gives otherwise than the method's defaults, and ``skipped``, the layers its skip
    list left unquantized (:func:`quantize_flags`), so the checkpoint written is the one those layers read."""
    method = f"--method {name}{quantize_flags(config, skipped)}"
    if not source.one_file:
        return f"quantize the checkpoint first (fvq quantize {source.directory!r} {method} --out DST) and load DST"
    apart = _not_alone(source)
    if apart is None:
        return (f"quantize the checkpoint first (fvq quantize {source.directory!r} {method} --out DST: the file's "
                "directory, whose config.json and this one weight file are what it reads) and load DST")
    return (f"quantize the checkpoint first: fvq quantize takes a directory with the model's config.json and reads its "
            f"weight files, and {apart}: put {Path(source.path).name!r} and its model's config.json (no "
            f"quantization_config) in a directory of their own, run fvq quantize DIR {method} --out DST on it, "
            "and load DST")


def quantize_flags(config: object | None, skipped: list[str] | None = None) -> str:
    """The ``fvq quantize`` flags (with a leading space) that write ``config``'s settings where they are not its
    method's defaults: ``--option key=value`` for each such key and ``--skip=NAME`` for each layer of ``skipped`` (the
    layers its skip list left unquantized; without it, each skip-list entry — an entry that names no module, or
    names by substring as AWQ's do, is one ``--skip`` refuses), or ``--config JSON`` for a compressed-tensors section
    (its groups are one object, its ``ignore`` list in it).
    Load-time keys are left out (``load_options`` when loading); "" when nothing differs, or when the config cannot
    write its settings as JSON (only a hint: the command without them is still the method's)."""
    import json
    import shlex

    from fastvideo_quant.quantization.selection import settings_apart_from_skip_list

    if config is None:
        return ""
    cls = type(config)
    try:
        built, default = settings_apart_from_skip_list(config), settings_apart_from_skip_list(cls.from_config({}))
        if built is None or default is None:
            return ""
        load_time = set(getattr(cls, "load_time_keys", ()))
        skip = [e for e in getattr(config, "modules_to_not_convert", None) or [] if isinstance(e, str)]
        left = list(skipped) if skipped is not None else skip
        if built.get("quant_method") != default.get("quant_method"):  # (another format's section: compressed-tensors)
            section = {k: v for k, v in built.items() if k not in load_time}
            if skip:
                section[config.skip_list_key()] = skip
            return f" --config {shlex.quote(json.dumps(section, separators=(',', ':')))}"
        keys = [k for k in built if k not in load_time and k != "quant_method" and built[k] != default.get(k)]
        return ("".join(f" --option {shlex.quote(f'{k}={_option_value(built[k])}')}" for k in keys)
                + "".join(f" {shlex.quote(f'--skip={e}')}" for e in left))
    except Exception:  # noqa: BLE001 - a setting that is no JSON value (a dtype): the command names the method alone
        return ""


def online_build(config: object) -> str | None:
    """The call that builds layers of ``config``'s settings that quantize a float checkpoint on load:
    ``resolve_quant_config('NAME')`` where it gives no setting but its method's defaults, else
    ``resolve_quant_config(hf_config={'quantization_config': SECTION})``, SECTION being ``config.to_dict()`` (its skip
    list and other settings kept) with each boolean :attr:`~QuantizationConfig.quantized_checkpoint_keys` key turned
    off; with ``load_options=`` for its load-time settings that are not the default (int8's ``fvq_backend``), which
    no section carries on load. None where no such section is known to give those settings on load (a key of another
    kind, a section the config does not read back the same): the caller then describes the config instead. (Was: the
    method's defaults alone, which quantized the layers the skip list had left in float, and dropped settings such as
    per-channel scales.)"""
    cls = type(config)
    name = config.get_name()
    try:
        default = cls.from_config({})
        load_time = set(cls.load_time_keys)
        mine, base = config.to_dict(), default.to_dict()
        options = {k: mine[k] for k in load_time if k in mine and mine[k] != base.get(k)}  # (AWQ's fp8_compute, ...)
        also = f", load_options={options!r}" if options else ""  # (kept: a section without them would drop them)
        if _same_settings(config, default):
            return f"resolve_quant_config({name!r}{also})"
        fixed = cls.quantized_checkpoint_keys
        if any(not isinstance(v, bool) for v in fixed.values()):
            return None
        section = {k: v for k, v in mine.items() if k not in load_time} | {k: not v for k, v in fixed.items()}
        rebuilt = cls.from_config(dict(section))
        if rebuilt.reads_quantized_checkpoint() or not _same_settings(config, rebuilt):
            return None
    except Exception:  # noqa: BLE001 - only a hint: the caller describes the config instead
        return None
    return f"resolve_quant_config(hf_config={{'quantization_config': {section!r}}}{also})"


def _same_settings(config: object, other: object) -> bool:
    """Whether ``other`` has ``config``'s settings and skip list (load-time keys and how the checkpoint is stored
    apart)."""
    from fastvideo_quant.quantization.selection import settings_apart_from_skip_list

    ignored = set(type(config).load_time_keys) | set(type(config).quantized_checkpoint_keys)
    mine, theirs = settings_apart_from_skip_list(config), settings_apart_from_skip_list(other)
    if mine is None or theirs is None:
        return False
    return ({k: v for k, v in mine.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}
            and sorted(config.modules_to_not_convert) == sorted(other.modules_to_not_convert))


def _option_value(value: object) -> str:
    """``value`` as ``--option`` reads it back (JSON, else a string): a string bare where it does not parse as JSON."""
    import json

    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


def _not_alone(source: ConfigSource) -> str | None:
    """Why ``fvq quantize <the file's directory>`` would not quantize the file alone, or None where it would."""
    from fastvideo_quant.loader.files import checkpoint_files

    if not Path(source.config_json).is_file():
        return f"{source.directory!r} has no config.json"
    if source.beside_unread is not None:
        return source.beside_unread
    if source.beside is not None:
        return f"{source.beside.source} beside it declares {source.beside.method!r} (fvq quantize takes a float checkpoint's)"
    try:
        with warnings.catch_warnings():  # (the files beside it are this hint's to name, not a warning's)
            warnings.simplefilter("ignore")
            files = checkpoint_files(source.directory)
    except Exception as exc:  # noqa: BLE001 - only a hint: it says why, and the load's own error is raised
        return f"it would not read {source.directory!r} as one checkpoint ({exc})"
    file = Path(source.path).resolve()
    if [f.resolve() for f in files] == [file]:
        return None
    together = " as one checkpoint" if len(files) > 1 else ""
    this = "" if file in {f.resolve() for f in files} else ", not this file"
    return f"in {source.directory!r} it would read {names([f.name for f in files], limit=3)}{together}{this}"
