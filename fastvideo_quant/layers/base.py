"""LinearBase: picks the quantization method and the weight loader; shared loading helpers."""

from __future__ import annotations

import contextlib
import copy
import numbers
import weakref
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import torch
from torch.nn import Parameter

from fastvideo_quant.distributed import (
    building_as,
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    get_tp_group,
)
from fastvideo_quant.errors import (
    CheckpointShapeError,
    CheckpointValueError,
    ConfigError,
    ModelStateError,
    NotProcessedError,
    PluginError,
    ShardingError,
    WeightLoadError,
)
from fastvideo_quant.lazy import LazyTensor, TensorLike, materialize, narrow
from fastvideo_quant.parameter import (
    QKV_INDEX,
    BasevLLMParameter,
    BlockQuantScaleParameter,
    check_dtype_kind,
    check_full_size,
    copy_checked,
    deepcopy_parameter,
    is_packed,
    packed_units,
    parse_block_size,
    set_weight_attrs,
)
from fastvideo_quant.plugins.manager import get_registry, quant_method_for
from fastvideo_quant.plugins.registry import LiveNames
from fastvideo_quant.processing import forget_written
from fastvideo_quant.quantization.base import (  # (weights_processed: plugins import it from here too)
    QuantizationConfig,
    QuantizeMethodBase,
    weights_processed,
)
from fastvideo_quant.quantization.selection import check_layer_supported

#: Class names of the linear methods registered with ``weight_loader_v2=True``;
#: recomputed from the live registry on every use (read-only: ``append`` says how to register instead).
WEIGHT_LOADER_V2_SUPPORTED = LiveNames(
    lambda: get_registry().v2_class_names(), name="WEIGHT_LOADER_V2_SUPPORTED",
    derived_from="what plugins register with weight_loader_v2=True (the class names of those methods, recomputed "
                 "on every use)",
    register_call="register(MyConfig, MyLinearMethod, weight_loader_v2=True)")


def adjust_scalar_to_fused_array(
    param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: str | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a per-shard scalar (one per q/k/v or gate/up) stored fused: the slot and the value.

    vLLM keeps such scalars as an array with one entry per fused shard; checkpoint
    scalars may be 0-d or shape ``[1]``.
    """
    check_dtype_kind(param, loaded_weight, f"the per-part scalar of shard {shard_id!r}")
    if isinstance(shard_id, str):
        if shard_id not in QKV_INDEX:
            raise ShardingError(f"unknown shard id {shard_id!r}; expected one of 'q', 'k', 'v' or an int")
        shard_id = QKV_INDEX[shard_id]
    elif not isinstance(shard_id, int) or isinstance(shard_id, bool):
        raise ShardingError(f"unknown shard id {shard_id!r}; expected 'q', 'k', 'v' or an int")
    if not 0 <= shard_id < param.shape[0]:
        raise ShardingError(f"shard id {shard_id} out of range for a fused array of {param.shape[0]} shards")
    if loaded_weight.dim() != 0:
        if loaded_weight.numel() != 1:
            raise ShardingError(f"expected a scalar for shard {shard_id}, found shape {tuple(loaded_weight.shape)}")
        loaded_weight = loaded_weight.reshape(())
    return param[shard_id], loaded_weight


def storage_units(param: Parameter, output_dim: int, offset: int, size: int) -> tuple[int, int]:
    """(offset, size) in output rows → the parameter's own units along ``output_dim``.

    Parameter classes know their units (packing factor, block height); plain v1 parameters
    declare packing with ``packed_dim``/``pack_factor``.
    """
    to_units = getattr(param, "shard_units", None)
    if to_units is not None:
        return to_units(offset, size)
    if getattr(param, "packed_dim", None) == output_dim:
        return packed_units(offset, size, packing_factor(param), f"a parameter packed along output_dim {output_dim}")
    return offset, size


#: One TP size's shard of a layer: (output parts per rank, whole parts, input per rank, whole input).
RankSizes = tuple[list[int], list[int], int, int]


def heads_split(heads: int, kv_heads: int, tp: int) -> tuple[int, int, int] | None:
    """(query heads, KV heads, replicas of each KV head) per rank at TP size ``tp``, or None when the heads cannot
    be split so: the query heads divide over the ranks, and the KV heads do too or are replicated (``tp`` a
    multiple of them)."""
    if heads % tp == 0 and (kv_heads % tp == 0 or tp % kv_heads == 0):
        return heads // tp, max(kv_heads // tp, 1), max(tp // kv_heads, 1)
    return None


def shard_sizes(tp: int, input_size: int, whole_parts: list[int], *, row: bool = False,
                heads: tuple[int, int, int] | None = None) -> RankSizes | None:
    """A layer's shard at TP size ``tp``, by the layers' constructors' rules, or None where it does not split so:
    ``row``: the input split, the output whole; ``heads`` ``(query heads, KV heads, head size)``: QKV's parts from
    :func:`heads_split` (``whole_parts`` unused); else every part of ``whole_parts`` split, the input whole."""
    if row:
        return None if input_size % tp else (list(whole_parts), list(whole_parts), input_size // tp, input_size)
    if heads is not None:
        q, kv, size = heads
        at = heads_split(q, kv, tp)
        return None if at is None else ([at[0] * size, at[1] * size, at[1] * size], [q * size, kv * size, kv * size],
                                        input_size, input_size)
    if any(s % tp for s in whole_parts):
        return None
    return [s // tp for s in whole_parts], list(whole_parts), input_size, input_size


def tp_sizes_allowed(sizes_at: Callable[[int], RankSizes | None], problems_of: Callable[[RankSizes], list[str]],
                     limit: int = 64) -> tuple[list[int], list[int], tuple[int, str] | None]:
    """``(TP sizes the layer splits at, those whose shard has no problem, (the first refused one, its first
    problem) or None)`` over TP sizes 1..``limit``: ``sizes_at(tp)`` the layer's shard (None where it does not split),
    ``problems_of(shard)`` a method's alignment rules (a config's ``shard_problems``)."""
    split, allowed, first = [], [], None
    for tp in range(1, limit + 1):
        sizes = sizes_at(tp)
        if sizes is None:
            continue
        split.append(tp)
        problems = problems_of(sizes)
        if not problems:
            allowed.append(tp)
        elif first is None:
            first = (tp, problems[0])
    return split, allowed, first


def method_tp_advice(quant_config: Any, sizes_at: Callable[[int], RankSizes | None], limit: int = 64) -> str:
    """For a ShardingError listing the TP sizes that divide a layer (``sizes_at(tp)``: its shard, None where it does
    not split): ``; of those, <method> allows [...] (at TP t: <why not>)`` when the config's ``shard_problems`` rule
    some out, else "". The layers check division before the method's own alignment, so without this the list named
    sizes that then fail in the method (AWQ groups, fp8 blocks)."""
    if not isinstance(quant_config, QuantizationConfig):  # (None, or a wrong value the layer refuses after this)
        return ""
    try:
        _, allowed, first = tp_sizes_allowed(sizes_at, lambda sizes: quant_config.shard_problems(*sizes), limit)
    except Exception:  # noqa: BLE001 - a plugin's broken hook must not replace the ShardingError being raised
        return ""
    if first is None:
        return ""
    return (f"; of those, method {quant_config.get_name()!r} allows {allowed} (at TP size {first[0]}: {first[1]})"
            + ("" if allowed else ": no TP size works for this layer with it; leave the layer unquantized"))


def divide_with_advice(size: int, tp: int, what: str, quant_config: Any,
                       sizes_at: Callable[[int], RankSizes | None]) -> int:
    """``distributed.divide``, its ShardingError followed by the method's :func:`method_tp_advice`."""
    try:
        return divide(size, tp, what)
    except ShardingError as exc:
        raise ShardingError(str(exc) + method_tp_advice(quant_config, sizes_at)) from None


