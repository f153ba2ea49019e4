"""Checkpoint tensors for the method under test, and loading them into layers.

The tensors come from ``config.quantize_weight(float_weight)`` — the method's own
on-disk format — one call per checkpoint module (q, k and v separately for a QKV
layer). "Fused on disk" concatenates the parts along each parameter's
``output_dim``; per-shard scalars (parameters without ``output_dim``) stay one per
shard. The loading here calls each parameter's ``weight_loader`` exactly as a
model loader would, and processing goes through the loader's own
:func:`~fastvideo_quant.loader.process_weights_after_loading` (each layer's
``validate_loaded_weights``, then ``process_weights_after_loading``), so it checks
the method, not a helper of the suite.

Checkpoint tensor names are the layer's prefix and the parameter
(``conformance.column.weight``); a part of a fused layer adds its shard id
(``conformance.qkv.q.weight``), the whole fused tensor has none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fastvideo_quant.testing.conformance.report import fmt_shapes
from fastvideo_quant.testing.conformance.sharding_dims import sharding_dims_failure, sharding_dims_problem
from fastvideo_quant.testing.conformance.subject import FUSED_KINDS, Subject, generator


@dataclasses.dataclass
class Part:
    """One checkpoint module of a layer: its float weight and bias and its quantized tensors."""

    shard_id: Any
    weight: torch.Tensor  # float32 [rows, in]
    bias: torch.Tensor  # float32 [rows]
    tensors: dict[str, torch.Tensor]


@dataclasses.dataclass
class LayerCheckpoint:
    kind: str
    parts: list[Part]

    def float_weight(self) -> torch.Tensor:
        return torch.cat([p.weight for p in self.parts], dim=0)

    def float_bias(self) -> torch.Tensor:
        return torch.cat([p.bias for p in self.parts], dim=0)

    def suffixes(self) -> list[str]:
        return sorted(self.parts[0].tensors)


def register_fix(layer: torch.nn.Module, each: bool = False) -> str:
    """How to fix a tensor create_weights keeps as a plain attribute of ``layer``, as its method is registered: a
    fastvideo_quant.parameter class under ``weight_loader_v2=True`` (which refuses plain parameters), else a
    ``Parameter`` with the layer's attributes."""
    it = "each" if each else "it"
    if getattr(layer, "uses_weight_loader_v2", False):
        return (f"create {it} in create_weights as a fastvideo_quant.parameter class (ModelWeightParameter, "
                "ChannelQuantScaleParameter, ...) with weight_loader=extra_weight_attrs['weight_loader'], and "
                "layer.register_parameter(name, param) (the method is registered with weight_loader_v2=True, which "
                "refuses plain parameters)")
    return (f"register {it} in create_weights: param = Parameter(tensor, requires_grad=False); "
            "layer.register_parameter(name, param); set_weight_attrs(param, {**extra_weight_attrs, 'output_dim': "
            "...}) (fastvideo_quant.parameter.set_weight_attrs; extra_weight_attrs holds the weight_loader)")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loader call: tensor ``name`` (on disk) into parameter ``param`` with ``shard_id``."""

    param: str
    name: str
    tensor: torch.Tensor
    shard_id: Any
    pass_shard_id: bool


def float_parts(subject: Subject, kind: str) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    """``(shard id, float32 weight [rows, in], bias [rows])`` of each checkpoint module of a ``kind`` layer: random,
    seeded by the subject's ``seed``, the kind and the shard."""
    out = []
    for shard_id, rows in subject.part_sizes(kind):
        g = generator(subject.seed, "weight", kind, shard_id)
        weight = torch.randn(rows, subject.input_size, generator=g) / math.sqrt(subject.input_size)
        out.append((shard_id, weight, torch.randn(rows, generator=g)))
    return out


