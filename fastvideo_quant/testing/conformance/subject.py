"""The method under test and the layers the suite builds for it.

A :class:`Subject` is everything a check needs (method name, config dict, shapes,
dtypes, bars) as a small picklable value, so the same checks run in this process
and inside spawned tensor-parallel ranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from fastvideo_quant.plugins.manager import RAISED_IN_GET_QUANT_METHOD
from fastvideo_quant.testing.conformance.report import ConformanceFailure

#: The layer classes every method must support, by short name.
LAYER_KINDS = ("replicated", "column", "merged", "qkv", "row")
#: Layers whose weights fuse several checkpoint tensors along the output dim.
FUSED_KINDS = ("merged", "qkv")
#: Layers sharded over tensor-parallel ranks.
PARALLEL_KINDS = ("column", "merged", "qkv", "row")

#: How to fix what an exception from ``get_quant_method`` showed, by the ``contract`` of the layers' PluginError
#: (:func:`fastvideo_quant.plugins.manager.quant_method_for`).
GET_QUANT_METHOD_FIXES = {
    RAISED_IN_GET_QUANT_METHOD: "fix get_quant_method where it raised (the file:line above; the exception is chained "
                                "to this failure)",
    "config: __init__": "call super().__init__() in the config class's __init__ (it sets packed_modules_mapping and "
                        "modules_to_not_convert)",
}


class NotRunnable(NamedTuple):
    """Why a method's layers cannot be built on this machine (its tests skip), and where they can be (``on a
    machine with a CUDA GPU``), to follow "run it"."""

    reason: str
    remedy: str


#: The weight-fidelity bound when neither the suite class nor the config class declares one: it catches gross loading
#: bugs (a shard in the wrong rows), not a scale a few tens of percent off.
DEFAULT_WEIGHT_REL_ERROR = 0.25
#: A declared weight-fidelity bound more than this many times the error the suite measures is refused: it would let a
#: scale written tens of percent off pass (the built-in methods declare 1.3x to 1.8x what they measure).
LOOSE_BAR_FACTOR = 4.0
#: Bounds at or below this are not checked for looseness (an exact method's 1e-6 against a measured 0).
LOOSE_BAR_FLOOR = 1e-3
#: A declared ``apply`` tolerance more than this many times the larger of the error the suite measures and the
#: rounding of the coarsest declared activation dtype (its eps: 0.0078 for bfloat16) is refused: it would let an apply
#: tens of percent off its own ``dequantize_weight`` pass. The built-in methods' tolerances are 1.3x to 3.2x that.
LOOSE_TOLERANCE_FACTOR = 4.0
#: The default bound on how far from 1 the least-squares gain of ``dequantize_weight`` on the float weight (each
#: checkpoint part), and of ``apply``'s output less the bias on ``x @ dequantize_weight.T``, may be: rounding to
#: nearest is unbiased (the built-in methods measure within 0.1%; fp8's static clipping 0.4%), while a scale
#: off by a constant factor (a 16/15 for 15 levels, a 1.03 slip, another shard's scale) shifts it by that factor, under
#: a weight_rel_error loose enough for 4-bit rounding. A method that clips on purpose declares its own.
DEFAULT_MAX_GAIN_ERROR = 0.01
#: Bound on the median over rows of ``|mean error| / RMS error`` of the de-quantized weight (see
#: :func:`~.report.row_offset`): rounding to nearest leaves ~0.8 / sqrt(in); a zero point off by one reads ~0.96.
DEFAULT_MAX_ROW_OFFSET = 0.5


@dataclasses.dataclass(frozen=True)
class Subject:
    """A quantization method and the shapes, dtypes and bars the suite checks it with."""

    method: str
    config: dict[str, Any] | None = None
    act_dtypes: tuple[torch.dtype, ...] | None = None
    cpu_act_dtypes: tuple[torch.dtype, ...] | None = None
    input_size: int = 256
    output_size: int = 128
    merged_output_sizes: tuple[int, ...] = (128, 64)
    num_heads: int = 4
    num_kv_heads: int = 2
    head_size: int = 16
    tokens: int = 8
    seed: int = 0
    tp_size: int = 2
    weight_rel_error: float | None = None
    max_gain_error: float = DEFAULT_MAX_GAIN_ERROR
    max_row_offset: float = DEFAULT_MAX_ROW_OFFSET
    params_not_in_checkpoint: tuple[str, ...] = ()

    # --- the method -------------------------------------------------------------------
    def config_cls(self):
        from fastvideo_quant.quantization.selection import get_quantization_config

        return get_quantization_config(self.method)

    def tolerance(self):
        """What ``apply`` promises: the ``tolerance`` of the config the layers are built with (a class attribute, which
        a config may refine per instance when a setting changes its arithmetic)."""
        return self.checkpoint_config().tolerance

    def quant_config(self):
        """The config that writes checkpoints, built as ``fvq quantize`` builds it: ``from_config`` of ``config`` (or
        ``{}``) with the class's ``quantized_checkpoint_keys`` set (its ``quantize_weight`` is used). A config with two
        modes (online, pre-quantized) writes in the pre-quantized one, whatever its ``to_dict`` says by default."""
        given = self.writer_options()
        return self._initialised(self.config_cls().from_config(dict(given)), given)

    def writer_options(self, **extra: Any) -> dict[str, Any]:
        """What :meth:`quant_config` passes to ``from_config``: ``config`` (and ``extra``) with the class's
        ``quantized_checkpoint_keys`` set, as ``fvq quantize`` builds the config that writes a checkpoint."""
        from fastvideo_quant.quantize.options import quantizing_options

        return quantizing_options(self.config_cls(), {**extra, **dict(self.config or {})})

    def _initialised(self, cfg, given: dict):
        """``cfg``, checked to hold what ``QuantizationConfig.__init__`` sets (an ``__init__`` of the plugin's own
        that skips ``super().__init__()`` fails here, at the config, not in ``is_layer_skipped`` later)."""
        from fastvideo_quant.quantization.base import QuantizationConfig
        from fastvideo_quant.quantize.contract import init_fix, init_problem

        problem = init_problem(cfg) if isinstance(cfg, QuantizationConfig) else None
        if problem:
            raise self.fail("config: __init__", f"{type(cfg).__name__}.from_config({given!r}) of {self.owner()}",
                            problem, init_fix(cfg))
        return cfg

    def checkpoint_config(self):
        """The config a checkpoint written by :meth:`quant_config` loads with: ``from_config(to_dict())``.

        ``fvq quantize`` stores ``to_dict()`` as the checkpoint's quantization_config,
        so this is what a model loading those tensors builds its layers with (for
        fp8, the serialized-checkpoint config rather than online quantization).
        """
        writer = self.quant_config()
        try:
            section = writer.to_dict()
        except NotImplementedError as exc:
            raise self.fail("config round-trip", type(writer).__name__,
                            f"to_dict() of {self.owner()} raised {type(exc).__name__}: {exc}",
                            "implement to_dict(): the suite loads checkpoints with from_config(to_dict())") from exc
        return self._initialised(self.config_cls().from_config(dict(section)), section)

    @property
    def weight_bar(self) -> float:
        """The weight-fidelity bound: the suite class's ``weight_rel_error``, else the config class's, else
        :data:`DEFAULT_WEIGHT_REL_ERROR`."""
        if self.weight_rel_error is not None:
            return self.weight_rel_error
        declared = getattr(self.config_cls(), "weight_rel_error", None)
        return DEFAULT_WEIGHT_REL_ERROR if declared is None else declared

    def declared_weight_bar(self) -> tuple[float, str] | None:
        """``(weight_rel_error, where it is declared)``: the suite class's, else the config class's; None when neither
        declares one (the suite then runs at :data:`DEFAULT_WEIGHT_REL_ERROR`)."""
        if self.weight_rel_error is not None:
            return self.weight_rel_error, "the suite class's weight_rel_error"
        cls = self.config_cls()
        declared = getattr(cls, "weight_rel_error", None)
        return None if declared is None else (declared, f"{cls.__name__}.weight_rel_error")

    def owner(self) -> str:
        """``plugin 'x' (distribution 'y')`` (or ``(in-process)``) that registered the method, for messages."""
        from fastvideo_quant.plugins import get_registry

        reg = get_registry().by_name.get(self.method)
        if reg is None:
            return "no loaded plugin"
        return reg.origin

    def fail(self, contract: str, where: str, problem: str, fix: str) -> ConformanceFailure:
        return ConformanceFailure(contract, self.method, where, problem, fix)

    # --- dtypes and devices -------------------------------------------------------------
    def declared_act_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.act_dtypes is not None:
            return tuple(self.act_dtypes)
        return tuple(self.config_cls().get_supported_act_dtypes())

    def device(self) -> torch.device:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def runnable_act_dtypes(self) -> tuple[torch.dtype, ...]:
        """Declared dtypes minus those ``cpu_act_dtypes`` excludes when running on CPU."""
        dtypes = self.declared_act_dtypes()
        if self.device().type == "cpu" and self.cpu_act_dtypes is not None:
            dtypes = tuple(d for d in dtypes if d in self.cpu_act_dtypes)
        return dtypes

    def main_dtype(self) -> torch.dtype:
        """The dtype of checks that need just one: float32 if supported, else bfloat16, else the first."""
        dtypes = self.runnable_act_dtypes() or self.declared_act_dtypes()
        for d in (torch.float32, torch.bfloat16):
            if d in dtypes:
                return d
        return dtypes[0]

    def why_not_runnable(self) -> str | None:
        """Why layers of this method cannot be built here (dependency, GPU, CPU support), or None."""
        found = self.not_runnable()
        return found.reason if found else None

    def not_runnable(self) -> NotRunnable | None:
        """Why layers of this method cannot be built here and where they can, or None when they can."""
        from fastvideo_quant.errors import MethodUnavailableError

        cls = self.config_cls()
        reason = cls.unavailable_reason()
        if reason:
            return NotRunnable(f"method {self.method!r} is unavailable here: {reason}",
                               "after installing what that names (or on a machine that has it)")
        try:  # a config asking for what is missing here (int8's fvq_backend 'triton' without triton)
            self.quant_config()
        except MethodUnavailableError as exc:
            return NotRunnable(f"method {self.method!r} with config {self.config or {}} is unavailable here: {exc}",
                               "after installing what that names (or on a machine that has it)")
        cap = cls.get_min_capability()
        gpu = "a CUDA GPU" + (f" of compute capability {cap // 10}.{cap % 10} or newer" if cap else "")
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major * 10 + minor < cap:
                return NotRunnable(f"method {self.method!r} needs compute capability {cap // 10}.{cap % 10}; this "
                                   f"GPU has {major}.{minor}", f"on a machine with {gpu}")
            return None
        if cls.cpu_support() is None:
            return NotRunnable(f"method {self.method!r} has no CPU path (cpu_support() is None) and no CUDA GPU is "
                               "visible", f"on a machine with {gpu}")
        return None

    # --- layers -------------------------------------------------------------------------
    def part_sizes(self, kind: str) -> list[tuple[Any, int]]:
        """(checkpoint shard id, unsharded output rows) of each checkpoint tensor of a ``kind`` layer."""
        if kind == "merged":
            return list(enumerate(self.merged_output_sizes))
        if kind == "qkv":
            q, kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
            return [("q", q), ("k", kv), ("v", kv)]
        return [(None, self.output_size)]

    def output_rows(self, kind: str) -> int:
        return sum(size for _, size in self.part_sizes(kind))

    def describe(self, kind: str, *, tp: int = 1, bias: bool | None = None, dtype: torch.dtype | None = None) -> str:
        """``QKVParallelLinear(in=256, heads=4, kv_heads=2, head_size=16, tp=1, bias=True, dtype=bfloat16)``."""
        name = LAYER_CLASS_NAMES[kind]
        if kind == "merged":
            dims = f"in={self.input_size}, output_sizes={list(self.merged_output_sizes)}"
        elif kind == "qkv":
            dims = (f"in={self.input_size}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                    f"head_size={self.head_size}")
        else:
            dims = f"in={self.input_size}, out={self.output_size}"
        extra = f", tp={tp}" + (f", bias={bias}" if bias is not None else "")
        extra += f", dtype={str(dtype).replace('torch.', '')}" if dtype is not None else ""
        return f"{name}({dims}{extra})"

    def build_layer(self, kind: str, *, bias: bool, dtype: torch.dtype, quant_config=None) -> torch.nn.Module:
        """A fresh ``kind`` layer of this method on the current TP group (weights uninitialised)."""
        from fastvideo_quant.errors import PluginError

        cfg = quant_config if quant_config is not None else self.checkpoint_config()
        where = self.describe(kind, bias=bias, dtype=dtype)
        try:
            layer = self._build_layer(kind, bias, dtype, cfg)
        except PluginError as exc:  # the layer refused what get_quant_method or create_weights gave it
            raise self._plugin_error(exc, cfg, kind, where) from exc
        return layer

    def _plugin_error(self, exc: Exception, cfg, kind: str, where: str) -> ConformanceFailure:
        """The contract a PluginError from building a layer says was broken: ``create_weights`` (a signature the
        layers cannot call), ``apply: signature`` (likewise), ``weight_loader_v2`` (plain parameters from a v2
        registration), what an exception from ``get_quant_method`` showed (:data:`GET_QUANT_METHOD_FIXES`), else
        ``get_quant_method`` (an abstract class, a class for an instance, an incomplete method)."""
        from fastvideo_quant.testing.conformance.signature import check_create_weights_signature, method_for

        check_create_weights_signature(self, method_for(cfg, kind), where, exc)
        if getattr(exc, "contract", None) == "weight_loader_v2":  # the layers' own finding (LinearBase)
            return self.fail("weight_loader_v2", where, str(exc),
                             "create the parameters from fastvideo_quant.parameter (ModelWeightParameter, "
                             "ChannelQuantScaleParameter, ...) or register with weight_loader_v2=False")
        if getattr(exc, "contract", None) == "apply: signature":  # the layers' call apply(layer, x, bias) fails
            from fastvideo_quant.layers.base import APPLY_SIGNATURE

            return self.fail("apply: signature", where, str(exc),
                             f"define {APPLY_SIGNATURE}: x is the input [..., in], bias the layer's bias or None")
        if getattr(exc, "contract", None) in GET_QUANT_METHOD_FIXES:  # get_quant_method raised (the layers say which)
            return self.fail(exc.contract, where, str(exc), GET_QUANT_METHOD_FIXES[exc.contract])
        if getattr(exc, "contract", None) == "create_weights: weight_loader":  # a parameter class built without one
            from fastvideo_quant.layers.base import WEIGHT_LOADER_FIX

            return self.fail("create_weights", where, str(exc), WEIGHT_LOADER_FIX)
        if getattr(exc, "contract", None) == "create_weights":  # a parameter's size along output_dim / input_dim
            return self.fail("create_weights", where, str(exc),
                             "size each parameter from output_partition_sizes and input_size_per_partition, and set "
                             "output_dim / input_dim to the dims of the data as created (an [out, in] weight: "
                             "output_dim=0, input_dim=1; a per-channel scale [out]: output_dim=0)")
        return self.fail("get_quant_method", where, str(exc),
                         "return an instance of a LinearMethodBase subclass that implements create_weights and "
                         "apply (and register that class)")

    def _build_layer(self, kind: str, bias: bool, dtype: torch.dtype, cfg) -> torch.nn.Module:
        from fastvideo_quant.layers import linear as L

        common = dict(bias=bias, params_dtype=dtype, quant_config=cfg, prefix=f"conformance.{kind}")
        if kind == "replicated":
            return L.ReplicatedLinear(self.input_size, self.output_size, **common)
        if kind == "column":
            return L.ColumnParallelLinear(self.input_size, self.output_size, **common)
        if kind == "merged":
            return L.MergedColumnParallelLinear(self.input_size, list(self.merged_output_sizes), **common)
        if kind == "qkv":
            return L.QKVParallelLinear(self.input_size, self.head_size, self.num_heads, self.num_kv_heads, **common)
        if kind == "row":
            return L.RowParallelLinear(self.input_size, self.output_size, **common)
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")


LAYER_CLASS_NAMES = {
    "replicated": "ReplicatedLinear",
    "column": "ColumnParallelLinear",
    "merged": "MergedColumnParallelLinear",
    "qkv": "QKVParallelLinear",
    "row": "RowParallelLinear",
}


def generator(seed: int, *salt: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``salt`` (stable across processes)."""
    import zlib

    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + zlib.crc32(repr(salt).encode()))
    return g


def random_input(subject: Subject, shape: tuple[int, ...], dtype: torch.dtype, *salt: object) -> torch.Tensor:
    """Activations ~ N(0, 1) in ``dtype`` on the subject's device."""
    x = torch.randn(shape, generator=generator(subject.seed, "x", *salt))
    return x.to(device=subject.device(), dtype=dtype)
