"""Validate, then convert, the loaded weights of a model's layers: all or nothing.

:func:`process_weights_after_loading` runs every unprocessed layer's ``quant_method.validate_loaded_weights``
first (all failures in one error, no layer processed), then each layer's ``process_weights_after_loading``, once.
A model whose processing failed part-way is refused from then on (it is partly in the kernel format). The loader
(:mod:`fastvideo_quant.loader`) calls this last; its helpers for naming layers in messages live here too.
"""

from __future__ import annotations

import contextvars

import torch

from fastvideo_quant.errors import (
    FastVideoQuantError,
    ModelStateError,
    NotProcessedError,
    WeightLoadError,
    WeightProcessingError,
    warn_at_caller,
)
from fastvideo_quant.quantization.base import mark_processed, weights_processed

#: At most this many names are spelled out in one line of an error or warning (the rest are counted).
SHOWN = 10


def names(items: list, show=repr, limit: int = SHOWN) -> str:
    """``items`` for a message: the first ``limit`` shown, the rest counted."""
    shown = ", ".join(show(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def kind(exc: BaseException) -> str:
    """A prefix naming the exception's type, unless it is ours (whose message says what it is)."""
    return "" if isinstance(exc, FastVideoQuantError) else f"{type(exc).__name__}: "


def quant_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(label, module)`` of every module with a quant method; the label is its name in ``model`` (its prefix, or
    its class, for the model itself)."""
    return [(label(name, m), m) for name, m in model.named_modules() if getattr(m, "quant_method", None) is not None]


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (empty for none)."""
    return next(iter(str(exc).splitlines()), "")


def label(name: str, module: torch.nn.Module) -> str:
    return name or getattr(module, "prefix", "") or type(module).__name__


def process_weights_after_loading(model: torch.nn.Module) -> None:
    """Validate, then process, every layer of ``model`` with a quant method that is not processed yet.

    First each layer's ``quant_method.validate_loaded_weights``: every failure is collected into one
    WeightLoadError and no layer is processed. Then each layer's ``process_weights_after_loading``, once
    (processed layers are marked ``_fvq_weights_processed`` and skipped by a later call). Should one raise
    anyway, a :class:`~fastvideo_quant.errors.WeightProcessingError` names that layer and the layers already
    processed: the model is partly converted and must be rebuilt (it is refused by later calls and loads).
    A processed layer's forward guard (set by a ``strict=False`` load that missed some of its tensors) is lifted.
    A model wrapped by ``torch.compile`` is processed through the module it wraps (:func:`unwrap_compiled`).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"process_weights_after_loading(model): expected a torch.nn.Module, found "
                        f"{type(model).__name__} {model!r:.80}")
    process(unwrap_compiled(model), skip=set())


def unwrap_compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module that ``torch.compile`` wrapped in ``model`` (its ``_orig_mod``, nested compiles included), else ``model``:
    its parameter names carry a ``_orig_mod.`` prefix no checkpoint has, and loading it writes the wrapped module's
    tensors anyway. (Compiling after loading saves a recompile: processing replaces parameters the graph saw.)"""
    while isinstance(model, torch.nn.Module) and type(model).__name__ == "OptimizedModule" and \
            isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        model = model._orig_mod
    return model


#: Attributes loading and processing set on a layer (besides what a method's processing sets, which its
#: ``process_weights_after_loading`` records in ``_fvq_processing_attrs``, however it is called): a layer whose tensors
#: were discarded (moved to meta) drops them all.
LOAD_STATE_ATTRS = ("_fvq_processing_attrs", "_fvq_weights_processed", "_fvq_processing_failed",
                    "_fvq_loaded_shards", "_fvq_loaded_from", "_fvq_parts_written")


def record_written(module: torch.nn.Module, leaf: str, shard_id: object) -> None:
    """Record on fused layer ``module`` that its own ``weight_loader`` / ``weight_loader_v2`` wrote part ``shard_id``
    (None: all) of parameter ``leaf`` — a hand-written ``load_weights`` loop's calls as well as ``load_checkpoint``'s
    (:func:`unwritten_parts` reads it). ``load_checkpoint``'s own record of what it wrote is ``_fvq_loaded_shards``."""
    if "_fvq_parts_written" not in vars(module):
        module._fvq_parts_written = {}
    module._fvq_parts_written.setdefault(leaf, set()).add(shard_id)


def forget_written(module: torch.nn.Module, leaves) -> None:
    """Drop :func:`record_written`'s record of parameters ``leaves``, written whole another way (``load_state_dict``)."""
    written = vars(module).get("_fvq_parts_written")
    for leaf in leaves if written else ():
        written.pop(leaf, None)


def unwritten_parts(module: torch.nn.Module, layer: str) -> str | None:
    """Why fused layer ``module`` cannot be processed: a parameter that its ``weight_loader`` wrote for some parts
    (shard ids) but never for the others, outside ``load_checkpoint`` (a hand-written ``load_weights`` loop that
    skipped ``v`` or ``up``). Those rows hold what the fresh parameter held — uninitialised memory, often zeros, so
    an unquantized layer would run on them without a sign. ``load_checkpoint`` accounts for missing parts itself (an
    error, or with ``strict=False`` a warning and a guarded layer, whose parts may then be copied in by hand), so a
    parameter it wrote is not judged here; nor is one ``load_state_dict`` wrote whole. None when every recorded
    parameter is whole."""
    fused = getattr(module, "_fused_shards", None)
    written = vars(module).get("_fvq_parts_written")
    if fused is None or not written:
        return None
    by_checkpoint = vars(module).get("_fvq_loaded_from", {})
    parts = [shard_id for shard_id, _, _ in fused()]
    problems = []
    for leaf, got in written.items():
        missing = [p for p in parts if p not in got]
        if leaf in by_checkpoint or None in got or not missing:  # (a recorded leaf holds at least one part)
            continue
        problems.append(f"{leaf!r} for part(s) {[p for p in parts if p in got]} but never for {missing}")
    if not problems:
        return None
    return (f"{type(module).__name__} {layer!r} fuses parts {parts}; its weight_loader wrote parameter "
            + "; ".join(problems) + ". Those rows hold what the freshly built parameter held (uninitialised memory), "
            "so the layer was not processed. Load every part (weight_loader(param, tensor, shard_id) for each of "
            f"{parts}, or once with the tensor fused on disk and no shard id; a part written another way, such as "
            "param.data[rows].copy_(...), is not seen), or load the checkpoint with load_checkpoint(model, path) or "
            "the whole parameter with load_state_dict, then process again")


def _method_owner(module: torch.nn.Module) -> str:
    """``Fp8LinearMethod of plugin 'fp8' (distribution 'fastvideo-quant')``: a layer's method and who registered it."""
    from fastvideo_quant.plugins.manager import describe_method_owner

    config = getattr(module, "quant_config", None)
    owner = f" of {describe_method_owner(type(config))}" if config is not None else ""
    return f"{type(module.quant_method).__name__}{owner}"


def raised_line(module: torch.nn.Module, exc: BaseException) -> str:
    """``exc`` in one line: ours as its message; another with its type and where the method's package raised it."""
    if isinstance(exc, FastVideoQuantError):
        return str(exc)
    from fastvideo_quant.plugins.failures import exception_line

    return exception_line(exc, {type(module.quant_method).__module__.split(".")[0]})


def mark_unloaded(module: torch.nn.Module, layer: str, missing: list[str]) -> None:
    """Make ``module`` refuse ``forward`` with a NotProcessedError naming ``layer`` and the ``missing`` tensors (as
    shown: ``"'qkv_proj.weight' (parts ['v_proj'])"``): the loads so far left those parameters unwritten, so the
    layer holds uninitialised memory and is not processed (:func:`refuse_forward`'s guard, with that reason).
    Processing the layer (:func:`process_weights_after_loading`), or a later load that writes them, lifts it
    (:func:`clear_unloaded`).
    """
    refuse_forward(module, layer, (
        f"load_checkpoint(strict=False) wrote no checkpoint tensor for {names(list(missing), show=str)}, so they hold "
        "what they held before (uninitialised memory in a freshly built model) and the layer was not processed. Set "
        "the missing tensors: copy them into the parameters, then call process_weights_after_loading(model), or load a "
        "checkpoint that holds them (and no tensor of a layer already processed) with load_checkpoint(model, path), "
        "which writes them and processes the layer; either validates and processes it and lifts this check"))


def clear_unloaded(module: torch.nn.Module) -> None:
    """Lift :func:`refuse_forward`'s guard (:func:`mark_unloaded`'s too; a no-op on a module without one)."""
    hook = vars(module).pop("_fvq_refused_hook", None)
    if hook is not None:
        hook.remove()
    vars(module).pop("_fvq_refused", None)


def refuse_forward(module: torch.nn.Module, layer: str, reason: str) -> None:
    """Make ``module``'s forward raise, saying ``reason``: a NotProcessedError while the layer is not processed, a
    ModelStateError once it is (a processed layer of a model that is not usable as a whole). For a layer a load left
    without some tensors (:func:`mark_unloaded`), or holding unchecked or partial values after a load or processing
    that failed once tensors were written (an unquantized layer has no processing step to refuse it otherwise). The
    guard is a forward pre-hook on this module only (unmarked layers pay nothing); the processing of the layer
    (:func:`process`), a later load that writes it, or a rebuild lifts it (:func:`clear_unloaded`)."""
    module._fvq_refused = (layer, reason)
    if "_fvq_refused_hook" not in vars(module):
        module._fvq_refused_hook = module.register_forward_pre_hook(_refuse_forward)


def _refuse_forward(module: torch.nn.Module, args: tuple) -> None:
    layer, reason = module._fvq_refused
    error = ModelStateError if weights_processed(module) else NotProcessedError
    raise error(f"layer {layer!r} ({type(module).__name__}): forward refused: {reason}")


def refuse_failed(layers: list[tuple[str, torch.nn.Module]], caller: str, what: str) -> None:
    """A ModelStateError when processing failed earlier on a layer: the model may be partly converted."""
    failed = [n for n, m in layers if getattr(m, "_fvq_processing_failed", False)]
    if failed:
        raise ModelStateError(
            f"{caller}process_weights_after_loading failed earlier on layer(s) {names(failed)} of this model, so "
            f"it may be partly converted to the kernel format and cannot be {what}; build a fresh model and load it"
        )


def warn_together(cautions: list[tuple[str, Warning]]) -> None:
    """One warning of each class among the warnings layers' ``validate_loaded_weights`` returned (``(label,
    warning)``): the first layer's message, naming the other layers that returned that class (a class that cannot be
    built from one message: each instance as returned)."""
    by_class: dict[type[Warning], list[tuple[str, Warning]]] = {}
    for label, caution in cautions:
        by_class.setdefault(type(caution), []).append((label, caution))
    for cls, found in by_class.items():
        more = [label for label, _ in found[1:]]
        text = str(found[0][1]) + (f" (the same for {len(more)} more layer(s): {names(more)})" if more else "")
        try:
            cautions_of = [cls(text)] if more else [found[0][1]]
        except Exception:  # noqa: BLE001 - a class built otherwise than from one message: each instance, as returned
            cautions_of = [caution for _, caution in found]
        for caution in cautions_of:
            warn_at_caller(caution)


#: True while :func:`process` runs (in this thread): the warnings layers' checks return are issued by it, together.
_model_pass: contextvars.ContextVar[bool] = contextvars.ContextVar("fvq_model_pass", default=False)


def warn_if_called_directly(caution: Warning | None) -> None:
    """For a method's ``process_weights_after_loading`` that runs its own ``validate_loaded_weights``: issue the
    warning that returned, where the layer is processed by a direct call (vLLM's loop over layers) — inside the
    model-wide pass (:func:`process`: ``load_checkpoint``, ``process_weights_after_loading(model)``), that pass has
    issued it with the other layers' already."""
    if isinstance(caution, Warning) and not _model_pass.get():
        warn_at_caller(caution)


def process(model: torch.nn.Module, skip: set[int]) -> list[str]:
    token = _model_pass.set(True)
    try:
        return _process(model, skip)
    finally:
        _model_pass.reset(token)


def _process(model: torch.nn.Module, skip: set[int]) -> list[str]:
    layers = quant_layers(model)
    refuse_failed(layers, "", "processed again")
    todo = [(n, m) for n, m in layers if not weights_processed(m) and id(m) not in skip]
    failures, failed, unwritten = [], [], 0
    cautions: list[tuple[str, Warning]] = []  # (what validate_loaded_weights returned: warned once the checks pass)
    for label, module in todo:
        problem = unwritten_parts(module, label)  # (before the method's check: its scales start as NaN, say)
        if problem is not None:
            failures.append(f"layer {label!r}: {problem}")
            failed.append(label)
            unwritten += 1
            continue
        validate = getattr(module.quant_method, "validate_loaded_weights", None)
        if validate is None:
            continue
        try:
            said = validate(module)
        except Exception as exc:  # noqa: BLE001 - every layer's failure is reported with the others
            failures.append(f"layer {label!r}: {kind(exc)}{exc}")
            failed.append(label)
            continue
        if isinstance(said, Warning):
            cautions.append((label, said))
        elif said is not None:  # (a contract breach: the value would be dropped silently)
            failures.append(f"layer {label!r}: {type(module.quant_method).__name__}.validate_loaded_weights returned "
                            f"{type(said).__name__} {said!r:.200}; it returns None, or a Warning instance for tensors "
                            "that are suspect but loadable")
            failed.append(label)
    if failures:
        for label, module in todo:
            refuse_forward(module, label, (
                f"{'validate_loaded_weights' if unwritten == 0 else 'the check of loaded weights'} failed on "
                f"{len(failures)} layer(s) of this model ({names(failed)}), so no layer was processed and this one "
                "holds unchecked tensors. Load a checkpoint that passes the check (load_checkpoint writes and processes "
                "the layers again), or set the tensors"
                + (" (a fused part through its weight_loader)" if unwritten else "")
                + " and call process_weights_after_loading(model)"))
        raise WeightLoadError(
            f"{len(failures)} of {len(todo)} layer(s) failed the check of their loaded weights (every fused part "
            "written, then validate_loaded_weights); no layer was processed, and their forward raises NotProcessedError "
            "until a load or process_weights_after_loading(model) passes:\n  " + "\n  ".join(failures)
        )
    warn_together(cautions)
    done: list[str] = []
    for label, module in todo:
        try:
            module.quant_method.process_weights_after_loading(module)  # (records what it sets: _fvq_processing_attrs)
        except BaseException as exc:
            module._fvq_processing_failed = True
            for other, other_module in layers:
                refuse_forward(other_module, other, (
                    f"process_weights_after_loading failed on layer {label!r} ({kind(exc)}{first_line(exc)}), so "
                    "this model is partly converted to the kernel format and cannot be used: build a fresh model and "
                    "load it"))
            if not isinstance(exc, Exception):
                raise
            rest = len(todo) - len(done) - 1
            raise WeightProcessingError(
                f"process_weights_after_loading failed on layer {label!r} ({_method_owner(module)}) after every "
                f"layer's validate_loaded_weights had passed: {raised_line(module, exc)}. The model is now partly "
                f"converted to the kernel format: {len(done)} layer(s) were already processed"
                + (f" ({names(done)})" if done else "")
                + f", {label!r} may be in part, {rest} other(s) are not. It cannot be used, processed or loaded again: "
                "build a fresh model and load it (a check this method makes while processing belongs in its "
                "validate_loaded_weights)",
                layer=label, processed=done,
            ) from exc
        mark_processed(module)
        clear_unloaded(module)
        done.append(label)
    return done