def make_checkpoint(subject: Subject, kind: str, config=None) -> LayerCheckpoint:
    """Random float weights and biases of a ``kind`` layer, quantized part by part with ``quantize_weight``."""
    config = config if config is not None else subject.quant_config()
    parts = [Part(shard_id, weight, bias, _quantize(subject, config, weight, kind, shard_id, index))
             for index, (shard_id, weight, bias) in enumerate(float_parts(subject, kind))]
    names = {tuple(sorted(p.tensors)) for p in parts}
    if len(names) != 1:
        raise subject.fail("quantize_weight", subject.describe(kind),
                           f"returned different tensor names for the parts of one layer: {sorted(names)}",
                           "return the same suffixes for every weight")
    return LayerCheckpoint(kind, parts)


def check_writes_checkpoints(subject: Subject) -> None:
    """A failure when the config cannot write checkpoints at all (``quantize_weight`` raising NotImplementedError, as
    the base class's does): every check that loads a layer builds its checkpoint with it, so the pytest plugin calls
    this once before a class's tests run and reports it once. Any other raise is left to the checks that quantize."""
    kind = "replicated"
    shard_id, weight, _ = float_parts(subject, kind)[0]
    config = subject.quant_config()
    check_quantize_weight_signature(subject, config, kind)
    activations = calibration_for(subject, config, kind, 0)
    try:
        config.quantize_weight(weight.clone(), prefix=f"conformance.{kind}", activations=activations)
    except NotImplementedError as exc:
        raise _cannot_quantize(subject, config, kind, shard_id, weight, exc) from exc
    except Exception:  # noqa: BLE001 - reported by the checks that quantize, with the contract it breaks
        return


def check_quantize_weight_signature(subject: Subject, config, kind: str) -> None:
    """A ``[contract: quantize_weight]`` failure when ``config.quantize_weight`` cannot take the call the suite and
    ``fvq quantize`` make (``quantize_weight(weight, prefix=..., activations=...)``): every check that writes a
    checkpoint would fail with the same TypeError."""
    from fastvideo_quant.quantize.contract import QUANTIZE_WEIGHT_FIX, quantize_weight_problem

    problem = quantize_weight_problem(config, subject.owner())
    if problem:
        raise subject.fail("quantize_weight", subject.describe(kind), problem, QUANTIZE_WEIGHT_FIX)


def _cannot_quantize(subject: Subject, config, kind: str, shard_id: Any, weight: torch.Tensor,
                     exc: NotImplementedError):
    where = f"{subject.describe(kind)} part {shard_id!r} (float weight {list(weight.shape)})"
    return subject.fail("quantize_weight", where,
                        f"{type(config).__name__}.quantize_weight of {subject.owner()} raised NotImplementedError: {exc}",
                        f"implement quantize_weight(weight, *, prefix='', activations=None) on {type(config).__name__} "
                        "(returning {suffix: tensor}, the checkpoint tensors of one float weight): the suite builds "
                        "the method's checkpoints with it, and fvq quantize writes them with it")


def calibration_input(subject: Subject) -> torch.Tensor:
    """Float32 ``[tokens, in]`` activations ~ N(0, 1) on CPU, where the checkpoint weights are (seeded like them)."""
    return torch.randn(subject.tokens, subject.input_size, generator=generator(subject.seed, "x", "calibration"))


#: How much larger each checkpoint module's calibration activations are than the first's, for a fused kind, by part:
#: the largest in the middle of q, k, v, so that a fused layer that keeps the first part's, the last part's, the
#: smallest or the mean of its parts' calibrated scalars (a static ``input_scale``) clips the inputs ``apply`` is
#: checked on, instead of taking the largest (the one every part's inputs fit). Tools that calibrate each module on its
#: own (llm-compressor's observers, ModelOpt) store such different scalars for q, k and v.
CALIBRATION_SPREAD = {"merged": (0.25, 1.0), "qkv": (0.25, 1.0, 0.5)}


