"""Contract: the method reads the checkpoints of the formats it claims as the tools that write them mean them.

Every other check loads checkpoints the method's own ``quantize_weight`` wrote, so a
convention wrong the same way in writer and reader (AutoAWQ's nibble order, a scale
stored as its reciprocal, codes offset by 8 or not) passes them. A *golden
checkpoint* is a few modules' tensors exactly as a format's tools store them and the
float weights they mean (:class:`GoldenCheckpoint`); the suite loads each one the way a
model load does (its ``quantization_config`` selects the method, then every layer class
at TP=1) and compares ``dequantize_weight`` with those weights, and ``apply`` with float32 math of the
weights it loaded (the tolerance for the dtype).

Two sources: the suite's library (:mod:`.golden_library`: AutoAWQ GEMM, fp8, compressed-tensors
float- and pack-quantized, bitsandbytes int8, each written from its format's definition
with no plugin code), of which a method is checked on the checkpoints whose section it
claims, and the suite class's ``golden_checkpoints`` (a plugin's own format, files its
reference tool wrote: :meth:`GoldenCheckpoint.from_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import ConformanceFailure, rel_error, scale_bias
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, PARALLEL_KINDS, Subject, random_input

#: The default bound on ``||dequantize_weight - golden weight|| / ||golden weight||``: a golden's tensors mean one
#: weight exactly, so what is left is the rounding of a layer that keeps its weight in a 16-bit dtype (bfloat16's half
#: ulp, 2^-9 relative) or re-quantizes fused parts to one scale (a golden of such a format declares its own bound).
GOLDEN_REL_ERROR = 4e-3
#: The folder layout :meth:`GoldenCheckpoint.from_folder` reads and :meth:`GoldenCheckpoint.to_folder` writes.
CONFIG_FILE, TENSORS_FILE, REFERENCE_FILE = "config.json", "model.safetensors", "reference.safetensors"
#: Optional beside them: the golden's ``name``, ``source`` and ``weight_rel_error`` (what :meth:`to_folder` writes).
ABOUT_FILE = "golden.json"


@dataclasses.dataclass(frozen=True)
class GoldenModule:
    """One linear module of a golden checkpoint: its tensors as stored and the float weight they mean."""

    tensors: Mapping[str, torch.Tensor]
    weight: torch.Tensor  # float32 [out, in]
    bias: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class GoldenCheckpoint:
    """Modules of one shape, stored in one format, and what they mean.

    :param name: what the checkpoint is (``"AutoAWQ GEMM int4, group 32"``), for failures.
    :param quantization_config: the checkpoint's ``config.json`` ``quantization_config`` section, as the tool wrote it.
    :param modules: one or more modules of the same ``[out, in]`` weight; a fused layer takes them as its parts in
        order (cycled), so give at least three of different content to check q, k and v land apart.
    :param source: who wrote the tensors, or the definition they were written from.
    :param weight_rel_error: the bound on ``dequantize_weight`` against the modules' weights (None:
        :data:`GOLDEN_REL_ERROR`).
    """

    name: str
    quantization_config: Mapping[str, Any]
    modules: tuple[GoldenModule, ...]
    source: str = ""
    weight_rel_error: float | None = None

    def __post_init__(self) -> None:
        problems = _shape_problems(self)
        if problems:
            raise ValueError(f"golden checkpoint {self.name!r}: " + "; ".join(problems))

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)`` of each module's weight."""
        return tuple(self.modules[0].weight.shape)  # type: ignore[return-value]

    @property
    def bar(self) -> float:
        return GOLDEN_REL_ERROR if self.weight_rel_error is None else self.weight_rel_error

    def describe(self) -> str:
        """``golden checkpoint 'name'`` (the source, often long, goes in the fixes: :meth:`defined_by`)."""
        return f"golden checkpoint {self.name!r}"

    def defined_by(self) -> str:
        """`` (the format as defined by: <source>)``, or "" without a source."""
        return f" (the format as defined by: {self.source})" if self.source else ""

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None, source: str = "",
                    weight_rel_error: float | None = None) -> GoldenCheckpoint:
        """A golden checkpoint from a folder a format's own tool wrote, with the weights it means beside it:

        - ``config.json``: the checkpoint's config, holding its ``quantization_config``;
        - ``model.safetensors``: each module's tensors as ``<module>.<suffix>`` (``layers.0.qweight``), its float
          ``<module>.bias`` among them where it has one, as checkpoints store it;
        - ``reference.safetensors``: each module's float weight as ``<module>.weight`` (``[out, in]``, from the
          tool's own de-quantization).

        Modules are taken in the natural order of their names (``m2`` before ``m10``); a fused layer's parts take them
        in that order. A ``golden.json`` beside them (:meth:`to_folder` writes one) gives the name, source and bound
        the arguments do not.
        """
        from safetensors.torch import load_file

        root = Path(folder)
        where = f"golden checkpoint folder {str(root)!r}"
        for file in (CONFIG_FILE, TENSORS_FILE, REFERENCE_FILE):
            if not (root / file).is_file():
                raise FileNotFoundError(f"{where} has no {file}; it needs {CONFIG_FILE} (with the "
                                        f"quantization_config), {TENSORS_FILE} (<module>.<suffix> as the tool stores "
                                        f"them) and {REFERENCE_FILE} (<module>.weight, the float weights they mean)")
        config = json.loads((root / CONFIG_FILE).read_text())
        section = config.get("quantization_config") if isinstance(config, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{where}: {CONFIG_FILE} has no quantization_config object (found keys "
                             f"{sorted(config) if isinstance(config, dict) else type(config).__name__})")
        about = json.loads((root / ABOUT_FILE).read_text()) if (root / ABOUT_FILE).is_file() else {}
        if not isinstance(about, dict):
            raise ValueError(f"{where}: {ABOUT_FILE} must be an object with name, source and weight_rel_error, found "
                             f"{type(about).__name__}")
        stored, reference = load_file(root / TENSORS_FILE), load_file(root / REFERENCE_FILE)
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in stored.items():
            module, _, suffix = key.rpartition(".")
            if not module:
                raise ValueError(f"{where}: tensor {key!r} in {TENSORS_FILE} is not named <module>.<suffix>")
            grouped.setdefault(module, {})[suffix] = tensor
        biases = {m: tensors.pop("bias") for m, tensors in grouped.items() if "bias" in tensors}
        missing = [m for m in grouped if f"{m}.weight" not in reference]
        extra = sorted({k.rpartition(".")[0] for k in reference} - set(grouped))
        if missing or extra:
            raise ValueError(f"{where}: {REFERENCE_FILE} must hold <module>.weight for each module of {TENSORS_FILE} "
                             f"({sorted(grouped)}); " + (f"missing {[f'{m}.weight' for m in missing]}" if missing else "")
                             + ("; " if missing and extra else "") + (f"no such module in {TENSORS_FILE}: {extra}"
                                                                      if extra else ""))
        modules = tuple(GoldenModule(grouped[m], reference[f"{m}.weight"].float(),
                                     biases.get(m, reference.get(f"{m}.bias"))) for m in sorted(grouped, key=_natural))
        return cls(name or about.get("name") or root.name, section, modules,
                   source=source or about.get("source") or str(root),
                   weight_rel_error=weight_rel_error if weight_rel_error is not None else about.get("weight_rel_error"))

    def to_folder(self, folder: str | Path) -> Path:
        """Write the layout :meth:`from_folder` reads (modules named ``m0``, ``m1``, ...; the name, source and bound in
        ``golden.json``); returns the folder."""
        from safetensors.torch import save_file

        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_FILE).write_text(json.dumps({"quantization_config": dict(self.quantization_config)}, indent=2))
        stored, reference = {}, {}
        for i, m in enumerate(self.modules):
            stored.update({f"m{i}.{s}": t.contiguous().clone() for s, t in m.tensors.items()})  # (modules may share)
            reference[f"m{i}.weight"] = m.weight.contiguous().clone()
            if m.bias is not None:
                stored[f"m{i}.bias"] = m.bias.contiguous().clone()
        save_file(stored, root / TENSORS_FILE)
        save_file(reference, root / REFERENCE_FILE)
        (root / ABOUT_FILE).write_text(json.dumps({"name": self.name, "source": self.source,
                                                   "weight_rel_error": self.weight_rel_error}, indent=2))
        return root


