"""``load_checkpoint``: check everything, then write, then process; and the :class:`LoadReport` it returns."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from fastvideo_quant.errors import CheckpointError, CheckpointWarning, PeerLoadError, warn_at_caller
from fastvideo_quant.loader.agreement import Agreement
from fastvideo_quant.loader.checks import (
    check_declared_method,
    check_mapping,
    check_prefixes,
    note_unsharded,
    refuse_meta,
    refuse_processed,
    refuse_writes_into_processed,
)
from fastvideo_quant.loader.diagnose import (
    config_tensor_hints,
    fused_name_hints,
    kernel_format_hint,
    kv_scale_hint,
    mixed_fused_parts,
    name_prefix_hints,
    non_persistent_hint,
    other_methods_tensors,
    plain_attribute_hint,
    prefix_hints,
    renamed_module_hints,
    settings_hints,
    stored_quantized,
    stored_unquantized,
    undeclared,
)
from fastvideo_quant.loader.files import SAFETENSORS_DTYPES, checkpoint_files, lazy_slice, open_safetensors, stale_index_hints
from fastvideo_quant.loader.names import NameMapping, Part, map_name, merge_problems, merged_entry, names_mapping_and_source
from fastvideo_quant.loader.rehearse import call_loader, overflows, rehearse_loads
from fastvideo_quant.loader.skip_entries import warn_misspelled_skip_entries
from fastvideo_quant.loader.targets import (
    conflicting_sources,
    disagreeing_parts,
    find_missing,
    is_fused,
    leaf_name,
    mapping_and_source,
    missing_problems,
    persistent_buffers,
    shard_ids,
    shards_written,
    target_for,
)
from fastvideo_quant.processing import (
    clear_unloaded,
    first_line,
    kind,
    mark_unloaded,
    names,
    process,
    quant_layers,
    refuse_forward,
    unwrap_compiled,
)


@dataclasses.dataclass
class LoadReport:
    """What a load did.

    :ivar loaded: parameter (or persistent buffer) name → the shard ids written by this load (``None``: the whole
        tensor).
    :ivar files: the safetensors files read.
    :ivar missing: parameters (not ``checkpoint_optional``) that no load has written, wholly or in part —
        only ever non-empty with ``strict=False``.
    :ivar missing_parts: for a fused parameter written in part, the checkpoint modules still absent.
    :ivar unexpected: checkpoint tensors that no parameter or persistent buffer takes (ignored with ``strict=False``).
    :ivar unprocessed: layers left unprocessed because some of their parameters are missing; set them and call
        :func:`process_weights_after_loading`, or load a checkpoint holding them (which processes them).
    """

    loaded: dict[str, list[object]]
    files: list[Path]
    missing: list[str] = dataclasses.field(default_factory=list)
    missing_parts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    unprocessed: list[str] = dataclasses.field(default_factory=list)


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    packed_modules_mapping: dict[str, list[str]] | None = None,
    param_names_mapping: NameMapping | None = None,
    strict: bool = True,
    process_weights: bool = True,
    collective: bool | dist.ProcessGroup = True,
) -> LoadReport:
    """Load a safetensors checkpoint into ``model``; CheckpointError lists every problem at once.

    Nothing is written while any problem is found: two sources for one parameter, mis-shaped
    tensors and loader rejections always; missing and unexpected tensors with ``strict``.

    :param packed_modules_mapping: fused module → checkpoint modules; defaults to the
        model's ``packed_modules_mapping`` attribute, else q/k/v → qkv_proj, gate/up → gate_up_proj.
    :param param_names_mapping: FastVideo's checkpoint-name mapping (regex pattern → replacement, or
        ``(replacement, index, count)`` for parts merged into one tensor); defaults to the model's
        ``param_names_mapping`` attribute (a FastVideo DiT's), else none. Each checkpoint tensor name is mapped by the
        first pattern matching at its start, then placed as usual (``packed_modules_mapping`` included); messages name
        the checkpoint's own tensor names. Parts go to a fused layer's shards when it has ``count`` of them, else are
        concatenated along the parameter's output dim (:mod:`fastvideo_quant.loader.names`).

    A model wrapped by ``torch.compile`` loads into the module it wraps (its names without ``_orig_mod.``); compiling after
    the load saves a recompile.
    :param strict: report missing and unexpected tensors as errors (mis-shaped ones always are).
        With ``strict=False`` they are listed in the returned :class:`LoadReport` (``missing``,
        ``unexpected``) and in a :class:`~fastvideo_quant.errors.CheckpointWarning`; a missing parameter
        keeps what it held (uninitialised memory in a freshly built model), and a layer with a missing
        parameter is not processed (``LoadReport.unprocessed``) and its forward raises NotProcessedError until
        the parameter is set and :func:`process_weights_after_loading` runs, or a later load writes it (a later
        load may write only into layers not processed yet; it then processes them).
    :param process_weights: run :func:`process_weights_after_loading` once the tensors are written.
        A layer is processed once: a load that would write into a processed layer (or into a model whose layers
        were all processed) is a ModelStateError, before anything is written. To load one model from
        checkpoints that split its tensors, pass ``strict=False, process_weights=False`` to every load but the
        last: the last load's ``strict`` check (and ``LoadReport.missing``) counts what the earlier loads wrote,
        so it refuses (or reports) only what no load provided.
    :param collective: with torch.distributed initialised and the model's layers sharded over more than one rank, the
        load is **collective** over their tensor-parallel group: every rank of it must call ``load_checkpoint``. Once
        its checks are done, each rank tells the others whether they passed (one all-reduce of a flag), and the
        checkpoint is written on every rank or on none: a rank whose checks raised (a tensor missing from its file,
        a shape error in its shard, a file it cannot find, any exception, a Ctrl-C) raises its own error, saying that
        the other ranks were told, and every other rank raises :class:`~fastvideo_quant.errors.PeerLoadError` naming the
        failing ranks and the first line of each one's error. (Without it, the failing rank alone would raise and the
        others hang in their first collective.) ``collective=False`` loads this rank alone, without agreeing; a
        process group agrees over that group instead of the layers'. A failure past the checks — while writing, in
        ``validate_loaded_weights`` (a non-finite scale in one rank's shard) or in ``process_weights_after_loading``
        — is agreed on by a second all-reduce at the end: the failing rank raises its own error and the others a
        PeerLoadError with ``written=True``, since they loaded but the model is not usable as a whole.
    """
    if not isinstance(model, torch.nn.Module) or not isinstance(path, (str, os.PathLike)):
        swapped = isinstance(path, torch.nn.Module) and isinstance(model, (str, os.PathLike))
        raise TypeError("load_checkpoint(model, path): " + (
            "the arguments are swapped; the model comes first" if swapped else
            f"expected a torch.nn.Module and a checkpoint path (str or os.PathLike), found {type(model).__name__} and "
            f"{type(path).__name__}"))
    model = unwrap_compiled(model)
    note_unsharded(model)
    agreement = Agreement.for_model(model, collective)
    with contextlib.ExitStack() as stack:  # the checkpoint's files, open (mapped) until the write is done
        with agreement.telling():
            checked = _check(model, path, stack, packed_modules_mapping, param_names_mapping, strict)
        agreement.agree(path)
        with _refusing_on_failure(model, path, checked), agreement.telling(written=True):
            # past the checks: the others have written, but must not go on alone
            loaded = _write(checked.plan, checked.targets, checked.owners, path)
    with _refusing_on_failure(model, path, checked):
        with agreement.telling(written=True):  # (the files closed: processing's peak carries no mapped checkpoint pages)
            report = _finish(model, path, checked, loaded, process_weights)
        agreement.agree(path, written=True)
    return report


@contextlib.contextmanager
def _refusing_on_failure(model: torch.nn.Module, path, checked: _Checked) -> Iterator[None]:
    """A failure once writing has begun leaves layers holding part of the checkpoint, unchecked or unprocessed, or
    (another rank failed: PeerLoadError) a model that is not usable as a whole: their forward is refused
    (:func:`~fastvideo_quant.processing.refuse_forward`) instead of running on those values or waiting in a collective
    the failed rank never joins. Layers the processing step already refused keep its reason."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, PeerLoadError):
            why = (f"load_checkpoint of {str(path)!r} failed on another rank of its tensor-parallel group after the "
                   f"checks ({first_line(exc)}); this rank loaded it, but the model is not usable as a whole (a "
                   "forward would wait in a collective that rank does not join): build it again on every rank and load")
            layers = quant_layers(model)
        else:
            why = (f"load_checkpoint of {str(path)!r} failed after writing into this model ({kind(exc)}{first_line(exc)}"
                   "), so this layer may hold part of that checkpoint and was not processed: fix the cause and load "
                   "again (a complete load writes and processes it), or build a fresh model")
            written = {id(checked.owners[target]) for _, target, _, _, _ in checked.plan}
            layers = [(n, m) for n, m in quant_layers(model) if id(m) in written and "_fvq_refused" not in vars(m)]
        for layer_label, module in layers:
            refuse_forward(module, layer_label, why)
        raise


def _finish(model: torch.nn.Module, path, checked: _Checked, loaded, process_weights: bool) -> LoadReport:
    """After the write: warn of what the load left out, and process the layers it completed."""
    report, skip = _report(model, checked, loaded, process_weights)
    warn_misspelled_skip_entries(model, checked.mapping)
    if checked.missing or checked.unexpected:
        _warn_incomplete(path, report, process_weights, [n for n in checked.unexpected if non_persistent_hint(model, n)])
    if process_weights:
        process(model, skip=skip)
    return report


#: One load's plan: (checkpoint tensor name, target parameter or buffer, shard id or None, open file, its path).
PlanEntry = tuple[str, str, object, object, Path]


@dataclasses.dataclass
class _Checked:
    """What the checks of one load found: what to write, and what is left out (for the report)."""

    files: list[Path]
    plan: list[PlanEntry]
    targets: dict[str, torch.Tensor]  # parameters and persistent buffers by name
    owners: dict[str, torch.nn.Module]  # target name → the module holding it
    unexpected: list[str]
    missing: list[tuple[str, list[str] | None]]
    mapping: dict[str, list[str]]  # the packed_modules_mapping in force


def _check(model: torch.nn.Module, path, stack: contextlib.ExitStack, given_mapping, given_names,
           strict: bool) -> _Checked:
    """Every check of a load, before anything is written: the refusals up front, then the plan, then every problem
    in one CheckpointError. The checkpoint's files stay open on ``stack`` for the write."""
    refuse_processed(model)
    refuse_meta(model)
    files = checkpoint_files(path)
    declarations = check_declared_method(model, path)
    mapping, source = mapping_and_source(model, given_mapping)
    check_mapping(model, mapping, source)
    rules, _ = names_mapping_and_source(model, given_names)
    params, buffers = dict(model.named_parameters()), persistent_buffers(model)
    targets = {**params, **buffers}  # what a checkpoint tensor may load into
    owners = {n: model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model for n in targets}
    handles = [(f, stack.enter_context(open_safetensors(f))) for f in files]
    renamed = (_mapped(rules, n) for _, h in handles for n in h.keys())
    misnamed = check_prefixes(model, renamed, mapping)
    plan, unexpected, stored, shapes, merging = _plan(handles, params, buffers, owners, mapping, rules)
    processed = refuse_writes_into_processed(path, model, plan, unexpected, owners, mapping)
    missing = _still_missing(plan, params, owners, mapping, processed)
    problems = merging + conflicting_sources(plan) + disagreeing_parts(plan, targets, owners)
    hints: list[str] = []  # (what explains the problems: said first, not counted among them)
    # (fused layers whose parts are stored some float, some quantized: several hints explain their tensors so)
    mixed = mixed_fused_parts(stored, owners, mapping, lambda n: _mapped(rules, n))
    if strict:
        problems += _strict_problems(model, unexpected, missing, stored, owners, mapping, misnamed, rules, plan, mixed)
        if missing:  # (a shard beside the index that it does not name may hold them: headers only)
            hints += stale_index_hints(path, _takes_missing(missing, params, buffers, owners, mapping, rules))
    why = undeclared(path, declarations)
    tensors = {n: (stored[n], shapes[n]) for n in stored}
    hints = stored_quantized(plan, stored, owners, why, tensors, mapping, mixed) + hints
    problems += rehearse_loads(plan, targets, owners, mapping)
    problems += overflows(plan, targets, owners)
    if problems or hints:
        # (a loaded model's state_dict saved as safetensors: the hints below would read its kernel tensors as settings)
        kernel = kernel_format_hint(model, stored, shapes)
        if kernel is not None:
            raise _does_not_fit(path, [kernel], problems)
        settings = settings_hints(path, declarations, plan, unexpected, stored, owners, mapping, why.source)
        # (layers built with other settings than the checkpoint declares, or than a file's directory declares: what
        # their config makes of the tensors would tell the user to edit a config.json that is right)
        hints = (settings + ([] if settings else config_tensor_hints(owners, tensors, why.source))
                 + other_methods_tensors(model, unexpected, mapping, why, plan, mixed) + hints)
        raise _does_not_fit(path, hints, problems)
    return _Checked(files, plan, targets, owners, unexpected, missing, mapping)


#: How many of a load's problems its error shows: a setting wrong for every layer (a group size) gives one problem a
#: tensor, hundreds on a large model; the lines before them say what explains them, and ``CheckpointError.problems``
#: holds them all.
SHOWN_PROBLEMS = 20


#: How the problems of tensors that reach no parameter, and of parameters no tensor reaches, begin: a cut report lists
#: the others first.
LISTED_KINDS = ("unexpected tensor", "missing tensor")


def _does_not_fit(path, hints: list[str], problems: list[str]) -> CheckpointError:
    """The error of a checkpoint that does not fit the model: the ``hints`` (what explains the ``problems``), then the
    problems — where there are more than :data:`SHOWN_PROBLEMS`, that many, shared among the kinds (:func:`_shown`),
    and how many of each kind are not shown. A hint that is the only report of what is wrong (a bool weight) is
    counted as the problem."""
    hints = list(dict.fromkeys(hints))  # (a line two hints give alike — a fused layer's parts stored apart — said once)
    count = len(problems) or len(hints)
    shown = problems
    if len(problems) > SHOWN_PROBLEMS + 2:
        shown, hidden = _shown(problems)
        counts = collections.Counter(_kind(p) for p in hidden)
        kinds = ", ".join(f"{counts[k]} {k}(s)" for k in (*LISTED_KINDS, "other") if counts[k])
        shown = [*shown, f"... and {len(hidden)} more problem(s) not shown ({kinds}; the error's .problems lists them "
                         "all)"]
    return CheckpointError(
        f"checkpoint {str(path)!r} does not fit the model ({count} problem(s); nothing was loaded):\n  "
        + "\n  ".join(hints + shown), problems=hints + problems)


def _kind(problem: str) -> str:
    return next((k for k in LISTED_KINDS if problem.startswith(k)), "other")


def _shown(problems: list[str]) -> tuple[list[str], list[str]]:
    """The :data:`SHOWN_PROBLEMS` problems a cut report shows, and those it leaves out. The cap is shared evenly among
    the kinds — the tensors that reach a parameter and do not fit (and what explains the rest), the unexpected ones,
    the missing ones — a kind with fewer lines than its share leaving the rest to the others; they are shown in that
    order. One wrong shape among many stray tensors is the line to read, and a module renamed gives as many
    unexpected tensors as missing ones: the first 20 of either kind alone would hide what the model expected."""
    kinds = {k: [p for p in problems if _kind(p) == k] for k in ("other", *LISTED_KINDS)}
    take = dict.fromkeys(kinds, 0)
    left = SHOWN_PROBLEMS
    while left:
        open_ = [k for k, ps in kinds.items() if take[k] < len(ps)]
        if not open_:
            break
        share = max(left // len(open_), 1)
        for k in open_:
            step = min(share, len(kinds[k]) - take[k], left)
            take[k] += step
            left -= step
    shown = [p for k, ps in kinds.items() for p in ps[:take[k]]]
    return shown, [p for k, ps in kinds.items() for p in ps[take[k]:]]


def _plan(handles, params, buffers, owners, mapping, rules) -> tuple[list[PlanEntry], list[str],
                                                                     dict[str, torch.dtype | None],
                                                                     dict[str, tuple[int, ...]], list[str]]:
    """Where each checkpoint tensor goes (the plan), the tensors nothing takes (sorted), every tensor's dtype and
    shape, and the problems of merging parts (``param_names_mapping``'s ``(replacement, index, count)``: :mod:`.names`)."""
    reverse = _by_part(mapping)
    plan: list[PlanEntry] = []
    unexpected: list[str] = []
    stored: dict[str, torch.dtype | None] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    merges: dict[str, list[Part]] = {}
    for file, handle in handles:
        for name in handle.keys():
            mapped, index, count = map_name(rules, name) if rules else (name, None, None)
            target = target_for(mapped, params, owners, reverse, buffers)
            view = handle.get_slice(name)
            stored[name] = SAFETENSORS_DTYPES.get(view.get_dtype())
            shapes[name] = tuple(view.get_shape())
            if target is None:
                unexpected.append(name)
            elif index is None:
                plan.append((name, target[0], target[1], handle, file))
            elif target[1] is None and is_fused(owners[target[0]]) and len(ids := shard_ids(owners[target[0]])) == count:
                plan.append((name, target[0], ids[index], handle, file))  # the layer's shard
            else:
                merges.setdefault(target[0], []).append(Part(name, index, count, handle, file))
    problems = []
    for target, parts in merges.items():
        found = merge_problems(target, parts)
        if not found:
            param = params.get(target, buffers.get(target))
            entry = merged_entry(target, parts, getattr(param, "output_dim", 0) or 0)
            if isinstance(entry, str):
                found = [entry]
            else:
                plan.append((entry[0], target, None, entry[1], entry[2]))
        problems += found
    return plan, sorted(unexpected), stored, shapes, problems


def _still_missing(plan, params, owners, mapping, processed: set[int]) -> list[tuple[str, list[str] | None]]:
    """What no load will have written: not this one, nor an earlier one with process_weights=False (processed layers
    count as complete)."""
    seen = shards_written(params, owners)
    for _, target, shard_id, _, _ in plan:
        seen.setdefault(target, set()).add(shard_id)
    return [m for m in find_missing(params, owners, mapping, seen) if id(owners[m[0]]) not in processed]


def _strict_problems(model, unexpected, missing, stored, owners, mapping, misnamed, rules, plan, mixed) -> list[str]:
    """Unexpected and missing tensors as problems (``strict=True``), with the hints that explain them."""
    # (modules stored unquantized first: they say why the missing scales are missing)
    problems = stored_unquantized(unexpected, stored, missing, owners, mapping, plan, lambda n: _mapped(rules, n), mixed)
    problems += [f"unexpected tensor {n!r}{_renamed(rules, n)}: no parameter of the model takes it"
                 f"{plain_attribute_hint(model, n, mapping)}{non_persistent_hint(model, n)}" for n in unexpected]
    problems += missing_problems(missing, mapping)
    # (the hints before the lines they explain: a fused layer's missing mapping entry was the last of 30 lines)
    loaded = [n for n, *_ in plan]
    return (name_prefix_hints(unexpected, missing, mapping, loaded) + renamed_module_hints(unexpected, missing, mapping, loaded)
            + kv_scale_hint(unexpected)
            + prefix_hints(misnamed, missing, unexpected, mapping) + fused_name_hints(model, missing, unexpected, mapping)
            + problems)


def _takes_missing(missing, params, buffers, owners, mapping, rules):
    """Whether a checkpoint tensor name (renamed, placed as :func:`_plan` does) would load into a missing parameter."""
    absent = {n for n, _ in missing}
    reverse = _by_part(mapping)

    def takes(name: str) -> bool:
        target = target_for(_mapped(rules, name), params, owners, reverse, buffers)
        return target is not None and target[0] in absent
    return takes


def _mapped(rules, name: str) -> str:
    """``name`` after ``param_names_mapping`` (``rules``; unchanged without any)."""
    return map_name(rules, name)[0] if rules else name


def _by_part(mapping: dict[str, list[str]]) -> dict[str, list[tuple[str, int]]]:
    """``packed_modules_mapping`` read backwards: each checkpoint part → every (fused module, shard index) listing it
    (``to_k`` is a part of ``to_qkv`` and of ``to_kv``: :func:`target_for` takes the one the model has there)."""
    reverse: dict[str, list[tuple[str, int]]] = {}
    for fused, parts in mapping.items():
        for i, part in enumerate(parts):
            reverse.setdefault(part, []).append((fused, i))
    return reverse


def _renamed(rules, name: str) -> str:
    """`` (param_names_mapping: → 'new')`` for a name the mapping changes, else nothing."""
    mapped = _mapped(rules, name)
    return f" (param_names_mapping: → {mapped!r})" if mapped != name else ""


def _report(model, checked: _Checked, loaded, process_weights: bool) -> tuple[LoadReport, set[int]]:
    """The LoadReport, and the ids of the layers left incomplete (not to be processed). A layer with a missing
    parameter refuses forward until it is set and processed; one that an earlier load left incomplete and this load
    completed is released."""
    absent: dict[int, list[str]] = {}
    for name, parts in checked.missing:
        absent.setdefault(id(checked.owners[name]), []).append(repr(name) + (f" (parts {parts})" if parts else ""))
    incomplete = []
    for layer_label, module in quant_layers(model):
        if id(module) in absent:
            mark_unloaded(module, layer_label, absent[id(module)])
            incomplete.append(layer_label)
        else:
            clear_unloaded(module)
    missing = checked.missing
    report = LoadReport(loaded, checked.files, missing=[n for n, _ in missing],
                        missing_parts={n: parts for n, parts in missing if parts},
                        unexpected=checked.unexpected, unprocessed=incomplete if process_weights else [])
    return report, set(absent)


def _write(plan, params, owners, path) -> dict[str, list[object]]:
    """The real load, after every check passed. A failure here (an I/O error, a loader rejecting the values of a
    large tensor) names the parameters already written: nothing is processed, so loading again overwrites them."""
    loaded: dict[str, list[object]] = {}
    for name, target, shard_id, handle, file in plan:
        try:
            call_loader(params[target], lazy_slice(handle, name), shard_id, owners[target], target)
        except Exception as exc:
            written = sorted(set(loaded) | {target})
            raise CheckpointError(
                f"checkpoint {str(path)!r}: writing tensor {name!r} ({file.name}) into {target!r}"
                + (f" shard {shard_id!r}" if shard_id is not None else "")
                + f" failed after every check had passed: {kind(exc)}{exc}. The model is partly loaded: "
                f"{len(written)} parameter(s) may hold this checkpoint's values ({names(written)}), the others do not, "
                "and no layer was processed. Fix the cause and load again (a complete load writes every parameter), "
                "or build a fresh model"
            ) from exc
        loaded.setdefault(target, []).append(shard_id)
        owner = owners[target]
        if "_fvq_loaded_shards" not in vars(owner):
            owner._fvq_loaded_shards = {}
            owner._fvq_loaded_from = {}  # parameter → shard id → checkpoint tensor name (for error locations)
        owner._fvq_loaded_shards.setdefault(leaf_name(target), set()).add(shard_id)
        owner._fvq_loaded_from.setdefault(leaf_name(target), {})[shard_id] = name
    return loaded


def _warn_incomplete(path, report: LoadReport, process_weights: bool, non_persistent: list[str]) -> None:
    lines = []
    if report.missing:
        shown = names(report.missing, lambda n: repr(n) + (f" (parts {report.missing_parts[n]})"
                                                            if n in report.missing_parts else ""))
        lines.append(f"{len(report.missing)} parameter(s) of the model were not loaded and keep what they held "
                     f"(uninitialised memory in a freshly built model): {shown}")
    if report.unexpected:
        lines.append(f"{len(report.unexpected)} tensor(s) of the checkpoint were ignored (no parameter takes them): "
                     f"{names(report.unexpected)}")
        if non_persistent:
            lines.append(f"{len(non_persistent)} of them are named after buffers the model marks non-persistent "
                         f"(register_buffer(..., persistent=False): not in its state_dict, so they load nothing): "
                         f"{names(non_persistent)}")
    if report.unprocessed:
        lines.append(f"{len(report.unprocessed)} layer(s) with missing parameters were not processed: "
                     f"{names(report.unprocessed)}; copy their parameters in and call process_weights_after_loading(model), "
                     "or load a checkpoint that holds them (and no tensor of a layer already processed) with "
                     "load_checkpoint(model, path), which writes and processes them (their forward raises "
                     "NotProcessedError until then)")
    elif report.missing and not process_weights:
        lines.append("process_weights_after_loading was not run (process_weights=False)")
    warn_at_caller(
        f"load_checkpoint(strict=False) of {str(path)!r}: " + "; ".join(lines)
        + ". LoadReport.missing / .unexpected / .unprocessed list them all",
        CheckpointWarning,
    )