def calibration_for(subject: Subject, config, kind: str, index: int) -> torch.Tensor | None:
    """The calibration activations ``quantize_weight`` is given for part ``index`` of a ``kind`` layer: for a config
    that cannot quantize without them (``requires_calibration()`` True: fp8's static activation scheme), ``[tokens,
    in]`` ~ N(0, 1) — the distribution ``apply`` is checked on — times the part's :data:`CALIBRATION_SPREAD`; None
    for any other config (``fvq quantize`` without ``--calibration``; the calibrated mode of a method that only may
    read them is the method's own tests' to check)."""
    try:
        required = config.requires_calibration()
    except Exception as exc:
        raise subject.fail("requires_calibration", f"{type(config).__name__}.requires_calibration() of "
                           f"{subject.owner()}", f"raised {type(exc).__name__}: {exc}",
                           "return True (quantize_weight cannot run without activations) or False") from exc
    if required is not True:
        return None  # (a value other than a bool: test_calibration_declared reports it)
    return calibration_input(subject) * spread_factor(kind, index)


def spread_factor(kind: str, index: int) -> float:
    """Part ``index``'s factor of :data:`CALIBRATION_SPREAD` (cycled where a suite class gives a merged layer more
    parts than it lists; 1 for a layer of one part)."""
    spread = CALIBRATION_SPREAD.get(kind, (1.0,))
    return spread[index % len(spread)]


def calibration_spread_note(subject: Subject, ckpt: LayerCheckpoint) -> str:
    """For an accuracy failure of a fused layer whose parts were quantized with calibration activations of different
    ranges (:data:`CALIBRATION_SPREAD`), what that means for the per-part scalars the checkpoint holds; "" otherwise."""
    if ckpt.kind not in CALIBRATION_SPREAD or calibration_for(subject, subject.quant_config(), ckpt.kind, 0) is None:
        return ""
    spread = [spread_factor(ckpt.kind, i) for i in range(len(ckpt.parts))]
    scalars = {s: [float(p.tensors[s].float().reshape(-1)[0]) for p in ckpt.parts] for s in ckpt.suffixes()
               if all(p.tensors[s].numel() == 1 for p in ckpt.parts)}
    held = "; ".join(f"{s} {[f'{v:.4g}' for v in values]}" for s, values in scalars.items() if len(set(values)) > 1)
    return (f". Its parts {[p.shard_id for p in ckpt.parts]} were quantized with calibration activations of ranges "
            f"x{list(spread)}, as tools that calibrate each module on its own store them"
            + (f" (per-part scalars: {held})" if held else "")
            + ": one static activation scale for the fused layer must be the largest of its parts' (every part's "
            "inputs fit it); the first, the last, the smallest or the mean clips the others' inputs")


def _quantize(subject: Subject, config, weight: torch.Tensor, kind: str, shard_id: Any,
              index: int = 0) -> dict[str, torch.Tensor]:
    where = f"{subject.describe(kind)} part {shard_id!r} (float weight {list(weight.shape)})"
    check_quantize_weight_signature(subject, config, kind)
    activations = calibration_for(subject, config, kind, index)
    try:
        out = config.quantize_weight(weight.clone(), prefix=f"conformance.{kind}", activations=activations)
    except NotImplementedError as exc:
        raise _cannot_quantize(subject, config, kind, shard_id, weight, exc) from exc
    if not isinstance(out, dict) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise subject.fail("quantize_weight", where, f"returned {type(out).__name__} {out!r:.200}",
                           "return a non-empty dict {suffix: tensor}, e.g. {'weight': q, 'weight_scale': s}")
    return {k: v.detach().cpu() for k, v in out.items()}