def _natural(name: str) -> list:
    """``layers.10.q`` after ``layers.2.q``: digit runs compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _shape_problems(golden: GoldenCheckpoint) -> list[str]:
    if not golden.modules:
        return ["has no modules (give at least one GoldenModule)"]
    problems = []
    shapes = {tuple(m.weight.shape) for m in golden.modules}
    if any(len(s) != 2 for s in shapes):
        problems.append(f"each module's weight must be 2-D [out, in], found shapes {sorted(shapes)}")
    elif len(shapes) > 1:
        problems.append(f"every module's weight must have one shape [out, in], found {sorted(shapes)}")
    for i, m in enumerate(golden.modules):
        if not m.tensors:
            problems.append(f"module {i} has no tensors")
        if not m.weight.is_floating_point():
            problems.append(f"module {i}'s weight must be float (the weight its tensors mean), found {m.weight.dtype}")
        if m.bias is not None and tuple(m.bias.shape) != tuple(m.weight.shape[:1]):
            problems.append(f"module {i}'s bias is {list(m.bias.shape)}, expected [{m.weight.shape[0]}]")
    names = {tuple(sorted(m.tensors)) for m in golden.modules}
    if len(names) > 1:
        problems.append(f"its modules store different tensors: {sorted(names)}")
    if not isinstance(golden.quantization_config, Mapping):
        problems.append(f"quantization_config must be a dict, found {type(golden.quantization_config).__name__}")
    return problems


# --- which goldens a method is checked on --------------------------------------------------
def claimed_by(golden: GoldenCheckpoint) -> str | Exception:
    """The registered method a load of ``golden`` selects from its ``quantization_config`` (what the plugins'
    ``override_quantization_method`` claim, else its ``quant_method``), or the refusal selecting one raised (a
    ``FastVideoQuantError``: no installed method reads the section). Any other exception is a plugin hook's bug and
    propagates."""
    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.quantization.selection import method_for_quant_section

    try:
        return method_for_quant_section(dict(golden.quantization_config), None)
    except FastVideoQuantError as exc:
        return exc


def library_goldens(method: str) -> list[GoldenCheckpoint]:
    """The suite library's golden checkpoints whose section selects ``method``."""
    from fastvideo_quant.testing.conformance.golden_library import library

    return [g for g in library() if claimed_by(g) == method]


