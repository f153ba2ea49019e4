"""Exceptions raised by fastvideo_quant.

Every error names the thing at fault (parameter, tensor, layer, plugin and its
distribution), what was expected and what was found.
"""

from __future__ import annotations

import functools
import sys
import warnings

__all__ = [
    "AccuracyError",
    "CheckpointError",
    "CheckpointWarning",
    "ConfigError",
    "FastVideoQuantError",
    "MethodUnavailableError",
    "ModelStateError",
    "ONE_SCHEME_PER_LAYER",
    "NotProcessedError",
    "PeerLoadError",
    "PluginError",
    "QuantizeError",
    "ShardingError",
    "UnknownMethodError",
    "CheckpointShapeError",
    "CheckpointValueError",
    "WeightLoadError",
    "WeightProcessingError",
    "is_internal_module",
    "plugin_packages",
    "warn_at_caller",
]


#: Why a fused layer (``qkv_proj``, ``to_qkv``) is all quantized or all float: its parts share one weight, one scheme.
#: Said by the skip-list refusal of some of its parts and by the loader's hint for a checkpoint storing them differently.
ONE_SCHEME_PER_LAYER = "one layer cannot be quantized differently across its parts"


class FastVideoQuantError(Exception):
    """Base class of every error this package raises on purpose."""


class PluginError(FastVideoQuantError):
    """A plugin failed to import, validate or register."""


class UnknownMethodError(FastVideoQuantError, KeyError):
    """A quantization method name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MethodUnavailableError(FastVideoQuantError):
    """A registered method that cannot run here (missing dependency, GPU too old, dtype)."""


class ConfigError(FastVideoQuantError, ValueError):
    """A quantization config or checkpoint config that is malformed or contradictory."""


class ShardingError(FastVideoQuantError, ValueError):
    """A size that does not divide over tensor-parallel ranks, or an unknown shard id."""


class WeightLoadError(FastVideoQuantError, ValueError):
    """A checkpoint tensor that does not fit the parameter it is loaded into."""


class CheckpointShapeError(WeightLoadError):
    """A checkpoint tensor whose shape (or size along the dim a layer shards) is not the one its parameter takes.
    ``load_checkpoint`` restates it as the whole checkpoint tensor's shape expected and found."""


class CheckpointValueError(WeightLoadError):
    """A checkpoint tensor refused by a parameter's loader in the tensor's own terms: its values, or a layout the
    loader converts (stating the stored shape and what it became). ``load_checkpoint`` reports it as raised: the
    whole-shape note it adds to other load errors (the parameter's shape against the stored one) would contradict it."""