def check_tensor_names(layer: torch.nn.Module, ckpt: LayerCheckpoint, subject: Subject) -> dict[str, torch.nn.Parameter]:
    """``layer``'s own parameters by name, once ``ckpt``'s tensor names (what ``quantize_weight`` returned) are checked
    to be parameters ``create_weights`` registered, and every parameter but the bias to be among them (or in the class
    attribute ``params_not_in_checkpoint``)."""
    params = dict(layer.named_parameters(recurse=False))
    where = subject.describe(ckpt.kind)
    unknown = [s for s in ckpt.suffixes() if s not in params]
    plain = [s for s in unknown if isinstance(vars(layer).get(s), torch.Tensor)]
    buffers = [s for s in unknown if s in layer._buffers]
    if buffers:
        raise subject.fail("create_weights: parameters registered", where,
                           f"quantize_weight returned {unknown}, but create_weights registered {buffers} as buffers "
                           f"(register_buffer), not parameters, so no weight loader writes the checkpoint tensor into "
                           f"them (parameters: {sorted(params)})", register_fix(layer))
    if plain:
        raise subject.fail("create_weights: parameters registered", where,
                           f"quantize_weight returned {unknown}, but create_weights set {plain} as plain tensor "
                           f"attributes of the layer (layer.{plain[0]} = tensor), not registered parameters, so no "
                           f"weight loader can write the checkpoint tensor into them (parameters: {sorted(params)})",
                           register_fix(layer))
    if unknown:
        raise subject.fail("quantize_weight matches create_weights", where,
                           f"quantize_weight returned {unknown}, but create_weights registered no parameter of "
                           f"that name (parameters: {sorted(params)})", _names_fix(subject))
    missing = [n for n in params if n != "bias" and n not in ckpt.suffixes() and n not in subject.params_not_in_checkpoint]
    if missing:
        raise subject.fail("quantize_weight matches create_weights", where,
                           f"create_weights registered {missing}, which quantize_weight does not return, so no "
                           "checkpoint loads them",
                           "return them from quantize_weight, or list them in the test class attribute "
                           "`params_not_in_checkpoint` if process_weights_after_loading computes them")
    return params


def entries(layer: torch.nn.Module, ckpt: LayerCheckpoint, subject: Subject, *, fused_on_disk: bool = False,
            with_bias: bool = True) -> list[Entry]:
    """The loader calls that load ``ckpt`` into ``layer``; checks the names match its parameters
    (:func:`check_tensor_names`)."""
    params = check_tensor_names(layer, ckpt, subject)
    fused_kind = ckpt.kind in FUSED_KINDS
    prefix = getattr(layer, "prefix", "") or f"conformance.{ckpt.kind}"
    tensors = {s: [p.tensors[s] for p in ckpt.parts] for s in ckpt.suffixes()}
    if with_bias and "bias" in params and params["bias"] is not None:
        tensors["bias"] = [p.bias for p in ckpt.parts]
    out = []
    for suffix, parts in tensors.items():
        param = params[suffix]
        out_dim = getattr(param, "output_dim", None)
        if fused_kind and fused_on_disk and out_dim is not None:
            problem = sharding_dims_problem(param, parts)
            if problem:
                raise sharding_dims_failure(subject, ckpt.kind, layer, suffix, problem)
            out.append(Entry(suffix, f"{prefix}.{suffix}", torch.cat(parts, dim=out_dim), None, True))
            continue
        for part, tensor in zip(ckpt.parts, parts):
            out.append(Entry(suffix, tensor_name(prefix, part.shard_id, suffix), tensor, part.shard_id, fused_kind))
    return out


def no_loader_failure(subject: Subject, layer: torch.nn.Module, where: str):
    """The failure naming every parameter of ``layer`` without a callable ``weight_loader`` (a loader reaches only
    the first), with the fix that fits each: ``set_weight_attrs`` for a plain ``nn.Parameter``, which takes no
    ``weight_loader=`` argument, the argument for a ``fastvideo_quant.parameter`` class."""
    from fastvideo_quant.parameter import BasevLLMParameter

    missing = {n: p for n, p in layer.named_parameters(recurse=False) if not callable(getattr(p, "weight_loader", None))}
    found = ", ".join(f"{n!r} ({type(p).__name__}, "
                      + ("weight_loader None)" if hasattr(p, "weight_loader") else "no weight_loader attribute)")
                      for n, p in missing.items())
    plain = [n for n, p in missing.items() if not isinstance(p, BasevLLMParameter)]
    typed = [n for n in missing if n not in plain]
    fixes = []
    if plain:
        fixes.append(f"give {plain} the layer's loader with set_weight_attrs(param, extra_weight_attrs) "
                     "(fastvideo_quant.parameter.set_weight_attrs; with the sharding attributes: set_weight_attrs(param, "
                     "{'output_dim': 0, 'input_dim': 1, **extra_weight_attrs})), or create each as a "
                     "fastvideo_quant.parameter class built with weight_loader=extra_weight_attrs['weight_loader']")
    if typed:
        fixes.append(f"build {typed} with weight_loader=extra_weight_attrs['weight_loader']")
    method = type(getattr(layer, "quant_method", None)).__name__
    return subject.fail("create_weights: weight_loader", where,
                        f"{method}.create_weights of {subject.owner()} left {len(missing)} parameter"
                        f"{'' if len(missing) == 1 else 's'} without a weight_loader, so no checkpoint tensor can be "
                        f"loaded into {'it' if len(missing) == 1 else 'them'}: {found}",
                        "; ".join(fixes))


