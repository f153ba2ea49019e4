"""Why a load's layers were not built with the checkpoint's method (:class:`Undeclared`: what its config declares,
or that a file given alone reads none), and the fixes' wording that follows from it: the config beside a file, a
method's default config with the settings its stored tensors imply, the skip list or config groups that left layers
unquantized."""

from __future__ import annotations

import dataclasses

import torch

from fastvideo_quant.loader.config_source import ONE_FILE, ConfigSource, config_source, put_in_config_json
from fastvideo_quant.processing import (
    names,
)


@dataclasses.dataclass(frozen=True)
class Undeclared:
    """Why the layers a hint names were not built with the checkpoint's method, for its wording: ``clause`` follows
    "the model built them ...", ``declared`` is the method the checkpoint's config declares (None: none was read), and
    ``source`` what the load read of it (for one file: the declaration beside it, which the fix names instead of a
    default config); :attr:`put_back` ends the "build with the config it was written with" fix."""

    clause: str
    declared: str | None = None
    source: ConfigSource | None = None

    @property
    def put_back(self) -> str:
        """The other way to that config: the checkpoint's config.json (none where one was read; none for one file whose
        directory declares a method, which the fix then names itself)."""
        source = self.source
        if self.declared is not None or source is None:
            return ""
        if not source.one_file:
            return ", or put its config.json back and use resolve_quant_config(checkpoint=path)"
        if source.beside is not None:
            return ""
        return f", or {put_in_config_json(source, 'the quantization_config it was written with')}"


def undeclared(path, declarations: list) -> Undeclared:
    """:class:`Undeclared` for a load of ``path``: its config declares a method (``declarations``, from
    :func:`~fastvideo_quant.loader.checks.check_declared_method`), it is one file (whose directory's config.json a load
    does not read), or a directory that declares none."""
    source = config_source(path, declarations)
    if declarations:
        d = declarations[0]
        return Undeclared(f"though {d.source} declares {d.method!r}", d.method, source)
    if source.one_file:
        return Undeclared(f"and {ONE_FILE} (a load of a file reads none, even one beside it)", None, source)
    return Undeclared("and the checkpoint declares no method (no config.json quantization_config)", None, source)


def _beside_fix(who: str, name: str, why: Undeclared) -> str | None:
    """For one file whose directory declares method ``name``: build ``who`` with that declaration (it is the config the
    checkpoint was written with, where a default config's settings may not be); else None."""
    beside = why.source.beside if why.source is not None else None
    if beside is None or beside.method != name:
        return None
    return (f"build {who} with the config it was written with, which {beside.source} beside the file declares: "
            f"quant_config=resolve_quant_config(checkpoint={why.source.directory!r}) (from fastvideo_quant.quantization)")


def _contradicted(config, shapes) -> str:
    """What the stored tensors (``shapes``: name → (dtype, shape)) imply against a suggested ``config``'s settings (its
    :meth:`~QuantizationConfig.stored_tensor_hints`: per-channel scales against a default per-tensor config), as a
    clause after the suggested call; "" when they fit it or cannot tell."""
    try:
        found = [h for h in config.stored_tensor_hints(shapes or {}) or () if isinstance(h, str)]
    except Exception:  # noqa: BLE001 - only a hint: it must never hide the load's own error
        return ""
    return f" with the setting(s) its stored tensors imply changed in it ({'; '.join(found)})" if found else ""


def _build_with_default(who: str, name: str, config) -> str:
    """``build {who} with the config it was written with, e.g. ...``: method ``name``'s default ``config`` (one that
    reads its quantized checkpoints) as the call to make."""
    return (f"build {who} with the config it was written with, e.g. for {name!r} with its default settings "
            f"quant_config=resolve_quant_config(hf_config={{'quantization_config': {config.to_dict()!r}}})")


def settings_of(cls) -> str:
    """A config class's :attr:`~QuantizationConfig.quantized_checkpoint_keys`, as ``key=value`` for messages."""
    return ", ".join(f"{k}={v!r}" for k, v in cls.quantized_checkpoint_keys.items())


def _declared_fix(why: Undeclared, layers: list[torch.nn.Module]) -> str:
    """Why ``layers`` were built unquantized although the checkpoint's config declares its method, and the fix: a
    layer given a config was left unquantized by its skip list, or by the config otherwise (:func:`_untargeted_fix`);
    one without a config was built with no quant_config."""
    given = [layer for layer in layers if getattr(layer, "quant_config", None) is not None]
    skipped = [layer for layer in given if _skip_list_names(layer)]
    untargeted = [layer for layer in given if layer not in skipped]

    def them(some: list[torch.nn.Module]) -> str:
        return "them" if len(some) == len(layers) else names([layer.prefix for layer in some], limit=3)

    causes = []
    if skipped:
        key = skipped[0].quant_config.skip_list_key()
        causes.append(f"the config's skip list ({key}) names {them(skipped)}: the checkpoint stores them as "
                      f"{why.declared!r}, so take them out of {key} (or re-export the checkpoint with them unquantized)")
    if untargeted:
        causes.append(_untargeted_fix(why, untargeted, them(untargeted)))
    bare = [layer for layer in layers if layer not in given]
    if bare:
        causes.append(f"the model built {them(bare)} without quant_config=: give them the model's quant_config")
    return ": " + "; ".join(causes)


def _skip_list_names(layer: torch.nn.Module) -> bool:
    """Whether the skip list of ``layer``'s config names it (by the prefix it was built with)."""
    try:
        return bool(layer.quant_config.is_layer_skipped(layer.prefix))
    except Exception:  # noqa: BLE001 - a skip list the config refuses for this layer: it is the skip list's doing
        return True


def _untargeted_fix(why: Undeclared, layers: list[torch.nn.Module], who: str) -> str:
    """For layers a config built unquantized though its skip list does not name them. (The built-in
    compressed-tensors readers refuse to build a layer no config group targets, as vLLM does, so a config of theirs
    never gets here: its error at build time names the targets.)"""
    key = layers[0].quant_config.skip_list_key()
    return (f"the config built {who} unquantized though its skip list ({key}) does not name them: the checkpoint "
            f"stores them as {why.declared!r}, so build them with a config that quantizes them")