class WeightProcessingError(WeightLoadError):
    """A layer's ``process_weights_after_loading`` raised after every layer's ``validate_loaded_weights`` passed
    (a plugin bug, or a check the plugin does not make in validation).

    The model is partly converted to the kernel format: the message and the attributes say which layer failed
    (``layer``) and which layers were already processed (``processed``). Such a model cannot be processed or loaded
    again; build a fresh one. The plugin's exception is the ``__cause__``.
    """

    def __init__(self, message: str, *, layer: str = "", processed: list[str] | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.processed = list(processed or [])


class ModelStateError(FastVideoQuantError, RuntimeError):
    """A model in a state the call cannot work on: ``load_checkpoint`` into layers already processed (their
    parameters are in the kernel format), or processing a layer whose processing failed before."""


class NotProcessedError(FastVideoQuantError, RuntimeError):
    """``apply`` on a layer whose ``process_weights_after_loading`` has not run."""


class QuantizeError(FastVideoQuantError):
    """A checkpoint that cannot be quantized as asked (names the tensor, the method and the fix)."""


class CheckpointError(FastVideoQuantError):
    """Missing, unexpected or mis-shaped tensors in a checkpoint, reported together. ``problems``: each line of a load's
    report, what explains them first — all of them, where the message shows only the first of many."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class PeerLoadError(CheckpointError):
    """``load_checkpoint`` raised on this rank because it failed on another rank of the model's tensor-parallel group.
    ``failed`` maps each failing rank (its rank in the group) to the first line of its error; that rank raised the
    error itself, with every detail. ``written`` False: the other rank's checks failed, and nothing was written here
    either, so the ranks stay alike. True: it failed past the checks (writing, validating or processing its weights),
    after this rank had loaded; the model is not usable as a whole."""

    def __init__(self, message: str, *, failed: dict[int, str] | None = None, written: bool = False) -> None:
        super().__init__(message)
        self.failed = dict(failed or {})
        self.written = written


class AccuracyError(FastVideoQuantError, RuntimeError):
    """A method's output that failed a correctness check (non-finite, or over its stated tolerance) — raised by the
    benchmarks before anything is timed."""


class CheckpointWarning(UserWarning):
    """A load that went through but is incomplete: ``load_checkpoint(strict=False)`` with missing parameters,
    ignored tensors, or layers left unprocessed because their tensors are missing; or one a check could not cover
    (an unreadable quantization declaration, files beside the checkpoint that were not read); or a note on a load that
    may not be what was meant (every layer unsharded while a tensor-parallel group has several ranks)."""


#: Packages whose frames a warning is not attributed to: this package, and the libraries our calls pass through on
#: their way to user code (each plugin's own package is added from its entry point; see warn_at_caller).
_INTERNAL_PACKAGES = frozenset({"fastvideo_quant", "torch", "pluggy", "importlib", "contextlib", "functools"})


class StopsProcess:
    """Marks an exception that stops the process — a signal turned into one (``checkpoint_writer.Terminated``, a
    ``SystemExit``) — which code catching a plugin's own ``SystemExit`` must let through (:func:`stops_the_process`)."""


def stops_the_process(exc: BaseException) -> bool:
    """Whether ``exc``, caught around a plugin's code, stops the process (Ctrl-C, or a :class:`StopsProcess` signal)
    rather than being the plugin's own failure to report — any ``Exception``, and a ``SystemExit`` of its own: a
    plugin's ``sys.exit`` must not end the host."""
    return isinstance(exc, (KeyboardInterrupt, StopsProcess))


def warn_at_caller(message: str | Warning, category: type[Warning] | None = None) -> None:
    """``warnings.warn`` attributed to the user's call: the innermost frame outside this package, the plugins'
    packages (those of the ``fastvideo_quant`` entry points) and the libraries between them (torch's module calls,
    pluggy, the import system). A fixed ``stacklevel`` pointed at whichever of our functions sat that many calls up —
    for a load, ``loader/load.py`` — so the warning's line, and a ``warnings`` filter by module, named our code
    instead of the ``load_checkpoint`` or ``model(x)`` that caused it. The warning is issued for that frame with
    ``warnings.warn_explicit`` (counting a stack level would be off by the import system's frames, which
    ``warnings.warn`` does not count). Where every frame is ours (the ``fvq`` command), the outermost one."""
    frame = sys._getframe(1)
    while frame.f_back is not None and is_internal_module(str(frame.f_globals.get("__name__", ""))):
        frame = frame.f_back
    if isinstance(message, Warning):
        category = type(message)
    globals_ = frame.f_globals
    warnings.warn_explicit(message, category or UserWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=globals_.get("__name__"), registry=globals_.setdefault("__warningregistry__", {}))
    # (no module_globals: linecache would ask the frame's loader for its source, and runpy's loader of a module run as
    # __main__ raises ImportError there; the line is read from the file when the warning is shown)


def is_internal_module(name: str) -> bool:
    """Whether module ``name`` is in this package, a plugin's package (its entry point's package: ``fvq_fp8`` for
    ``fvq_fp8.hooks``; a top-level module, itself) or a library between them (:data:`_INTERNAL_PACKAGES`)."""
    if name.partition(".")[0] in _INTERNAL_PACKAGES or name.startswith("<frozen importlib"):
        return True
    return any(name == p or name.startswith(p + ".") for p in plugin_packages())


@functools.cache
def plugin_packages() -> frozenset[str]:
    """The packages the ``fastvideo_quant`` entry points load from (read once, until ``plugins.reset()``): the package
    holding each entry point's module (``fvq_fp8`` for ``fvq_fp8.hooks``, ``myapp.quant`` for ``myapp.quant.hooks``; a
    top-level module, itself), not its whole top-level package."""
    from importlib import metadata

    try:
        eps = metadata.entry_points(group="fastvideo_quant")
    except Exception:  # noqa: BLE001 - unreadable metadata: the warning is then attributed past our package only
        return frozenset()
    return frozenset(ep.module.rpartition(".")[0] or ep.module for ep in eps)