def tensor_name(prefix: str, shard_id: Any, suffix: str) -> str:
    """The checkpoint name of one tensor: ``prefix.suffix``, with the shard id of a fused layer's part between."""
    return f"{prefix}.{suffix}" if shard_id is None else f"{prefix}.{shard_id}.{suffix}"


def load(layer: torch.nn.Module, items: list[Entry], subject: Subject, kind: str, *, tp: int = 1,
         get: Callable[[Entry], Any] | None = None) -> None:
    """Call each parameter's ``weight_loader``; a loader error becomes a failure naming the call."""
    params = dict(layer.named_parameters(recurse=False))
    for e in items:
        param = params[e.param]
        tensor = get(e) if get is not None else e.tensor
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            raise no_loader_failure(subject, layer, subject.describe(kind, tp=tp))
        rounded = _rounding_cast(layer, e, param)
        if rounded is not None:
            raise subject.fail(
                "loading: dtypes", subject.describe(kind, tp=tp),
                f"quantize_weight writes {e.name!r} as {e.tensor.dtype}, but create_weights made parameter {e.param!r} "
                f"{param.dtype} (not the layer's params_dtype {layer.params_dtype}), so the load rounds the values "
                f"written: {rounded}",
                f"create {e.param!r} in {e.tensor.dtype}, or have quantize_weight write it in {param.dtype} (the dtype "
                "the format stores it in)")
        try:
            loader(param, tensor, e.shard_id) if e.pass_shard_id else loader(param, tensor)
        except Exception as exc:
            kinds_differ = e.tensor.dtype.is_floating_point != param.dtype.is_floating_point
            raise subject.fail(
                "loading", subject.describe(kind, tp=tp),
                f"loading checkpoint tensor {e.name!r} {list(e.tensor.shape)} {e.tensor.dtype} into parameter "
                f"{e.param!r} {list(param.shape)} {param.dtype}"
                + (f" (shard id {e.shard_id!r})" if e.pass_shard_id else "") + f" raised {type(exc).__name__}: {exc}",
                (f"create parameter {e.param!r} in the dtype quantize_weight writes ({e.tensor.dtype}), not "
                 f"{param.dtype} (params_dtype is the model's dtype, for float tensors only)") if kinds_differ else
                "make the parameter's per-rank shape and sharding attributes (output_dim/input_dim, and for a packed "
                "parameter packed_dim/packed_factor) agree with the checkpoint tensors quantize_weight returns",
            ) from exc


def _rounding_cast(layer: torch.nn.Module, e: Entry, param: torch.Tensor) -> str | None:
    """Where a float checkpoint tensor goes into a float parameter of another fixed dtype (not the layer's
    ``params_dtype``, the model's dtype, which float weights and biases are cast to by design) and the cast changes its
    values: how many change and by how much at most (relative). None where the cast is exact."""
    t = e.tensor
    if (not isinstance(t, torch.Tensor) or not t.is_floating_point() or not param.is_floating_point()
            or t.dtype == param.dtype or param.dtype == getattr(layer, "params_dtype", param.dtype)):
        return None
    back = t.to(param.dtype).to(t.dtype).double()  # (compared in float64: torch has no float8 arithmetic on CPU)
    t = t.double()
    changed = (back != t) & ~(back.isnan() & t.isnan())
    if not changed.any():
        return None
    rel = ((back - t).abs() / t.abs().clamp_min(torch.finfo(torch.float64).tiny))[changed & t.isfinite()]
    worst = f", by up to {rel.max().item():.2g} (relative)" if rel.numel() else ""
    return f"{int(changed.sum())} of {t.numel()} values change{worst}"