def packing_factor(param: Any) -> int | Fraction | None:
    """The values one stored element of ``param`` holds: the parameter classes' ``packed_factor`` or a v1 method's
    ``pack_factor`` attribute (vLLM's spelling); None when it declares neither."""
    return getattr(param, "packed_factor", None) or getattr(param, "pack_factor", None)


def positive_int(value: Any, name: str, layer: str) -> int:
    """``value`` as an int when it is a positive integer; ConfigError naming the layer and the argument if not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{layer}: {name} must be a positive int, found {value!r}")
    return int(value)


def flag(value: Any, name: str, layer: str) -> bool:
    """``value`` as a bool: a bool, None (False, as model code passing ``bias=getattr(cfg, "bias", None)`` means it),
    0 or 1, or a numpy bool; TypeError naming the layer and the argument for anything else (``gather_output='no'``
    was taken as True)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if type(value).__module__ == "numpy" and getattr(getattr(value, "dtype", None), "kind", None) == "b" \
            and getattr(value, "ndim", None) == 0:
        return bool(value)
    raise TypeError(f"{layer}: {name} must be a bool, found {type(value).__name__} {value!r}")


#: The dtypes a layer's float parameters (``params_dtype``, the model's dtype) may take.
PARAMS_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def params_dtype_of(value: Any, layer: str) -> torch.dtype:
    """``value`` (None: torch's default dtype) when it is one of :data:`PARAMS_DTYPES`; else a TypeError (not a dtype:
    ``"bfloat16"``) or ConfigError (an integer, complex or float8 dtype, which float weights cannot be created in)
    naming the layer and ``params_dtype``."""
    if value is None:
        return torch.get_default_dtype()
    allowed = ", ".join(map(str, PARAMS_DTYPES))
    if not isinstance(value, torch.dtype):
        hint = f" (torch.{value})" if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype) else ""
        raise TypeError(f"{layer}: params_dtype must be a torch.dtype ({allowed}) or None, found "
                        f"{type(value).__name__} {value!r}{hint}")
    if value not in PARAMS_DTYPES:
        raise ConfigError(f"{layer}: params_dtype is the model's dtype, that of its float weights and biases: expected "
                          f"one of {allowed}, found {value} (a quantization method stores its own dtypes: pass "
                          "quant_config for quantized weights, with params_dtype the dtype they compute in)")
    return value


def not_processed_error(layer: torch.nn.Module) -> NotProcessedError:
    """The error of a quantized layer's ``apply`` before its weights were processed (one message for every method).

    Its parameters still hold the checkpoint format (or nothing yet); the fix is the same whatever the method.
    """
    name = getattr(layer, "prefix", "") or type(layer).__name__
    return NotProcessedError(
        f"layer {name!r} ({type(layer).__name__}): forward before its weights were loaded and processed. Load the "
        "checkpoint with fastvideo_quant.loader.load_checkpoint(model, path), which processes them, or, having set "
        "the parameters yourself, call fastvideo_quant.loader.process_weights_after_loading(model)"
    )


def _unquantized_method_cls() -> type[QuantizeMethodBase]:
    # The core's default method ships as the built-in plugin package of this distribution.
    from fvq_unquantized import UnquantizedLinearMethod

    return UnquantizedLinearMethod


def _default_method() -> QuantizeMethodBase:
    return _unquantized_method_cls()()


#: The signature of ``LinearMethodBase.create_weights`` as a plugin writes it; layers pass its arguments by name.
CREATE_WEIGHTS_SIGNATURE = ("create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, "
                            "output_size, params_dtype, **extra_weight_attrs)")