def goldens_for(subject: Subject, own: tuple[GoldenCheckpoint, ...], use_library: bool) -> list[GoldenCheckpoint]:
    """The suite class's own goldens, then (``use_library``) the library's that its method reads; a plugin hook that
    raises while the library's sections are matched to methods is a ``golden: format claimed`` failure (a real load of
    such a checkpoint would raise it too), not a golden silently left out."""
    try:
        found = library_goldens(subject.method) if use_library else []
    except Exception as exc:
        raise subject.fail("golden: format claimed", "matching the suite library's golden checkpoints to methods",
                           f"selecting the method of a library checkpoint raised {type(exc).__name__}: {exc} (a load "
                           "of such a checkpoint raises it too)",
                           "fix the override_quantization_method that raised (the traceback of the exception chained "
                           "to this failure names it): a hook returns None for a section it does not read") from exc
    return list(own) + found


# --- the check -----------------------------------------------------------------------------------
def golden_subject(subject: Subject, golden: GoldenCheckpoint) -> Subject:
    """``subject`` resized to the golden's modules: a column / row / replicated layer of one module, a merged layer of
    two, a QKV layer of three (``tp_size`` heads each, at least 2, so q, k and v are one module each and split over the
    ranks; 1 where ``out`` does not divide)."""
    out, inp = golden.shape
    heads = max(2, subject.tp_size)
    heads = heads if out % heads == 0 else 1
    return dataclasses.replace(subject, config=dict(golden.quantization_config), input_size=inp, output_size=out,
                               merged_output_sizes=(out, out), num_heads=heads, num_kv_heads=heads,
                               head_size=out // heads)


def tp_shape_problem(subject: Subject, golden: GoldenCheckpoint) -> str | None:
    """Why the golden's modules cannot make layers split over ``tp_size`` ranks (a size that does not divide), or None."""
    out, inp = golden.shape
    tp = subject.tp_size
    bad = [f"{name} {size}" for name, size in (("out", out), ("in", inp)) if size % tp]
    return (f"golden checkpoint {golden.name!r}: its modules' {' and '.join(bad)} do not split over tp_size {tp}; give "
            f"modules whose out and in are multiples of {tp} (and of the format's packing and groups per rank)"
            if bad else None)


def golden_layer_checkpoint(subject: Subject, golden: GoldenCheckpoint, kind: str) -> ck.LayerCheckpoint:
    """The golden's modules as the parts of a ``kind`` layer (cycled), in the suite's checkpoint form."""
    parts = []
    for i, (shard_id, _) in enumerate(subject.part_sizes(kind)):
        m = golden.modules[i % len(golden.modules)]
        bias = m.bias if m.bias is not None else torch.zeros(m.weight.shape[0])
        parts.append(ck.Part(shard_id, m.weight.float(), bias.float(), dict(m.tensors)))
    return ck.LayerCheckpoint(kind, parts)


def check_golden(subject: Subject, golden: GoldenCheckpoint, kind: str, *, own: bool) -> None:
    """Load ``golden`` into a ``kind`` layer built with the config its section resolves to, through the layer's weight
    loaders and the loader's processing, and check ``dequantize_weight`` against the golden weights (within its bound,
    no gain) and ``apply`` against ``x @ dequantize_weight.T + golden bias`` (the config's tolerance for the dtype)."""
    from fastvideo_quant.testing.conformance.loading import dequantized

    _warn_few_modules(golden, kind)
    gs = golden_subject(subject, golden)
    config = _golden_config(subject, golden, f"{gs.describe(kind)} loading {golden.describe()}", own=own)
    ckpt = golden_layer_checkpoint(gs, golden, kind)
    for dtype in golden_dtypes(gs):
        where = f"{gs.describe(kind, dtype=dtype)} loading {golden.describe()}"
        layer = load_golden(gs, golden, kind, ckpt, config, where, dtype=dtype)
        w, ref = dequantized(gs, layer, kind), ckpt.float_weight()
        if tuple(w.shape) != tuple(ref.shape):
            raise gs.fail("golden: weight", where, f"dequantize_weight returned shape {list(w.shape)}, the golden weight "
                          f"is {list(ref.shape)}", "return this rank's weight as [out, in] (unpack and transpose as "
                          "needed)")
        _check_weight(gs, golden, ckpt, w, where)
        _check_apply(gs, golden, layer, ckpt, w, kind, dtype, where, config.tolerance)


def golden_dtypes(subject: Subject) -> tuple[torch.dtype, ...]:
    """The layer dtypes a golden is loaded and applied in: on a GPU every runnable one (the kernels have float16 and
    bfloat16 variants, which read the format's tensors themselves), on CPU the main one. The main one first on both:
    a loading or weight failure is reported in the dtype that judges exact values, as the CPU run reports it."""
    main = subject.main_dtype()
    if subject.device().type != "cuda":
        return (main,)
    return (main, *(d for d in subject.runnable_act_dtypes() if d != main))


def has_bias(golden: GoldenCheckpoint) -> bool:
    return any(m.bias is not None for m in golden.modules)


def load_golden(subject: Subject, golden: GoldenCheckpoint, kind: str, ckpt: ck.LayerCheckpoint, config, where: str,
                tp: int = 1, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A ``kind`` layer with the golden loaded and processed; a load the layer refuses is a ``golden: loading``
    failure naming the golden's own tensors (not ``quantize_weight``, which wrote none of them), with a hint when the
    golden's reference weights look transposed."""
    from fastvideo_quant.errors import ShardingError

    dtype = dtype or subject.main_dtype()
    try:
        layer = subject.build_layer(kind, bias=has_bias(golden), dtype=dtype, quant_config=config)
    except ShardingError as exc:  # (the layer's own refusal of sizes the format cannot take: the golden's sizes)
        raise GoldenUnsplit(f"{where}: {exc}") if tp > 1 else subject.fail(
            "golden: loading", where, f"the method cannot build this layer of the golden's sizes "
            f"(out={golden.shape[0]}, in={golden.shape[1]}): {exc}",
            "give the golden modules of sizes the format takes (its packing and groups), as its tools write them") \
            from exc
    _check_names(subject, golden, layer, where)
    try:
        return ck.build_loaded(subject, kind, ckpt, bias=has_bias(golden), dtype=dtype, config=config, tp=tp,
                               layer=layer)
    except ShardingError as exc:
        if tp > 1:
            raise GoldenUnsplit(f"{where}: {exc}") from exc
        raise
    except ConformanceFailure as exc:
        if tp > 1 and isinstance(exc.__cause__, ShardingError):
            raise GoldenUnsplit(f"{where}: {exc.__cause__}") from exc
        if exc.contract not in ("loading", "create_weights: parameters registered", "quantize_weight matches "
                                "create_weights", "process_weights_after_loading", "validate_loaded_weights"):
            raise
        shapes = {s: list(t.shape) for s, t in golden.modules[0].tensors.items()}
        raise subject.fail(
            "golden: loading", where,
            f"the golden's tensors (each module: {shapes}) do not load: [{exc.contract}] {exc.problem}"
            + _transposed_hint(subject, golden, kind, config),
            "make the parameters create_weights registers take the format's tensors as its tools store them (their "
            "shapes, dtypes and packed dims; per rank, narrowed along output_dim / input_dim), and process them as "
            f"the format means them{golden.defined_by()}") from exc


class GoldenUnsplit(Exception):
    """On a TP rank: the layer refused to split the golden's sizes over the ranks (a ``ShardingError``: 64 rows per rank
    of a 128-row block); the golden is left out at that TP size, not failed."""


def _transposed_hint(subject: Subject, golden: GoldenCheckpoint, kind: str, config) -> str:
    """"; the golden's reference weights look transposed ..." when the same tensors load into a layer of swapped sizes
    (reference weights written ``[in, out]``); "" otherwise."""
    out, inp = golden.shape
    if out == inp:
        return ""
    swapped = dataclasses.replace(golden, name=golden.name + " (transposed)", modules=tuple(
        GoldenModule(m.tensors, m.weight.T, None) for m in golden.modules))
    try:
        gs = golden_subject(subject, swapped)
        ck.build_loaded(gs, kind, golden_layer_checkpoint(gs, swapped, kind), bias=False, dtype=gs.main_dtype(),
                        config=config, process=False)
    except Exception:  # noqa: BLE001 - they do not load that way either: no hint
        return ""
    return (f"; they do load into a layer of in={out}, out={inp}: the golden's reference weights look transposed "
            f"(found [{out}, {inp}]; GoldenModule.weight and reference.safetensors hold [out, in])")


def _warn_few_modules(golden: GoldenCheckpoint, kind: str) -> None:
    parts = {"merged": 2, "qkv": 3}.get(kind, 1)
    distinct = len({id(m) for m in golden.modules})
    if distinct < parts:
        import warnings

        warnings.warn(f"golden checkpoint {golden.name!r} has {distinct} module{'s' if distinct > 1 else ''}, so the "
                      f"{kind} layer's {parts} parts repeat {'them' if distinct > 1 else 'it'}: a part loaded into "
                      "another part's rows is not seen; give three modules of different content", UserWarning,
                      stacklevel=2)


def _golden_config(subject: Subject, golden: GoldenCheckpoint, where: str, *, own: bool):
    from fastvideo_quant.quantization.selection import resolve_quant_config

    claimed = claimed_by(golden)
    section = dict(golden.quantization_config)
    if claimed != subject.method:
        found = (f"selecting a method raised {type(claimed).__name__}: {claimed}" if isinstance(claimed, Exception)
                 else f"it selects method {claimed!r}" + ("" if _registered(claimed) else
                                                          ", which no loaded plugin registers"))
        raise subject.fail("golden: format claimed", where,
                           f"a load of a checkpoint whose quantization_config is {section} must select {subject.method!r} "
                           f"({subject.owner()}), but {found}",
                           f"claim this section in {subject.config_cls().__name__}.override_quantization_method (return "
                           f"{subject.method!r} for it), or give the golden checkpoint the quant_method the plugin "
                           "registers" if own else "")
    options = load_options(subject)
    try:
        return resolve_quant_config(hf_config={"quantization_config": section}, load_options=options or None)
    except Exception as exc:
        given = f", load_options={options}" if options else ""
        raise subject.fail("golden: from_config", where,
                           f"resolve_quant_config(hf_config={{'quantization_config': {section}}}{given}) raised "
                           f"{type(exc).__name__}: {exc}",
                           f"make {subject.config_cls().__name__}.from_config read every key the format's tools "
                           "write") from exc


def load_options(subject: Subject) -> dict[str, Any]:
    """The settings of the suite class's ``config`` that are the config class's ``load_time_keys`` (AWQ's
    ``fp8_compute``): how the loaded layers compute, which the loader chooses whatever a checkpoint declares, so a
    golden is loaded with them as the class's own checkpoints are. (Other settings are the golden section's.)"""
    keys = getattr(subject.config_cls(), "load_time_keys", ()) or ()
    return {k: v for k, v in (subject.config or {}).items() if k in keys}


def options_problem(subject: Subject, golden: GoldenCheckpoint) -> str:
    """Why ``golden`` is not checked with the suite class's load-time options, else "": its section loads without them,
    and the config refuses the two together with a ConfigError (int8's ``fvq_backend: triton`` runs threshold 0 only,
    so the bitsandbytes golden at transformers' default 6.0 is not for that class; its threshold-0 golden is). A
    section refused either way is left to the golden check, which reports it."""
    from fastvideo_quant.errors import ConfigError
    from fastvideo_quant.quantization.selection import resolve_quant_config

    options = load_options(subject)
    if not options or claimed_by(golden) != subject.method:
        return ""
    section = {"quantization_config": dict(golden.quantization_config)}
    try:
        resolve_quant_config(hf_config=section, load_options=options)
        return ""
    except ConfigError as exc:
        refused = exc
    except Exception:  # noqa: BLE001 - not a refusal of the options: the golden check reports it
        return ""
    try:
        resolve_quant_config(hf_config=section)
    except Exception:  # noqa: BLE001 - refused without the options too: the golden check reports it
        return ""
    return (f"golden checkpoint {golden.name!r}: its quantization_config loads, but not with load_options={options} "
            f"(ConfigError: {refused})")


def _registered(method: str) -> bool:
    from fastvideo_quant.plugins import get_registry

    return method in get_registry().by_name


def _check_names(subject: Subject, golden: GoldenCheckpoint, layer: torch.nn.Module, where: str) -> None:
    """The golden's tensor names are the layer's parameters, and every parameter but the bias is among them (a
    failure naming both sides, not quantize_weight, which wrote none of them)."""
    params = {n for n, p in layer.named_parameters(recurse=False) if p is not None}
    stored = set(golden.modules[0].tensors)
    unknown = sorted(stored - params)
    missing = sorted(params - stored - {"bias"} - set(subject.params_not_in_checkpoint))
    if unknown or missing:
        raise subject.fail("golden: tensor names", where,
                           f"the golden stores {sorted(stored)}; the layer {type(layer.quant_method).__name__} built "
                           f"has parameters {sorted(params)}"
                           + (f"; no parameter is named {unknown}" if unknown else "")
                           + (f"; nothing loads {missing}" if missing else ""),
                           "name the parameters create_weights registers after the tensors the format stores (the "
                           "loader loads a tensor into the parameter of its suffix)")


def _check_weight(subject: Subject, golden: GoldenCheckpoint, ckpt: ck.LayerCheckpoint, w: torch.Tensor,
                  where: str) -> None:
    problem = weight_problem(golden, ckpt, w, subject.max_gain_error)
    if problem:
        raise subject.fail("golden: weight", where, problem,
                           f"read the format as its tools write it{golden.defined_by()}; a checkpoint written by the "
                           "plugin's own quantize_weight loading right is no evidence, since writer and reader can share "
                           "one wrong convention")


def weight_problem(golden: GoldenCheckpoint, ckpt: ck.LayerCheckpoint, w: torch.Tensor, max_gain_error: float) -> str:
    """How the loaded (or gathered) weight ``w`` misses the golden's: the error (per part), a gain, rows or columns in
    another order, levels standing for each other; "" when it is within the golden's bound."""
    rows, errs, gains = 0, [], []
    for p in ckpt.parts:
        n = p.weight.shape[0]
        part = w[rows:rows + n]
        errs.append((p.shard_id, rel_error(part, p.weight)))
        biased = scale_bias(part, p.weight, max_gain_error)
        if biased is not None:
            gains.append(f"{p.shard_id!r}: {biased[0]:.4g}" if len(ckpt.parts) > 1 else f"{biased[0]:.4g}")
        rows += n
    ref = ckpt.float_weight()
    err = rel_error(w, ref)
    if err <= golden.bar and all(e <= golden.bar for _, e in errs) and not gains:
        return ""  # (each part too: a small part (k, v of a QKV layer) off hides in the whole's error)
    per_part = (f" (per part: {', '.join(f'{s!r}: {e:.3g}' for s, e in errs)})" if len(ckpt.parts) > 1 else "")
    bound = f"bound {golden.bar:g}" + (" on each part and the whole" if len(ckpt.parts) > 1 else "")
    found = [f"||dequantize_weight - golden weight|| / ||golden weight|| = {err:.3g}{per_part}, {bound}"]
    if gains:
        found.append(f"the loaded weight is the golden weight times a gain (least squares) of {', '.join(gains)}: a "
                     "scale read as its reciprocal, or off by a constant (levels counted 15 for 16, 127 for 128)")
    found.extend(filter(None, (reordering(w, ref), relabeled_levels(w, ref))))
    return "; ".join(found)


def relabeled_levels(w: torch.Tensor, ref: torch.Tensor, rows: int = 16) -> str:
    """When, in each of the first ``rows`` rows, one loaded value stands for each golden value wherever it occurs (the
    same value at all its positions, a different one for each), mostly values the golden row holds too — codes mapped
    to levels by another rule —, which; "" otherwise (a loaded row that is noise or moved has no such map)."""
    example = None
    for r in range(min(rows, w.shape[0])):
        g, got = ref[r].double(), w[r].double()
        levels, index = torch.unique(g, return_inverse=True)
        image = torch.zeros_like(levels).scatter_(0, index, got)  # (the loaded value at some position of each level)
        if levels.numel() == g.numel() or not torch.allclose(image[index], got, rtol=1e-5, atol=0.0):
            return ""  # (no value repeats, so nothing to map; or a value loaded as two)
        if torch.unique(image).numel() != levels.numel():
            return ""  # (two values loaded as one)
        shared = torch.isclose(image[:, None], levels[None, :], rtol=1e-5, atol=0.0).any(dim=1)
        if float(shared.double().mean()) < 0.5:
            return ""
        moved = (~torch.isclose(image, levels, rtol=1e-5, atol=0.0)).nonzero().flatten()
        if example is None and moved.numel():
            example = (r, ", ".join(f"{float(levels[i]):.4g} -> {float(image[i]):.4g}" for i in moved[:4]))
    if example is None:
        return ""
    return (f"in each loaded row one value stands for each of the golden row's values wherever it occurs, mostly "
            f"values the golden row holds too (row {example[0]}, golden -> loaded: {example[1]}): the codes map to "
            "levels by another rule than the format's (an offset of 8 stored or two's complement, a sign, a codebook's "
            "order)")


def reordering(w: torch.Tensor, ref: torch.Tensor, shown: int = 8) -> str:
    """When ``w``'s rows (or columns) are ``ref``'s in another order — each one closest in direction (cosine >=
    :data:`REORDER_COSINE`) to another of ``ref``'s, as a nibble order or packing dim read differently leaves them, with
    their scales possibly off too — which ones land where; "" otherwise. (Unrelated rows of a few hundred random
    weights have cosines ~0.06.)"""
    for axis, name in ((0, "output row"), (1, "input column")):
        a, b = (w, ref) if axis == 0 else (w.T, ref.T)
        if a.shape[0] > 4096:
            continue
        unit = [t.double() / t.double().norm(dim=1, keepdim=True).clamp_min(1e-300) for t in (a, b)]
        cos = unit[0] @ unit[1].T
        best, where = cos.max(dim=1)
        moved = (where != torch.arange(a.shape[0])).nonzero().flatten()
        if bool((best >= REORDER_COSINE).all()) and moved.numel():
            pairs = ", ".join(f"{int(i)} <- {int(where[i])}" for i in moved[:shown])
            more = f" (and {moved.numel() - shown} more)" if moved.numel() > shown else ""
            return (f"its {name}s are the golden's in another order (loaded <- golden, matched by direction, cosine >= "
                    f"{float(best.min()):.2f}): {pairs}{more}")
    return ""


#: The cosine above which :func:`reordering` takes a loaded row for a golden row.
REORDER_COSINE = 0.5


def golden_input(subject: Subject, golden: GoldenCheckpoint, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """The ``[tokens, in]`` input ``apply`` is checked on (the same in the parent and on every rank)."""
    return random_input(subject, (subject.tokens, subject.input_size), dtype, "golden", golden.name, kind)


def _check_apply(subject: Subject, golden: GoldenCheckpoint, layer, ckpt: ck.LayerCheckpoint, w: torch.Tensor,
                 kind: str, dtype: torch.dtype, where: str, tol) -> None:
    """``apply`` against ``x.float() @ w.T + golden bias``, ``w`` the layer's ``dequantize_weight`` (already within the
    golden's bound of the golden weights): the config's tolerance bounds apply's own error, as everywhere in the suite,
    and a weight within 0.004 does not fail a float32 bound of 1e-5."""
    from fastvideo_quant.testing.conformance.apply import (
        call_apply,
        check_shape_dtype_finite,
        reference,
        within_tolerance,
    )

    x = golden_input(subject, golden, kind, dtype)
    out = call_apply(subject, layer, x.clone(), getattr(layer, "bias", None), where)
    check_shape_dtype_finite(subject, out, x, ckpt.float_weight().shape[0], where)
    bias = ckpt.float_bias() if has_bias(golden) else None  # (the golden's: a bias loaded wrong is apply's error too)
    missed = within_tolerance(subject, out, reference(x, w, bias), tol, dtype=dtype)  # (the loaded config's)
    if missed:
        raise subject.fail("golden: apply", where, f"against x.float() @ dequantize_weight(layer).T + golden bias (that "
                           f"weight is within {golden.bar:g} of the golden's): {missed}",
                           "dequantize_weight matches the golden, so apply computes with other weights (or bias) than "
                           "it: make the kernel read the loaded tensors as dequantize_weight does")


# --- at TP=2 --------------------------------------------------------------------------------------
def _rank_golden(subject: Subject, golden: GoldenCheckpoint, kind: str, tp: int) -> dict[str, Any]:
    from fastvideo_quant.distributed import get_tensor_model_parallel_rank
    from fastvideo_quant.testing.conformance.loading import dequantized

    gs = golden_subject(subject, golden)
    where = f"{gs.describe(kind, tp=tp)} loading {golden.describe()}"
    config = _golden_config(subject, golden, where, own=True)
    layer = load_golden(gs, golden, kind, golden_layer_checkpoint(gs, golden, kind), config, where, tp=tp)
    x = golden_input(gs, golden, kind, gs.main_dtype())
    if kind == "row":  # (the row layer's input is parallel: this rank's slice of the features)
        x = x.chunk(tp, dim=-1)[get_tensor_model_parallel_rank()]
    out, _ = layer(x.to(gs.device(), copy=True))
    return {"out": out.detach().cpu(), "dequant": dequantized(gs, layer, kind, tp),
            "partitions": list(layer.output_partition_sizes)}


def rank_goldens(rank: int, world: int, subject: Subject, plugins: list,
                 goldens: list[GoldenCheckpoint]) -> dict[tuple[int, str], Any]:
    """Every golden in every parallel layer class on this rank (module-level so ``run_distributed`` can spawn it): its
    result, its error, or ``unsplit``."""
    from fastvideo_quant.testing.conformance.tensor_parallel import _guarded, _register_inprocess

    _register_inprocess(plugins)
    return {(i, kind): _guarded(_rank_golden_or_unsplit, subject, g, kind, world)
            for i, g in enumerate(goldens) for kind in PARALLEL_KINDS}


def _rank_golden_or_unsplit(subject: Subject, golden: GoldenCheckpoint, kind: str, world: int) -> dict[str, Any]:
    try:
        return _rank_golden(subject, golden, kind, world)
    except GoldenUnsplit as exc:  # (not an error: the golden is left out at this TP size)
        return {"unsplit": str(exc)}


_TP_RESULTS: dict[tuple, list[Any]] = {}
_RESULTS: dict[tuple, ConformanceFailure | None] = {}


def _key(subject: Subject) -> tuple:
    """What a golden check's outcome depends on besides the golden and the layer class (the suite class's ``config``
    only through its load-time options: a golden brings its own section), so the suite classes of one method share
    it: the plugin's classes, the options, the class attributes a check reads, the dtypes."""
    from fastvideo_quant.plugins import get_registry

    reg = get_registry().by_name.get(subject.method)
    plugin = None if reg is None else (id(reg.config_cls), tuple(map(id, reg.methods)))  # (a method re-registered)
    return (subject.method, plugin, repr(sorted(load_options(subject).items())), subject.params_not_in_checkpoint,
            subject.max_gain_error, subject.seed, subject.tokens, subject.tp_size, subject.main_dtype(),
            subject.runnable_act_dtypes())


def golden_failure(subject: Subject, golden: GoldenCheckpoint, kind: str, *, own: bool) -> ConformanceFailure | None:
    """:func:`check_golden`'s failure, or None (once per method, golden and layer class)."""
    key = (*_key(subject), id(golden), kind)
    if key not in _RESULTS:
        try:
            check_golden(subject, golden, kind, own=own)
            _RESULTS[key] = None
        except ConformanceFailure as exc:
            _RESULTS[key] = exc
    return _RESULTS[key]


def check_golden_tp(subject: Subject, goldens: list[GoldenCheckpoint], kind: str) -> None:
    """At ``tp_size`` ranks (one spawn per method and set of goldens), each golden loaded into a ``kind`` layer gathers
    to the golden weights, and its outputs to float32 math of the weights gathered: the format's tensors shard as its
    tools laid them out (AWQ's ``qweight``
    through its packed output dim, a block-scaled fp8 weight's scales with their blocks). A golden whose TP=1 check of
    the same layer class fails is reported as that (fix it first). One whose sizes do not split over ``tp_size`` (the
    sizes themselves, or the format's blocks or groups per rank: the layer's own ``ShardingError``) is left out with a
    ``UserWarning`` naming it; the test skips when none is left."""
    import warnings

    from fastvideo_quant.testing.conformance.apply import reference, within_tolerance
    from fastvideo_quant.testing.conformance.tensor_parallel import _gather_columns, inprocess_plugins
    from fastvideo_quant.testing.distributed import run_distributed

    problems = {id(g): tp_shape_problem(subject, g) for g in goldens}
    left_out = [p for p in problems.values() if p]
    goldens = [g for g in goldens if not problems[id(g)]]
    failures, spawned = [], []
    for golden in goldens:
        at_tp1 = golden_failure(subject, golden, kind, own=True)
        if at_tp1 is None:
            spawned.append(golden)
            continue
        gs = golden_subject(subject, golden)
        failures.append(gs.fail("golden: tensor parallel", f"{gs.describe(kind, tp=subject.tp_size)} loading "
                                f"{golden.describe()}", f"the TP=1 check of this golden and layer class fails too "
                                f"(test_golden_checkpoints[{kind}]): [{at_tp1.contract}] {at_tp1.problem}",
                                "fix the TP=1 failure first: the ranks load the same tensors the same way"))
    key = (*_key(subject), tuple(id(g) for g in spawned))
    if spawned and key not in _TP_RESULTS:
        try:
            _TP_RESULTS[key] = run_distributed(rank_goldens, subject.tp_size, subject, inprocess_plugins(), spawned)
        except Exception as exc:  # noqa: BLE001 - a rank raised or died: every golden reports it
            _TP_RESULTS[key] = [{(i, k): {"error": f"{type(exc).__name__}: {exc}"} for i in range(len(spawned))
                                 for k in PARALLEL_KINDS}] * subject.tp_size
    checked = 0
    for i, golden in enumerate(spawned):
        gs = golden_subject(subject, golden)
        where = f"{gs.describe(kind, tp=subject.tp_size)} loading {golden.describe()}"
        ranks = [r[(i, kind)] for r in _TP_RESULTS[key]]
        unsplit = [r["unsplit"] for r in ranks if "unsplit" in r]
        if unsplit:
            left_out.append(f"golden checkpoint {golden.name!r}: {unsplit[0]}")
            continue
        checked += 1
        errors = [r["error"] for r in ranks if "error" in r]
        if errors:
            text = "; ".join(f"rank{'s' if errors.count(e) > 1 else ''} "
                             f"{', '.join(str(n) for n, r in enumerate(ranks) if r.get('error') == e)}: {e}"
                             for e in dict.fromkeys(errors))  # (each distinct error once, with the ranks that raised it)
            failures.append(gs.fail("golden: tensor parallel", where, text,
                                    "the golden loads at TP=1, so the ranks differ: if the error is a load, shard each "
                                    "tensor as the format lays it out (packed dims in whole words, scales and zero "
                                    "points with their groups or blocks); else it says what the ranks lacked"))
            continue
        ckpt = golden_layer_checkpoint(gs, golden, kind)
        if kind == "row":
            w, out = torch.cat([r["dequant"] for r in ranks], dim=1), ranks[0]["out"]
        else:
            w = _gather_columns([r["dequant"] for r in ranks], ranks[0]["partitions"], dim=0)
            out = _gather_columns([r["out"] for r in ranks], ranks[0]["partitions"], dim=-1)
        ref = ckpt.float_weight()
        found = (weight_problem(golden, ckpt, w, subject.max_gain_error) if w.shape == ref.shape else
                 f"the ranks' dequantize_weight gathered is {list(w.shape)}, the golden weight {list(ref.shape)}")
        if found:
            found = f"the ranks' weights gathered: {found}"
        else:
            bias = ckpt.float_bias() if has_bias(golden) else None
            tol = _golden_config(subject, golden, where, own=True).tolerance  # (the config the ranks loaded with)
            x = golden_input(gs, golden, kind, gs.main_dtype())
            missed = within_tolerance(gs, out, reference(x, w, bias), tol, dtype=x.dtype)  # (w: within the bound)
            found = (f"outputs gathered over {subject.tp_size} ranks against x.float() @ (their dequantize_weight "
                     f"gathered).T: {missed}") if missed else ""
        if found:
            failures.append(gs.fail("golden: tensor parallel", where, found,
                                    "the golden loads right at TP=1: each rank must load its own slice of each tensor "
                                    "as the format lays it out: narrow a packed dim in whole words, and scales, zero "
                                    "points and block scales with the rows or groups they belong to"))
    if left_out:
        warnings.warn(f"left out of the tp_size {subject.tp_size} golden checks of the {kind} layer: "
                      + "; ".join(left_out), UserWarning, stacklevel=2)
    if not failures and not checked:
        pytest.skip(f"no golden checkpoint splits over tp_size {subject.tp_size} for the {kind} layer: "
                    + "; ".join(left_out))
    _raise(subject, failures, len(goldens), kind)


def _raise(subject: Subject, failures: list[ConformanceFailure], total: int, kind: str) -> None:
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise ConformanceFailure("golden", subject.method, f"{len(failures)} of {total} golden checkpoints, layer kind "
                                 f"{kind!r}", "\n" + "\n".join(map(str, failures)), "fix each as it says")


# --- the tests --------------------------------------------------------------------------------------
class GoldenTests(MethodFixtures):
    """Golden checkpoints: the suite library's for the formats the method claims, and the class's own."""

    #: A plugin's own golden checkpoints (files its format's tool wrote: :meth:`GoldenCheckpoint.from_folder`).
    golden_checkpoints: ClassVar[tuple[GoldenCheckpoint, ...]] = ()
    #: Also check the suite library's golden checkpoints whose section selects the method.
    golden_library: ClassVar[bool] = True

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_golden_checkpoints(self, fvq_runnable: Subject, kind: str, request: pytest.FixtureRequest) -> None:
        from fastvideo_quant.testing.run_summary import GOLDENS, GOLDENS_LEFT_OUT

        own = tuple(type(self).golden_checkpoints)
        goldens, left_out = self._goldens(fvq_runnable)
        failures = [f for g in goldens
                    if (f := golden_failure(fvq_runnable, g, kind, own=any(g is o for o in own))) is not None]
        _raise(fvq_runnable, failures, len(goldens), kind)
        request.node.user_properties.append((GOLDENS, [g.name for g in goldens]))  # (fvq check's verdict lists them)
        request.node.user_properties.append((GOLDENS_LEFT_OUT, left_out))

    @pytest.mark.parametrize("kind", PARALLEL_KINDS)
    def test_golden_checkpoints_tp(self, fvq_runnable: Subject, kind: str) -> None:
        if fvq_runnable.tp_size < 2:
            pytest.skip("tp_size < 2")
        goldens, _ = self._goldens(fvq_runnable)
        check_golden_tp(fvq_runnable, goldens, kind)

    def _goldens(self, subject: Subject) -> tuple[list[GoldenCheckpoint], list[str]]:
        """The goldens to check, and why each left out is: those :func:`goldens_for` gives, less the library's that the
        class's load-time options rule out (:func:`options_problem`: a ``UserWarning`` names each). The class's own
        goldens are never left out, and options that leave out every golden are a failure, not a skip: a reader refusing
        the format's checkpoints under its options would otherwise pass (``golden_library = False`` says so on
        purpose)."""
        import warnings

        use_library = type(self).golden_library
        own = tuple(type(self).golden_checkpoints)
        goldens = goldens_for(subject, own, use_library)
        if not goldens:
            why = ("the suite's library has none whose quantization_config selects it" if use_library else
                   "the suite class sets golden_library = False and gives no golden_checkpoints")
            pytest.skip(f"no golden checkpoint for method {subject.method!r}: {why} (a plugin's suite class can give "
                        "golden_checkpoints: GoldenCheckpoint.from_folder of files its format's tool wrote)")
        problems = {id(g): "" if any(g is o for o in own) else options_problem(subject, g) for g in goldens}
        left_out = [p for p in problems.values() if p]
        goldens = [g for g in goldens if not problems[id(g)]]
        if left_out and not goldens:
            raise subject.fail(
                "golden: load-time options", subject.describe("replicated"),
                f"the suite class's load-time options {load_options(subject)} leave out every golden checkpoint "
                f"{subject.method!r} claims: " + "; ".join(left_out),
                "read the format's checkpoints under these options too; if they cannot, set golden_library = False on "
                "the suite class (and give it golden_checkpoints of settings they read)")
        if left_out:
            warnings.warn("left out of the golden checks for the suite class's load-time options: "
                          + "; ".join(left_out), UserWarning, stacklevel=2)
        return goldens, left_out