def build_loaded(subject: Subject, kind: str, ckpt: LayerCheckpoint, *, bias: bool, dtype: torch.dtype,
                 fused_on_disk: bool = False, process: bool = True, tp: int = 1, config=None,
                 get: Callable[[Entry], Any] | None = None, layer: torch.nn.Module | None = None) -> torch.nn.Module:
    """A ``kind`` layer with ``ckpt`` loaded (and ``process_weights_after_loading`` run), on the subject's device;
    ``layer``, one the caller built so (and inspected before loading), instead of a new one."""
    if layer is None:
        layer = subject.build_layer(kind, bias=bias, dtype=dtype, quant_config=config)
    load(layer, entries(layer, ckpt, subject, fused_on_disk=fused_on_disk, with_bias=bias), subject, kind, tp=tp,
         get=get)
    layer.to(subject.device())
    if process:
        process_weights(layer, subject, kind, tp=tp)
    return layer


def process_weights(layer: torch.nn.Module, subject: Subject, kind: str, tp: int = 1) -> None:
    """Validate, then process, ``layer`` through the loader's own
    :func:`~fastvideo_quant.loader.process_weights_after_loading` (the path a model load takes), so the suite
    and the loader cannot drift apart; a refusal or a raise is a failure naming the contract and the plugin, and so
    is a ``validate_loaded_weights`` that modifies the layer (not the wrong weights or outputs it leads to)."""
    from fastvideo_quant.errors import WeightLoadError, WeightProcessingError
    from fastvideo_quant.loader import process_weights_after_loading

    where = subject.describe(kind, tp=tp)
    changed: list[str] = []
    try:
        with _watching_validation(layer, changed):
            process_weights_after_loading(layer)
    except (WeightProcessingError, WeightLoadError) as exc:
        if changed:  # (what it changed may be why processing failed)
            raise _validation_modified(subject, layer, where, changed) from exc
        raise _processing_failure(subject, layer, where, exc) from exc
    if changed:
        raise _validation_modified(subject, layer, where, changed)


#: The contract a ``validate_loaded_weights`` that modifies the layer breaks, and how to fix it.
VALIDATE_UNCHANGED = "validate_loaded_weights: layer unchanged"
VALIDATE_READ_ONLY_FIX = ("only read the layer in validate_loaded_weights: the loader validates every layer before "
                          "processing any, so a model with one bad tensor is left as loaded, not half converted; "
                          "convert in process_weights_after_loading")


@contextlib.contextmanager
def _watching_validation(layer: torch.nn.Module, changed: list[str]) -> Iterator[None]:
    """While inside, the layer's ``validate_loaded_weights`` (as the loader calls it) records in ``changed`` what it
    modified (:func:`~fastvideo_quant.testing.conformance.validation.changes`): a check processing the layer then
    reports that, not the wrong weights or outputs it leads to."""
    from fastvideo_quant.testing.conformance.validation import changes, layer_state

    method = getattr(layer, "quant_method", None)
    validate = getattr(method, "validate_loaded_weights", None)
    own = getattr(method, "__dict__", None)
    if validate is None or own is None or "validate_loaded_weights" in own:
        yield  # (none, no instance attributes, or already one of them: left alone)
        return

    def watched(module: torch.nn.Module) -> None:
        before = layer_state(module)
        validate(module)
        changed.extend(changes(before, layer_state(module)))

    method.validate_loaded_weights = watched
    try:
        yield
    finally:
        del method.validate_loaded_weights