def _bind_problem(method: object, name: str, *args: Any, **kwargs: Any) -> str | None:
    """Why the call ``method.<name>(*args, **kwargs)`` does not bind to its signature (the TypeError the call would
    raise), or None when it binds (or its signature cannot be read: the call itself will tell)."""
    import inspect

    try:
        sig = inspect.signature(getattr(method, name))
    except (AttributeError, TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def create_weights_call_problem(method: object, **kwargs: Any) -> str | None:
    """Why the layers' keyword call of ``method.create_weights`` (``kwargs``, or placeholders) does not bind to its
    signature, or None when it binds (:func:`_bind_problem`)."""
    kwargs = kwargs or dict(layer=None, input_size_per_partition=1, output_partition_sizes=[1], input_size=1,
                            output_size=1, params_dtype=torch.float32, weight_loader=None)
    return _bind_problem(method, "create_weights", **kwargs)


#: The signature of ``LinearMethodBase.apply``; layers call it ``apply(layer, x, bias)``, by position.
APPLY_SIGNATURE = "apply(self, layer, x, bias=None)"


def apply_call_problem(method: object) -> str | None:
    """Why the layers' call ``method.apply(layer, x, bias)`` does not bind to its signature (the TypeError every
    forward would raise), or None when it binds (:func:`_bind_problem`)."""
    return _bind_problem(method, "apply", None, None, None)


def apply_return_problem(out: object) -> tuple[str, str] | None:
    """What ``apply`` returned instead of one tensor and how to fix it (the likely slips: a forgotten ``return``, the
    layer's ``(output, bias)`` pair), or None for a tensor."""
    if isinstance(out, torch.Tensor):
        return None
    if out is None:
        return "None", "end apply with return out (a missing return statement returns None)"
    if isinstance(out, (tuple, list)):
        items = ", ".join("None" if v is None else type(v).__name__ for v in out[:4]) + (", ..." if len(out) > 4 else "")
        return (f"a {type(out).__name__} of {len(out)} ({items})",
                "return the output tensor alone, not (out, bias): the layer returns (output, bias) itself")
    return f"{type(out).__name__} {repr(out)[:60]}", "return the output tensor"


def _raised_by_parameter_class(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in :mod:`fastvideo_quant.parameter` (a parameter class refusing what the plugin's
    create_weights gave it: a bare ValueError that names neither the plugin nor the layer)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith("fastvideo_quant/parameter.py")


#: How a method gives its parameter classes the layer's loader (what create_weights receives as ``weight_loader``).
WEIGHT_LOADER_FIX = ("build every fastvideo_quant.parameter class with weight_loader=extra_weight_attrs['weight_loader'] "
                     "(the layer's loader, which create_weights receives as its weight_loader keyword)")


def _contract_error(message: str, contract: str) -> PluginError:
    """A PluginError that says which contract of the linear method it found broken (``exc.contract``)."""
    exc = PluginError(message)
    exc.contract = contract
    return exc


class LinearBase(torch.nn.Module):
    """Base of the linear layers: picks the quantization method and the weight loader."""

    #: vLLM's keyword: False makes forward return the output alone, not ``(output, output_bias)``. (A class default
    #: too: a layer pickled before the keyword has no instance attribute.)
    return_bias: bool = True

    def __init__(
        self,
        input_size: int,
        output_size: int,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        super().__init__()
        prefix = "" if prefix is None else prefix  # (vLLM's default is "": None was taken before)
        layer = f"{type(self).__name__} {prefix!r}"
        if not isinstance(prefix, str):
            raise TypeError(f"{type(self).__name__}: prefix must be a str (the layer's dotted name in the checkpoint, "
                            f"e.g. 'blocks.0.attn.qkv_proj'), found {type(prefix).__name__} {prefix!r}")
        self.return_bias = flag(return_bias, "return_bias", layer)
        self.input_size = positive_int(input_size, "input_size", layer)
        self.output_size = positive_int(output_size, "output_size", layer)
        self.skip_bias_add = flag(skip_bias_add, "skip_bias_add", layer)
        self.params_dtype = params_dtype_of(params_dtype, layer)
        self.quant_config = quant_config
        self.prefix = prefix
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        # The group the layer is sharded over, used by its collectives whatever the current group is at call time;
        # held weakly (see tp_group).
        group = get_tp_group() if self.tp_size > 1 else None
        self._tp_group_ref = None if group is None else weakref.ref(group)
        if quant_config is not None and not isinstance(quant_config, QuantizationConfig):
            if isinstance(quant_config, type) and issubclass(quant_config, QuantizationConfig):
                raise ConfigError(
                    f"{layer}: quant_config is the class {quant_config.__name__}, not an instance of it; pass "
                    f"{quant_config.__name__}.from_config({{...}}) or resolve_quant_config(...) "
                    "(fastvideo_quant.quantization)"
                )
            hint = (f"resolve_quant_config({quant_config!r})" if isinstance(quant_config, str)
                    else "resolve_quant_config(hf_config={'quantization_config': ...})" if isinstance(quant_config, dict)
                    else "resolve_quant_config(...)")
            raise ConfigError(
                f"{layer}: quant_config must be a QuantizationConfig or None, found {type(quant_config).__name__} "
                f"{quant_config!r:.80}; build one with {hint} (fastvideo_quant.quantization)"
            )
        if quant_config is None:
            self.quant_method: QuantizeMethodBase = _default_method()
        else:
            method = quant_method_for(quant_config, self, prefix)  # a plugin's bug: PluginError naming it
            if method is None:
                raise ConfigError(
                    f"layer {prefix!r} ({type(self).__name__}): quantization method "
                    f"{quant_config.get_name()!r} returned no method for it (get_quant_method returned None). A "
                    "linear layer the config leaves unquantized gets UnquantizedLinearMethod() — "
                    "linear_method_or_skip(layer, prefix, make) returns it for skipped layers; FastVideo's layers "
                    "take None so, ours do not, so that a plugin's None by mistake cannot leave layers unquantized "
                    "unseen (docs/guide/porting.md)"
                )
            if not isinstance(method, _unquantized_method_cls()):  # a skipped layer runs anywhere
                check_layer_supported(quant_config, self.params_dtype, prefix)
            self.quant_method = method

    def __deepcopy__(self, memo: dict[int, Any]) -> LinearBase:
        """A deep copy whose parameters keep their class and attributes, with ``weight_loader`` bound to the copy.

        The copy is in ``memo`` before anything else is copied, so the bound methods found while copying the
        parameters' attributes (``weight_loader``) bind to it; every parameter, plain ones included (the bias, a v1
        method's), is copied by :func:`~fastvideo_quant.parameter.deepcopy_parameter` (torch's drops attributes).
        """
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin  # the weak reference to the TP group is copied as is: the copy runs over the same group
        for param in self._parameters.values():
            if param is not None:
                deepcopy_parameter(param, memo)
        twin.__dict__.update(copy.deepcopy(vars(self), memo))
        return twin

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its process group (a handle of this process): unpickled, the layer's collectives run over
        the TP group current at call time."""
        state = super().__getstate__()
        if state.get("_tp_group_ref") is not None:
            state = {**state, "_tp_group_ref": None}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A layer pickled before the output-shape check (0.1 of 2026-12-06) lacks its out-features record: taken from
        what it was built with (a bare AttributeError on its first forward otherwise)."""
        super().__setstate__(state)
        built = self.__dict__.get("_fvq_built", {}).get("weights")
        if "_fvq_out_features" not in self.__dict__ and built is not None:
            self._fvq_out_features = sum(built[1])

    @property
    def tp_group(self) -> torch.distributed.ProcessGroup | None:
        """The process group the layer was sharded over when built (None at TP=1, and for an unpickled layer, whose
        collectives run over the TP group current at call time).

        Held weakly, so the layer never keeps a group alive after ``torch.distributed.destroy_process_group``: a
        group kept alive keeps its worker threads running into interpreter exit, where gloo's can abort the process
        ("terminate called without an active exception"). ShardingError, naming the layer, once the group is freed.
        """
        ref = self.__dict__.get("_tp_group_ref")
        if ref is None:
            return None
        group = ref()
        if group is None:
            raise ShardingError(
                f"{type(self).__name__} {self.prefix!r}: the TP group it was built over (tp_size {self.tp_size}) has "
                "been destroyed (torch.distributed.destroy_process_group); a layer runs only over the group it was "
                "sharded for: build and load the model again in the new group"
            )
        return group

    def _collective_group(self, collective: str) -> torch.distributed.ProcessGroup | None:
        """The group this layer's ``collective`` runs over: its own (the group it was sharded over: its size and this
        process's rank in it are the layer's, so nothing is checked on the hot path), or, for an unpickled layer, the
        TP group current now, checked to have the layer's TP size with this process at the layer's TP rank: a layer
        pickled at TP=2 and run where no group, or another one, is current would combine its shard with the wrong
        ranks' — a silently wrong output. (Skipped while torch.compile traces: the group is fixed by then.)"""
        group = self.tp_group
        if group is not None:
            return group
        group = get_tp_group()
        if torch.compiler.is_compiling():
            return group
        size = 1 if group is None else torch.distributed.get_world_size(group)
        rank = 0 if group is None else torch.distributed.get_rank(group)
        if (size, rank) != (self.tp_size, self.tp_rank):
            where = ("no process group (torch.distributed is not initialised here)" if group is None else
                     f"a group of {size} rank(s) in which this process is rank {rank}")
            raise ShardingError(
                f"{type(self).__name__} {self.prefix!r} was sharded for TP size {self.tp_size} at TP rank "
                f"{self.tp_rank}, but its {collective} would run over {where}, combining its shard with the wrong "
                f"ranks'. A pickled or copied-between-processes layer runs over the TP group current at call time: "
                f"run it where that group has {self.tp_size} ranks and this process is rank {self.tp_rank} (as when it "
                "was built; inside tp_group(group) for a sub-group), or build and load the model for this process's "
                "group"
            )
        return group

    #: Tensors of a quantized layer that follow the model's dtype under ``.to(dtype)``/``.half()``/``.bfloat16()``.
    MODEL_DTYPE_TENSORS = frozenset({"bias"})

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - torch's signature
        """Module-wide conversions keep a quantized layer's format tensors in their dtype (moved to the new device only).

        ``model.to(torch.bfloat16)`` (``.half()``, ``.to(device, dtype)``, ...) converts the bias, which follows the
        model dtype like the activations; the weights, scales, zeros, ``SCB`` ... of a quantized method, before and
        after processing, are a storage format: casting them destroyed fp8 placeholders, rounded AWQ's fp16 scales
        and fed bitsandbytes bf16 column stats. An unquantized layer (including one a config leaves unquantized)
        converts like any torch module.
        """
        if self._materialized(fn):
            if recurse:
                for child in self.children():
                    child._apply(fn)
            return self
        tensors = {**self._parameters, **self._buffers} if self._quantized() else {}
        fixed = {id(t) for n, t in tensors.items() if t is not None and n not in self.MODEL_DTYPE_TENSORS}
        replacing = _replacing_conversion()

        def convert(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if id(t) in fixed and out.dtype != t.dtype:  # (a quantized layer's format tensor keeps its dtype)
                out = t.detach().to(out.device)
            # (replacing, torch wraps what the conversion returns in a new Parameter; a no-op conversion — .to(the
            # device it is on) — returns the parameter itself, which a parameter class, whose detach() returns a plain
            # tensor, cannot be wrapped from: torch raised "Couldn't swap QKVParallelLinear.weight". Its alias is.)
            if replacing and out is t and isinstance(t, Parameter):
                out = t.detach()
            return out

        with self._parameters_kept():
            return super()._apply(convert, recurse)

    @contextlib.contextmanager
    def _parameters_kept(self) -> Iterator[None]:
        """Parameters that torch replaced or swapped meanwhile get their class and attributes back.

        ``load_state_dict(assign=True)``, and every conversion (``.to``, ``.half()``, ...) under
        ``torch.__future__.set_swap_module_params_on_conversion(True)`` or ``..._overwrite_...``, put a plain
        ``Parameter`` in a parameter's place (swapping swaps its class and attributes away too): the layer lost its
        parameter classes and their ``weight_loader``/``output_dim``/... A later checkpoint load then misread every
        parameter (a fused bias "has no output_dim"). The new parameter (under swapping, the same object) becomes the
        class it was and takes back each attribute it lacks; one that became something else than a plain parameter (a
        tensor subclass such as DTensor) is left as torch made it."""
        before = {n: (type(p), dict(vars(p))) for n, p in self._parameters.items() if p is not None}
        try:
            yield
        finally:
            for name, (cls, attrs) in before.items():
                param = self._parameters.get(name)
                if param is None or type(param) not in (cls, Parameter):
                    continue
                if type(param) is not cls:
                    param.__class__ = cls
                for key, value in attrs.items():
                    vars(param).setdefault(key, value)

    def _materialized(self, fn) -> bool:  # noqa: ANN001 - torch's conversion function
        """A layer on the meta device moved off it (``model.to_empty(device=...)``) is built again there, as a fresh
        build: its parameters keep their classes and attributes (``weight_loader``, ``output_dim``, ...) and a
        quantized method's never-loaded placeholders (NaN scales, load masks), which torch's conversion replaced with
        plain parameters of uninitialised memory. That holds for a layer built on meta and for one loaded, processed
        and then moved to meta (its kernel-format tensors and load state are gone with the data: it is unloaded
        again, and a checkpoint loads into it). A dtype cast made on meta is kept for the tensors that follow the model
        dtype. False (nothing done) unless every parameter (a layer without parameters: every buffer) is on meta and
        the target is not."""
        params = {n: p for n, p in self._parameters.items() if p is not None}
        # (the parameters decide; a layer without any — processed AWQ, bias=False, keeps buffers only — its buffers.
        # A small buffer a method made on an explicit device under torch.device("meta") does not block the rebuild.)
        tensors = list(params.values()) or [b for b in self._buffers.values() if b is not None]
        if not tensors or not all(t.is_meta for t in tensors):
            return False
        target = fn(tensors[0]).device  # (.to(device) off meta raises torch's own error here)
        if target.type == "meta":
            return False
        self._forget_load()
        self._parameters.clear()
        for name in [n for n, b in self._buffers.items() if b is not None and b.is_meta]:
            del self._buffers[name]
        # (as the TP rank the layer was built for: the group current now may be another, even of the same size)
        with torch.device(target), building_as(self.tp_rank, self.tp_size):
            self._create_weights(*self._fvq_built["weights"])
            self._create_bias(*self._fvq_built["bias"])
        for name, param in self._parameters.items():
            cast = params.get(name)
            follows = not self._quantized() or name in self.MODEL_DTYPE_TENSORS
            if param is not None and cast is not None and follows and cast.dtype != param.dtype:
                param.data = param.data.to(cast.dtype)
        return True

    def _forget_load(self) -> None:
        """Drop what loading and processing left on the layer (their attributes, the processed flag, a strict=False
        load's guard): for a rebuild after its tensors were discarded."""
        from fastvideo_quant.processing import LOAD_STATE_ATTRS, clear_unloaded

        for name in (*getattr(self, "_fvq_processing_attrs", ()), *LOAD_STATE_ATTRS):
            vars(self).pop(name, None)
        clear_unloaded(self)

    # --- state_dict -----------------------------------------------------------------------------------------
    #: The key (after the layer's prefix) of a quantized layer's record in a state_dict: torch's extra-state key.
    STATE_KEY = "_extra_state"

    def _quantized(self) -> bool:
        return not isinstance(self.quant_method, _unquantized_method_cls())

    def _fvq_state(self) -> dict[str, Any]:
        """What a quantized layer's state_dict records beside its tensors: the method, its config, whether the
        tensors are the checkpoint's (not processed) or the kernel format (processed), and, sharded, which shard
        (``"tp": [rank, size]``: one rank's state loaded into another's layer would fit every shape)."""
        config = self.quant_config
        state = {"method": config.get_name(), "config": config.to_dict(), "processed": weights_processed(self)}
        if self.tp_size > 1:
            state["tp"] = [self.tp_rank, self.tp_size]
        if state["processed"]:
            # the persistent buffers held as None (a state_dict has no key for them): a load follows these and only
            # these (_follow_optional_buffers), so a key missing for any other reason stays a missing key
            state["none_buffers"] = sorted(name for name, buf in self._buffers.items()
                                           if buf is None and name not in self._non_persistent_buffers_set)
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001, ANN202 - torch's signature
        """A quantized layer adds its record (:meth:`_fvq_state`) under ``prefix + "_extra_state"``, so a state_dict
        loaded into a layer in another state is refused by name; an unquantized layer's is plain torch's."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._quantized():
            destination[prefix + self.STATE_KEY] = self._fvq_state()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001, ANN202
                              unexpected_keys, error_msgs) -> None:
        saved = state_dict.pop(prefix + self.STATE_KEY, None)  # (torch hands each module its own copy)
        # (Only a quantized layer needs to look for its keys: an unquantized one without a record is plain torch's.)
        # (The record first, then each tensor's shape, then what the method checks: all before anything is copied.)
        problem = None
        # (A state_dict of this layer's bias alone — a fine-tune's trained tensors — needs no record: the bias is in
        # no quantized format. Any other key of a quantized layer does.)
        own = [k[len(prefix):] for k in state_dict if k.startswith(prefix)] if self._quantized() else []
        if saved is not None or any(k != "bias" for k in own):
            problem = self._state_problem(saved, own)
        if problem is None and saved is not None:
            problem = self._shape_problem(state_dict, prefix, saved)
        if problem is None and saved is not None and saved.get("processed"):
            problem = self.quant_method.state_dict_problem(self, state_dict, prefix)
        if problem is not None:
            raise ModelStateError(f"load_state_dict: layer {self.prefix or prefix[:-1]!r} ({type(self).__name__}): "
                                  f"{problem}")
        if saved is not None and saved.get("processed"):
            self._follow_optional_buffers(state_dict, prefix, saved)
        with self._parameters_kept():  # (assign=True puts plain parameters in place)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        # (a parameter written whole here: a fused part its weight_loader left unwritten is no longer unwritten)
        forget_written(self, [n for n in self._parameters if prefix + n in state_dict])

    def _shape_problem(self, state_dict: dict[str, Any], prefix: str, saved: dict[str, Any]) -> str | None:
        """The layer's own tensors whose shape the state_dict's differ from, named, before anything is copied (torch
        would copy every tensor that fits and then refuse the rest, leaving the layer half loaded). A buffer the
        layer holds as None and the state_dict as a tensor is followed, not compared (:meth:`_follow_optional_buffers`)."""
        own = {**dict(self._parameters), **dict(self._buffers)}
        wrong = []
        for name, tensor in own.items():
            value = state_dict.get(prefix + name)
            if tensor is None or not isinstance(value, torch.Tensor) or value.shape == tensor.shape:
                continue
            wrong.append(f"{name} {tuple(value.shape)} where this layer holds {tuple(tensor.shape)}")
        if not wrong:
            return None
        what = "kernel-format tensors (after processing)" if saved.get("processed") else "checkpoint-format tensors"
        return (f"the state_dict's {what} do not fit this layer: {'; '.join(wrong)}. It was saved from a layer of "
                "another shape (or, processed, whose kernel layout differs: an act-order layer regroups its inputs "
                "by its own group index); nothing was loaded. Load a state_dict saved from the same model")

    def _follow_optional_buffers(self, state_dict: dict[str, Any], prefix: str, saved: dict[str, Any]) -> None:
        """Between processed layers, a buffer one holds as None and the other as a tensor (fp8's
        ``weight_scale_scalar`` exists only when the channels share one scale) follows the state_dict: torch would
        call it an unexpected or a missing key. A buffer the state_dict lacks becomes None only where the saved
        layer held it as None (its record's ``none_buffers``; a record written without it: every missing buffer), so
        a key dropped from a state_dict is still a missing key."""
        device = next((t.device for t in (*self._parameters.values(), *self._buffers.values()) if t is not None),
                      None)
        saved_none = saved.get("none_buffers")
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is None and key in state_dict:
                self._buffers[name] = state_dict[key].detach().clone().to(device)
            elif (buf is not None and key not in state_dict and name not in self._non_persistent_buffers_set
                  and (saved_none is None or name in saved_none)):
                self._buffers[name] = None

    def _state_problem(self, saved: dict[str, Any] | None, keys: list[str] | None = None) -> str | None:
        """Why a state_dict whose record for this layer is ``saved`` cannot be loaded into it (None when it can);
        ``keys``: the names the state_dict holds for this layer."""
        on_disk = ("To keep a quantized model on disk, write the checkpoint `fvq quantize` writes (the supported "
                   "format) and load it with fastvideo_quant.loader.load_checkpoint(model, path)")
        if not self._quantized():
            if saved is None:
                return None
            return (f"the state_dict was saved from a layer quantized with {saved.get('method')!r}; this layer is "
                    f"unquantized. Build the model with the same quantization config. {on_disk}")
        mine = self._fvq_state()
        if saved is None:
            return (f"the state_dict holds this layer's {sorted(keys or [])} but no record of a quantized layer "
                    f"({self.STATE_KEY!r}: it was saved from an unquantized layer, or written by hand); this layer is "
                    f"quantized with {mine['method']!r}. A state_dict of only what a fine-tune trains (a bias) loads "
                    f"without one; with the layer's other tensors, keep its {self.STATE_KEY!r} entry. {on_disk}")
        if (saved.get("method"), saved.get("config")) != (mine["method"], mine["config"]):
            return (f"the state_dict was saved from a layer quantized with {saved.get('method')!r} "
                    f"{saved.get('config')}; this layer is quantized with {mine['method']!r} {mine['config']}. "
                    "Build the model with the same quantization config")
        if saved.get("tp", [0, 1]) != mine.get("tp", [0, 1]):
            rank, size = saved.get("tp", [0, 1])
            return (f"the state_dict holds TP rank {rank}'s shard of a model sharded over {size} rank(s); this layer is "
                    f"TP rank {self.tp_rank} of {self.tp_size}, so every tensor would fit its shape and hold another "
                    "rank's values. Save and load a state_dict on each rank of the same TP size (rank r's into rank r's "
                    "model)")
        if saved.get("processed") and not mine["processed"]:
            return ("the state_dict was saved from a loaded model (its tensors are in the kernel format, after "
                    "process_weights_after_loading); this layer is not loaded yet. Load the checkpoint into this model "
                    "first with fastvideo_quant.loader.load_checkpoint(model, path) (it processes the layers), then "
                    f"load_state_dict. {on_disk}")
        if not saved.get("processed") and mine["processed"]:
            return ("the state_dict was saved from a model not loaded yet (checkpoint format, before "
                    "process_weights_after_loading); this layer is loaded and processed (kernel format). Load "
                    "state_dicts between models in the same state: both built, or both loaded with load_checkpoint")
        return None

    @property
    def uses_weight_loader_v2(self) -> bool:
        """Whether the method's parameters are loaded through ``weight_loader_v2`` (from the registry)."""
        return get_registry().uses_weight_loader_v2(type(self.quant_method))

    def _loader(self):
        v2 = getattr(self, "weight_loader_v2", None)
        return v2 if v2 is not None and self.uses_weight_loader_v2 else self.weight_loader

    def _create_weights(self, input_size_per_partition: int, output_partition_sizes: list[int]) -> None:
        """``quant_method.create_weights`` with the contract's keyword arguments (its parameter names are part of the
        contract), then checked: a signature that cannot take them, or plain parameters from a method registered
        with ``weight_loader_v2=True``, is a PluginError naming the method class and its plugin (were a bare
        TypeError here, or an AttributeError on the first load)."""
        import inspect

        self._fvq_built = {**getattr(self, "_fvq_built", {}),
                           "weights": (input_size_per_partition, list(output_partition_sizes))}
        self._fvq_out_features = sum(output_partition_sizes)  # (this rank's: what _run_method checks apply returns)
        method = self.quant_method
        kwargs = dict(layer=self, input_size_per_partition=input_size_per_partition,
                      output_partition_sizes=output_partition_sizes, input_size=self.input_size,
                      output_size=self.output_size, params_dtype=self.params_dtype, weight_loader=self._loader())
        problem = create_weights_call_problem(method, **kwargs)
        if problem is not None:
            raise _contract_error(
                f"{self._method_owner()}: {type(method).__name__}.create_weights"
                f"{inspect.signature(method.create_weights)} cannot be called as the layers call it ({problem}); "
                f"expected {CREATE_WEIGHTS_SIGNATURE} — layers pass these by name", "create_weights")
        self._check_apply_signature()
        try:
            method.create_weights(**kwargs)
        except (ValueError, TypeError) as exc:
            if not _raised_by_parameter_class(exc):
                # (the plugin's own exception, its traceback pointing at its code: said with the layer it was building,
                # which a model of many layers would not tell — vLLM's "input size is not aligned" names none)
                building = (f"(raised by {type(method).__name__}.create_weights building {type(self).__name__} "
                            f"{self.prefix!r}: input_size_per_partition={input_size_per_partition}, "
                            f"output_partition_sizes={list(output_partition_sizes)}, TP rank {self.tp_rank} of "
                            f"{self.tp_size})")
                if type(exc) in (ValueError, TypeError) and len(exc.args) <= 1:
                    raise type(exc)(f"{exc} {building}").with_traceback(exc.__traceback__) from None
                exc.add_note(building)
                raise
            no_loader = isinstance(exc, TypeError) and "'weight_loader'" in str(exc)  # (a parameter class built without)
            raise _contract_error(
                f"{self._method_owner()}: {type(method).__name__}.create_weights raised {type(exc).__name__}: {exc} "
                f"(building {type(self).__name__} {self.prefix!r}: input_size_per_partition={input_size_per_partition}"
                f", output_partition_sizes={list(output_partition_sizes)}, TP rank {self.tp_rank} of {self.tp_size})"
                + (f"; {WEIGHT_LOADER_FIX}" if no_loader else ""),
                "create_weights: weight_loader" if no_loader else "create_weights") from exc
        self._check_created_sizes(input_size_per_partition, list(output_partition_sizes))
        if self.uses_weight_loader_v2:
            plain = [n for n, p in self.named_parameters(recurse=False) if not isinstance(p, BasevLLMParameter)]
            if plain:
                raise _contract_error(
                    f"{self._method_owner()}: {type(method).__name__} is registered with weight_loader_v2=True, but "
                    f"its create_weights registered plain parameters {plain} on layer {self.prefix!r}; v2 loading "
                    "hands sharding to the parameter classes: create them from fastvideo_quant.parameter "
                    "(ModelWeightParameter, ChannelQuantScaleParameter, ...), or register the method with "
                    "weight_loader_v2=False", "weight_loader_v2")

    def _check_apply_signature(self) -> None:
        """PluginError (contract ``apply: signature``) when the method's ``apply`` cannot take the layers' call
        ``apply(layer, x, bias)`` (``def apply(self, layer, x)``): at build, not as a bare TypeError at the first
        forward."""
        import inspect

        from fastvideo_quant.plugins.failures import defined_at

        method = self.quant_method
        problem = apply_call_problem(method)
        if problem is None:
            return
        fn = getattr(type(method), "apply", method.apply)
        at = defined_at(fn)
        raise _contract_error(
            f"{self._method_owner()}: {type(method).__name__}.apply{f' at {at}' if at else ''} has the signature "
            f"apply{inspect.signature(fn)}, but {type(self).__name__} {self.prefix!r} calls apply(layer, x, bias) (bias "
            f"None where the layer adds none), so every forward would fail with TypeError: {problem}; expected "
            f"{APPLY_SIGNATURE}", "apply: signature")

    def _check_created_sizes(self, input_size_per_partition: int, output_partition_sizes: list[int]) -> None:
        """PluginError (contract create_weights) for a parameter whose size along its ``output_dim`` / ``input_dim``
        is not the layer's: its dims were swapped or its shape computed from the wrong size. Loading would blame the
        checkpoint (a fused part's size fitting another shard), or at TP=1 load it into the wrong dims. Checked for
        every parameter but the bias (v2 classes and v1 attributes alike): each dim attribute is a dim of it; along
        ``output_dim`` the sum of the output partitions (over its packing); along ``input_dim`` at most this rank's
        input size (fewer: groups of input features; one sized from the unsharded input is caught); a ``packed_dim``
        has a packing factor; block scales by :meth:`_check_block_grid`. Marlin/BitBLAS tiled layouts are the method's.
        A square layer's swapped dims cannot be seen here (the suite's layers are not square)."""
        out_total = sum(output_partition_sizes)
        for name, param in self.named_parameters(recurse=False):
            if name == "bias" or getattr(param, "marlin_tile_size", None) or getattr(param, "bitblas_tile_size", None):
                continue
            self._check_dims_in_range(name, param)
            if isinstance(param, BlockQuantScaleParameter):
                self._check_block_grid(name, param, input_size_per_partition, output_partition_sizes)
                continue
            for key, full in (("output_dim", out_total), ("input_dim", input_size_per_partition)):
                dim = getattr(param, key, None)
                if dim is None:
                    continue
                packed = getattr(param, "packed_dim", None) == dim
                factor = (packing_factor(param) or 1) if packed else 1
                if packed and factor == 1:
                    raise _contract_error(
                        f"{self._method_owner()}: {type(self.quant_method).__name__}.create_weights registered {name!r} "
                        f"on {type(self).__name__} {self.prefix!r} with packed_dim={dim} but no packing factor: set "
                        "packed_factor (the parameter classes' keyword) or pack_factor (vLLM's v1 attribute), the "
                        "values one stored element holds", "create_weights")
                found, stored = param.shape[dim], -(-full // factor)  # (stored: elements holding `full` values)
                if key == "input_dim":  # (the weight's input features, or groups of them: AWQ's qzeros and scales)
                    if 1 <= found <= stored:
                        continue
                    expected = (f"at most {stored} (this rank's input size {full}"
                                + (f", {factor} values per stored element" if factor != 1 else "")
                                + "; fewer for groups of input features)")
                elif found == stored:
                    continue
                else:
                    per_element = f", {factor} values per stored element: {stored}" if factor != 1 else ""
                    expected = (f"{full} (the layer's output partition sizes {output_partition_sizes} add up to {full}"
                                f"{per_element})")
                raise _contract_error(
                    f"{self._method_owner()}: {type(self.quant_method).__name__}.create_weights registered {name!r} "
                    f"({type(param).__name__}, shape {tuple(param.shape)}, "
                    + ", ".join(f"{k}={getattr(param, k)}" for k in ("output_dim", "input_dim", "packed_dim")
                                if getattr(param, k, None) is not None)
                    + f") on {type(self).__name__} {self.prefix!r} (TP rank {self.tp_rank} of {self.tp_size}): along "
                    f"{key}={dim} it holds {found}, expected {expected}; output_dim and input_dim name the dims of the "
                    "data as created (a weight [out, in] has output_dim=0, input_dim=1), and its shape comes from "
                    "output_partition_sizes and input_size_per_partition", "create_weights")

    def _check_dims_in_range(self, name: str, param: torch.Tensor) -> None:
        """PluginError for a dim attribute (a v1 method's plain ``set_weight_attrs``; the parameter classes refuse
        theirs when constructed) that is not a dim of the parameter."""
        for key in ("output_dim", "input_dim", "packed_dim"):
            dim = getattr(param, key, None)
            if dim is None or (isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < param.dim()):
                continue
            raise _contract_error(
                f"{self._method_owner()}: {type(self.quant_method).__name__}.create_weights registered {name!r} "
                f"({type(param).__name__}, shape {tuple(param.shape)}) on {type(self).__name__} {self.prefix!r} with "
                f"{key}={dim!r}, which is not a dim of it (0..{param.dim() - 1}); the layers shard and fuse checkpoint "
                "tensors along output_dim/input_dim", "create_weights")

    def _check_block_grid(self, name: str, param: torch.Tensor, input_size_per_partition: int,
                          output_partition_sizes: list[int]) -> None:
        """PluginError for block scales whose layout the core's BlockQuantScaleParameter cannot shard: a fused part
        (but the last) that is not whole blocks of bn rows (its scales would share a block row with the next part's,
        one overwriting the other), a rank's part not whole blocks under tensor parallelism (along the output in
        column layers, the input in row layers: a block cut by a rank boundary), or a grid that is not
        ``[ceil(out / bn), ceil(in / bk)]``. A subclass with its own ``shard_units`` (one grid per part, as fp8's)
        keeps its own rules."""
        if param.block_size is None:
            self._fill_block_size(name, param)
        if type(param).shard_units is not BlockQuantScaleParameter.shard_units:
            return
        bn, bk = param.block_size
        rows_sharded = self.tp_size > 1 and not hasattr(self, "input_is_parallel")  # (column layers; row: input)
        parts = output_partition_sizes if rows_sharded else output_partition_sizes[:-1]
        problems = []
        if any(p % bn for p in parts):
            problems.append(f"output parts {output_partition_sizes} are not all whole blocks of bn={bn} rows"
                            + (" on this rank" if rows_sharded else " (every part but the last must be)"))
        if self.tp_size > 1 and hasattr(self, "input_is_parallel") and input_size_per_partition % bk:
            problems.append(f"this rank's {input_size_per_partition} input features are not whole blocks of bk={bk} "
                            f"(a block would be cut by the boundary between ranks)")
        want = {"output_dim": -(-sum(output_partition_sizes) // bn), "input_dim": -(-input_size_per_partition // bk)}
        for key, size in want.items():
            dim = getattr(param, key, None)
            if dim is not None and param.shape[dim] != size:
                problems.append(f"along {key}={dim} it holds {param.shape[dim]} blocks, expected {size}")
        if problems:
            raise _contract_error(
                f"{self._method_owner()}: {type(self.quant_method).__name__}.create_weights registered block scales "
                f"{name!r} (shape {tuple(param.shape)}, block_size {tuple(param.block_size)}) on {type(self).__name__} "
                f"{self.prefix!r} (TP rank {self.tp_rank} of {self.tp_size}), which BlockQuantScaleParameter cannot "
                f"shard: {'; '.join(problems)}. Refuse such sizes in create_weights (naming the TP sizes that work), or "
                "keep one grid per part with your own shard_units", "create_weights")

    def _fill_block_size(self, name: str, param: BlockQuantScaleParameter) -> None:
        """A BlockQuantScaleParameter created without ``block_size`` (vLLM's and FastVideo's constructor) takes the
        config's ``weight_block_size``, as their layers read it; PluginError (contract create_weights) when there is
        none."""
        found = getattr(self.quant_config, "weight_block_size", None)
        if found is None:
            raise _contract_error(
                f"{self._method_owner()}: {type(self.quant_method).__name__}.create_weights registered block scales "
                f"{name!r} on {type(self).__name__} {self.prefix!r} without block_size, and its config "
                f"{type(self.quant_config).__name__} has no weight_block_size to take it from; pass "
                "BlockQuantScaleParameter(block_size=(bn, bk), ...), or give the config weight_block_size", "create_weights")
        try:
            param.block_size = parse_block_size(found, f"{type(self.quant_config).__name__}.weight_block_size")
        except ValueError as exc:
            raise _contract_error(f"{self._method_owner()}: {exc} (for block scales {name!r} on {type(self).__name__} "
                                  f"{self.prefix!r}, created without block_size)", "create_weights") from exc

    def _method_owner(self) -> str:
        from fastvideo_quant.plugins.manager import describe_method_owner

        config = self.quant_config
        return describe_method_owner(type(config)) if config is not None else "the default (unquantized) method"

    def _create_bias(self, size: int, bias: bool, attrs: dict[str, Any]) -> None:
        bias = flag(bias, "bias", f"{type(self).__name__} {self.prefix!r}")
        if bias and self.skip_bias_add and not self.return_bias:
            raise ConfigError(
                f"{type(self).__name__} {self.prefix!r}: skip_bias_add=True with return_bias=False: the layer would "
                "neither add its bias nor return it (vLLM's layers drop it silently). Pass return_bias=True to get "
                "(output, bias) and add it yourself, or skip_bias_add=False to have the layer add it")
        self._fvq_built = {**getattr(self, "_fvq_built", {}), "bias": (size, bias, dict(attrs))}
        if bias:
            self.bias = Parameter(torch.empty(size, dtype=self.params_dtype), requires_grad=False)
            set_weight_attrs(self.bias, {"weight_loader": self.weight_loader, **attrs})
        else:
            self.register_parameter("bias", None)

    def _check_loaded(self, param: Parameter, loaded_weight: Any) -> None:
        """TypeError naming the parameter where a weight loader is given no tensor (a numpy array, a list: they failed
        as AttributeError deep in the loader)."""
        if not isinstance(loaded_weight, torch.Tensor | LazyTensor):
            hint = " (torch.from_numpy(array))" if type(loaded_weight).__module__ == "numpy" else ""
            raise TypeError(f"{self._what(param)}: weight_loader takes the checkpoint tensor as a torch.Tensor, found "
                            f"{type(loaded_weight).__name__}{hint}")

    @contextlib.contextmanager
    def _naming(self, param: Parameter, shard_id: Any = None) -> Iterator[None]:
        """Prefix a parameter class's load error with this layer's parameter name."""
        try:
            yield
        except WeightLoadError as exc:  # (a shape or value error stays one: the loader words them its own way)
            cls = next((c for c in (CheckpointShapeError, CheckpointValueError) if isinstance(exc, c)), WeightLoadError)
            raise cls(f"{self._what(param, shard_id)}: {exc}") from exc

    def _load_along(self, param: Parameter, loaded_weight: TensorLike, dim: int | None,
                    sharded: tuple[str, int] | None = None) -> None:
        """The v1 loader of an unfused parameter: the full checkpoint tensor narrowed to this rank's part along the
        parameter's ``dim`` (None: the whole tensor, as on every rank), a 0-d tensor taken as ``[1]``, copied in with
        its shape checked (errors name the parameter). ``sharded``: the attribute ``dim`` was read from and this
        rank's size along it (a column layer's output rows, a row layer's input features), for the error of a
        parameter sized per rank that lacks the attribute (:meth:`_missing_dim_error`)."""
        if dim is not None:
            shard_size = param.data.shape[dim]
            check_full_size(loaded_weight, dim, shard_size * self.tp_size, self._what(param))
            loaded_weight = narrow(loaded_weight, dim, self.tp_rank * shard_size, shard_size)
        if loaded_weight.dim() == 0:
            loaded_weight = materialize(loaded_weight).reshape(1)
        if dim is None and sharded is not None and self.tp_size > 1:
            attr, size = sharded
            error = self._missing_dim_error(param, loaded_weight, attr, size, size * self.tp_size, self._what(param))
            if error is not None:
                raise error
        if dim is None and isinstance(param, BasevLLMParameter):  # (whole: through its class, which may record it)
            param.load_replicated_weight(loaded_weight, self._what(param))
            return
        copy_checked(param.data, loaded_weight, self._what(param), is_packed(param))

    def _missing_dim_error(self, param: Parameter, loaded_weight: TensorLike, attr: str, size: int, full: int,
                           what: str) -> CheckpointShapeError | None:
        """The shape error, with its cause, for a v1 parameter without ``attr`` (``output_dim``, ``input_dim``) that the
        loader copies whole, whose shape differs from the checkpoint tensor's along one dim only, where the parameter
        has ``size`` (this rank's output rows of every fused part, or its input features) and the tensor ``full`` (the
        part's, or every rank's): ``create_weights`` sized it per rank or for all parts and did not say along which
        dim, so the loader could not take the slice. None otherwise (the plain size error is then what is known)."""
        if param.dim() != loaded_weight.dim() or tuple(param.shape) == tuple(loaded_weight.shape):
            return None
        differ = [i for i in range(param.dim()) if param.shape[i] != loaded_weight.shape[i]]
        if len(differ) != 1 or param.shape[differ[0]] != size or loaded_weight.shape[differ[0]] != full:
            return None
        d = differ[0]
        sizes = (f"output_partition_sizes {list(self.output_partition_sizes)}" if attr == "output_dim" else
                 f"input_size_per_partition {getattr(self, 'input_size_per_partition', size)}")
        whose = "output rows" if attr == "output_dim" else "input features"
        method = type(getattr(self, "quant_method", None)).__name__
        return CheckpointShapeError(
            f"{what}: expected shape {tuple(param.shape)}, found {tuple(loaded_weight.shape)}. The parameter has no "
            f"{attr}, so the loader copies the checkpoint tensor whole into it; its dim {d}, {size}, is the size of "
            f"this layer's {whose} on this rank (TP rank {self.tp_rank} of {self.tp_size}; {sizes}) and the "
            f"tensor's, {full}, their whole. If {method}.create_weights sized it per rank or per fused part, it must set "
            f"{attr}={d} on it (set_weight_attrs(param, {{'{attr}': {d}, ...}}), or a v2 parameter class taking it) for "
            "the loader to write each rank's and each part's slice; if the parameter is the same on every rank, the "
            "checkpoint tensor's shape is what is wrong")

    def _load_v2(self, param: BasevLLMParameter, loaded_weight: TensorLike, load: Callable[[TensorLike], None]) -> None:
        """The v2 loader of an unfused parameter: ``load`` (one of the parameter class's ``load_*`` methods) with a 0-d
        tensor taken as ``[1]``, its errors prefixed with the parameter's name."""
        if loaded_weight.dim() == 0:
            loaded_weight = materialize(loaded_weight).reshape(1)
        with self._naming(param):
            load(loaded_weight)

    def _what(self, param: Parameter, shard_id: Any = None) -> str:
        name = next((n for n, p in self.named_parameters(recurse=False) if p is param), "parameter")
        where = f"{self.prefix}.{name}" if self.prefix else f"{type(self).__name__}.{name}"
        return where if shard_id is None else f"{where} shard {shard_id!r}"

    def checkpoint_shard_id(self, index: int) -> int | str:
        """The shard id of the ``index``-th checkpoint module of a fused layer (ints; QKV: letters)."""
        return index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Parameter | None] | torch.Tensor:
        raise NotImplementedError

    def _run_method(self, x: torch.Tensor, bias: torch.Tensor | None, autocast: str | None = None) -> torch.Tensor:
        """``quant_method.apply``, its output checked to be one tensor (a forgotten ``return`` would otherwise fail on
        ``None.dim()``) of ``x``'s rank, width and dtype (four compares a call): the conformance suite checks them,
        but a model built from a checkpoint's config.json runs whatever plugin it names, and an output flattened to
        ``[tokens, out]`` or a float32 result from a bf16 input would reach every later layer unseen. (An unquantized
        layer under autocast returns the autocast dtype, as ``F.linear`` does.) The input's device is checked first:
        methods would answer an input on another device each in its own way (torch's bare device error, a meta output
        from a fake kernel, a Triton kernel reading another GPU's pointer). ``autocast``: the device type autocast is
        on for in a quantized layer (:meth:`_autocast`), where ``apply`` runs with it off: the input is in the autocast
        dtype already, and ``apply`` computes in its input's dtype as its method defines, not with its operations
        recast one by one."""
        self._check_device(x)
        if autocast is not None:
            # (x is in the autocast dtype already, _autocast; inside apply autocast would recast the method's own
            # arithmetic: fp8's CPU product of unscaled e4m3 values, up to 448^2 * K, overflowed in float16)
            with torch.autocast(autocast, enabled=False):
                out = self.quant_method.apply(self, x, bias)
        else:
            out = self.quant_method.apply(self, x, bias)
        if not isinstance(out, torch.Tensor):
            self._refuse_output_type(out)
        # (rank and width, ~0.25 us on CPU against ~0.5 for the whole shape: a flattened or padded output; leading dims
        # of the same rank but other sizes are the conformance suite's to catch)
        if out.dim() != x.dim() or out.shape[-1] != self._fvq_out_features:
            self._refuse_output_shape(x, out)
        if out.dtype != x.dtype and self._quantized():
            from fastvideo_quant.plugins.manager import describe_method_owner

            raise PluginError(
                f"{type(self).__name__} {self.prefix!r}: {type(self.quant_method).__name__}.apply ("
                f"{describe_method_owner(type(self.quant_config))}) returned {out.dtype} for a {x.dtype} input; apply "
                f"must return its input's dtype (fvq check {self.quant_config.get_name()} reports this as "
                "'[contract: apply: output dtype]')"
            )
        return out

    def _refuse_output_type(self, out: object) -> None:
        config = self.quant_config
        found, fix = apply_return_problem(out)
        raise _contract_error(
            f"{type(self).__name__} {self.prefix!r}: {type(self.quant_method).__name__}.apply ({self._method_owner()}) "
            f"returned {found}; apply must return one tensor, the layer's output: {fix}"
            + (f" (fvq check {config.get_name()} reports this as '[contract: apply: returns one tensor]')"
               if config is not None else ""), "apply: returns one tensor")

    def _refuse_output_shape(self, x: torch.Tensor, out: torch.Tensor) -> None:
        config = self.quant_config
        expected = (*x.shape[:-1], self._fvq_out_features)
        reshape = ("; a 3-D input gives a 3-D output: reshape the result back to x.shape[:-1] + (out,)"
                   if tuple(out.shape[:-1]) != tuple(x.shape[:-1]) else "")
        raise PluginError(
            f"{type(self).__name__} {self.prefix!r}: {type(self.quant_method).__name__}.apply ({self._method_owner()}) "
            f"returned shape {list(out.shape)} for an input of shape {list(x.shape)}; expected {list(expected)}: the "
            f"input's leading dims and this rank's {self._fvq_out_features} output features{reshape}"
            + (f" (fvq check {config.get_name()} reports this as '[contract: apply: output shape]')"
               if config is not None else "")
        )

    def _check_device(self, x: torch.Tensor) -> None:
        # ~0.2 us: the layer's first tensor (the method's, or the bias; then buffers, where a method keeps its
        # processed tensors there and there is no bias); plain loops, a generator costs twice this
        for tensors in (self._parameters, self._buffers):
            for t in tensors.values():
                if t is not None:
                    if x.device != t.device:
                        self._refuse_device(x, t)
                    return

    def _refuse_device(self, x: torch.Tensor, param: torch.Tensor) -> None:
        named = [n for n, t in [*self._parameters.items(), *self._buffers.items()]
                 if t is not None and t.device == param.device]
        name = next((n for n in named if n != "bias"), named[0])
        raise ValueError(
            f"{type(self).__name__} {self.prefix!r}: the input is on {x.device}, the layer's weights on {param.device} "
            f"({name!r}); move the input to the layer's device (x.to({str(param.device)!r})) or the model to the "
            "input's" + (" (a meta weight was never materialized: load the checkpoint into the model, or "
                         "to_empty() it onto a device and load)" if param.is_meta else "")
        )

    def _autocast(self, x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """``(x, None)``; ``(x in the autocast dtype, its device type)`` when autocast is on for its device and the
        layer is quantized: ``F.linear`` (an unquantized layer) follows autocast by itself, a method's ``apply``
        computes in its input's dtype (:meth:`_run_method` runs it with autocast off)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} {self.prefix!r}: the input must be a torch.Tensor, found "
                            f"{type(x).__name__}" + (" (pass the tensor itself, not a tuple or list holding it)"
                                                     if isinstance(x, (tuple, list)) else ""))
        device = "cuda" if x.is_cuda else x.device.type  # (is_cuda: a cheaper host call on the hot path)
        if device == "meta":  # (no autocast there; torch.is_autocast_enabled raises for it)
            return x, None
        if torch.is_autocast_enabled(device) and x.is_floating_point() and self._quantized():  # (no import otherwise)
            dtype = torch.get_autocast_dtype(device)
            return (x.to(dtype) if x.dtype != dtype else x), device
        return x, None

    def _check_width(self, x: torch.Tensor, expected: int, detail: str = "", hint: str = "") -> None:
        """ValueError naming the layer when ``x``'s last dim is not ``expected`` (each method's kernel would refuse it
        in its own words, or a matmul with bare shapes)."""
        if not x.dim():
            raise ValueError(f"{type(self).__name__} {self.prefix!r}: expected an input of shape [..., "
                             f"{detail or f'{expected} (input_size)'}], found a 0-d tensor (a scalar)")
        if x.shape[-1] != expected:
            raise ValueError(f"{type(self).__name__} {self.prefix!r}: input's last dim is {x.shape[-1]}, expected "
                             f"{detail or f'{expected} (input_size)'}{hint}")


def _replacing_conversion() -> bool:
    """Whether module conversions replace (swap or overwrite) parameters instead of setting their ``.data``."""
    return (torch.__future__.get_swap_module_params_on_conversion()
            or torch.__future__.get_overwrite_module_params_on_conversion())