def _validation_modified(subject: Subject, layer: torch.nn.Module, where: str, changed: list[str]):
    return subject.fail(VALIDATE_UNCHANGED, where,
                        f"{type(layer.quant_method).__name__} of {subject.owner()}: validate_loaded_weights, called "
                        f"by the loader's process_weights_after_loading, modified layer {layer.prefix!r}: "
                        + "; ".join(changed), VALIDATE_READ_ONLY_FIX)


def _processing_failure(subject: Subject, layer: torch.nn.Module, where: str, exc: Exception):
    """The failure a WeightProcessingError (processing raised) or WeightLoadError (validation refused) from the
    loader's processing stands for."""
    from fastvideo_quant.errors import WeightProcessingError

    method = f"{type(layer.quant_method).__name__} of {subject.owner()}"
    if isinstance(exc, WeightProcessingError):
        from fastvideo_quant.processing import raised_line

        cause = exc.__cause__ or exc
        return subject.fail("process_weights_after_loading", where,
                            f"{method} raised {raised_line(layer, cause)}; parameters: "
                            f"{fmt_shapes(dict(layer.named_parameters(recurse=False)))}",
                            "it must convert every layer its create_weights built and the loader filled from a "
                            "checkpoint its quantize_weight wrote (each layer class its get_quant_method handles)")
    return subject.fail("validate_loaded_weights", where,
                        f"{method} refused, in the loader's process_weights_after_loading, tensors its own "
                        f"quantize_weight wrote and its weight loaders loaded: {exc}",
                        "validate_loaded_weights must accept every checkpoint quantize_weight writes; refuse only "
                        "what no correct load leaves (a non-finite scale, a parameter never loaded)")


def param_snapshot(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in layer.named_parameters(recurse=False) if p is not None}


@contextlib.contextmanager
def loader_spy() -> Iterator[list[tuple[str, int]]]:
    """Record ``(loader name, id(param))`` for every layer ``weight_loader``/``weight_loader_v2`` call.

    Layers created inside the block bind the recording loaders, so calls made
    later (after the block) are recorded too.
    """
    from fastvideo_quant.layers import column as C
    from fastvideo_quant.layers import linear as L

    calls: list[tuple[str, int]] = []
    saved = []
    classes = [L.ReplicatedLinear, L.ColumnParallelLinear, C._FusedColumnLinear, L.MergedColumnParallelLinear,
               L.QKVParallelLinear, L.RowParallelLinear]
    for cls in classes:
        for attr in ("weight_loader", "weight_loader_v2"):
            if attr in cls.__dict__:
                saved.append((cls, attr, cls.__dict__[attr]))
                setattr(cls, attr, _recording(cls.__dict__[attr], attr, calls))
    try:
        yield calls
    finally:
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


def _recording(fn, name: str, calls: list[tuple[str, int]]):
    def wrapper(self, param, *args, **kwargs):
        calls.append((name, id(param)))
        return fn(self, param, *args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__wrapped__ = fn
    return wrapper


def _names_fix(subject: Subject) -> str:
    """How to fix checkpoint tensors the layers do not register: their names; or, for a config of two modes whose
    ``to_dict()`` does not write its pre-quantized mode (so ``from_config(to_dict())`` builds layers that quantize on
    load, and register the float weight only), that."""
    writer, cls = subject.quant_config(), subject.config_cls()
    if cls.quantized_checkpoint_keys and writer.reads_quantized_checkpoint() and \
            not subject.checkpoint_config().reads_quantized_checkpoint():
        written = {k: writer.to_dict().get(k, "<not written>") for k in cls.quantized_checkpoint_keys}
        return (f"{cls.__name__} was built with its quantized_checkpoint_keys {cls.quantized_checkpoint_keys} (as fvq "
                f"quantize builds the config that writes a checkpoint), but its to_dict() writes {written}, so "
                "from_config(to_dict()), the config a model loading that checkpoint builds, is in the mode that "
                "quantizes float weights on load: write each of those keys in to_dict() as the config holds it")
    return "name the checkpoint tensors after the layer parameters they load into"
