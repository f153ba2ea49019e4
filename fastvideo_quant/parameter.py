"""Parameter classes that know how to shard a checkpoint tensor into themselves.

Follows vLLM's ``model_executor/parameter.py``: a layer's ``weight_loader_v2``
says *where* a tensor goes (column, row, a fused shard), and the parameter class
says *how* (which dim is sharded, packing, per-shard scalars). That keeps
per-method branches out of the layer file.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch.nn import Parameter

from fastvideo_quant.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from fastvideo_quant.errors import CheckpointShapeError, ShardingError, WeightLoadError
from fastvideo_quant.lazy import TensorLike, materialize, narrow

__all__ = [
    "BasevLLMParameter",
    "BlockQuantScaleParameter",
    "ChannelQuantScaleParameter",
    "GroupQuantScaleParameter",
    "ModelWeightParameter",
    "PackedColumnParameter",
    "PackedvLLMParameter",
    "PerTensorScaleParameter",
    "RowvLLMParameter",
    "check_dtype_kind",
    "copy_checked",
    "deepcopy_parameter",
    "permute_param_layout_",
    "set_weight_attrs",
]

QKV_INDEX = {"q": 0, "k": 1, "v": 2}


def set_weight_attrs(weight: torch.Tensor, attrs: dict[str, Any] | None) -> None:
    """Set attributes (``output_dim``, ``weight_loader``, ...) on a parameter; never overwrite one."""
    for key, value in (attrs or {}).items():
        if hasattr(weight, key):
            raise AttributeError(f"parameter already has attribute {key!r}; refusing to overwrite it")
        setattr(weight, key, value)


def _dtype_kind(dtype: torch.dtype | None) -> str | None:
    if dtype is None:
        return None
    if dtype.is_floating_point and dtype.itemsize == 1:
        return "float8"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def is_packed(t: Any) -> bool:
    """Whether a parameter holds packed values (several codes an element: ``packed_dim`` set, by a packed parameter
    class or a v1 method's attribute)."""
    return getattr(t, "packed_dim", None) is not None


def check_dtype_kind(dst: torch.Tensor, src: TensorLike, what: str = "parameter", packed: bool = False) -> None:
    """WeightLoadError naming both dtypes unless ``src``'s dtype converts into ``dst``'s without changing what it
    means. Floats convert among themselves (a bf16 checkpoint into an fp32 model); copying across float / integer /
    float8, or between two float8 formats (e5m2 past 448 saturates in e4m3), would silently corrupt values. Integers
    widen, except into a ``packed`` parameter: a narrower integer (uint8, int16) cannot hold AWQ's int32 words of eight
    4-bit codes, so there only the same width or a wider one (int64 or uint32 words) is taken."""
    src_dtype = getattr(src, "dtype", None)
    src_kind, dst_kind = _dtype_kind(src_dtype), _dtype_kind(dst.dtype)
    if src_kind is not None and src_kind != dst_kind:
        article = "an" if dst_kind == "integer" else "a"
        raise WeightLoadError(f"{what}: expected {article} {dst_kind} tensor ({dst.dtype}), found {src_dtype}")
    if src_kind == "float8" and src_dtype != dst.dtype:
        raise WeightLoadError(
            f"{what}: expected a {dst.dtype} tensor, found {src_dtype}: float8 formats are not converted into one "
            f"another (a cast would saturate or round the stored codes, and the checkpoint's scales were chosen for "
            f"its own format); quantize the checkpoint to {dst.dtype}")
    if packed and src_kind == "integer" and src_dtype.itemsize < dst.dtype.itemsize:
        raise WeightLoadError(
            f"{what}: expected a {dst.dtype} tensor, found {src_dtype}: a {src_dtype.itemsize * 8}-bit integer cannot "
            f"hold this parameter's packed {dst.dtype.itemsize * 8}-bit words (their codes would be cut), so it is not "
            "widened; the checkpoint was written with another dtype than its format's, or it is corrupt")


def copy_checked(dst: torch.Tensor, src: TensorLike, what: str = "parameter", packed: bool = False) -> None:
    """Copy ``src`` into ``dst`` after checking dtype kinds (:func:`check_dtype_kind`; ``packed``: ``dst`` holds
    packed words, see :func:`is_packed`) and shapes."""
    check_dtype_kind(dst, src, what, packed)
    if tuple(src.shape) != tuple(dst.shape):
        if src.dim() == 0 and dst.numel() == 1 or (src.numel() == 1 and dst.numel() == 1):
            dst.copy_(materialize(src).reshape(dst.shape))
            return
        raise CheckpointShapeError(f"{what}: expected shape {tuple(dst.shape)}, found {tuple(src.shape)}")
    dst.copy_(materialize(src))


def check_full_size(loaded: TensorLike, dim: int, expected: int, what: str) -> None:
    """Reject a checkpoint tensor whose size along the sharded ``dim`` is not the unsharded size."""
    if loaded.dim() <= dim or loaded.shape[dim] != expected:
        found = tuple(loaded.shape)
        raise CheckpointShapeError(f"{what}: expected size {expected} along dim {dim} of the checkpoint tensor, found shape "
                                   f"{found}")


def deepcopy_parameter(param: Parameter, memo: dict[int, Any]) -> Parameter:
    """``copy.deepcopy`` of a parameter of any class: same class, cloned data, and its attributes deep-copied.

    torch's ``Parameter.__deepcopy__`` calls ``type(self)(data, requires_grad)``, which our classes' constructors do
    not take, and drops the instance ``__dict__`` (``weight_loader``, ``output_dim``, ``loaded_mask``, ...). Here the
    attributes go through ``memo`` like the rest of a deep copy, so a ``weight_loader`` bound to a layer that is
    being copied is bound to the copy. The state is gathered as torch gathers a tensor's (``_get_obj_state``: a
    subclass's ``__getstate__`` or ``__slots__`` included), as :meth:`BasevLLMParameter.__reduce_ex__` does for pickle.
    """
    if id(param) in memo:
        return memo[id(param)]
    data = param.data.clone(memory_format=torch.preserve_format)
    result = torch.Tensor._make_subclass(type(param), data, param.requires_grad)
    memo[id(param)] = result
    torch._utils._set_obj_state(result, copy.deepcopy(torch._utils._get_obj_state(param), memo))
    return result


def _rebuild_parameter(cls: type[Parameter], data: torch.Tensor, requires_grad: bool) -> Parameter:
    """Unpickling half of :meth:`BasevLLMParameter.__reduce_ex__` (the attributes follow through ``__setstate__``)."""
    return torch.Tensor._make_subclass(cls, data, requires_grad)


class BasevLLMParameter(Parameter):
    """A parameter with a ``weight_loader`` and the default (unsharded) load methods."""

    def __new__(cls, data: torch.Tensor, **kwargs: Any):
        return super().__new__(cls, data=data, requires_grad=False)

    __deepcopy__ = deepcopy_parameter

    def __reduce_ex__(self, protocol: int) -> tuple:
        # torch's Parameter.__reduce_ex__ rebuilds a plain Parameter, so pickle, torch.save of a model and
        # torch.multiprocessing lost the class (its load_* methods); the data goes through torch's own tensor reduction,
        # the state as torch gathers a tensor's (a subclass's __getstate__ or __slots__ included)
        return _rebuild_parameter, (type(self), self.data, self.requires_grad), torch._utils._get_obj_state(self)

    def __setstate__(self, state: Any) -> None:
        torch._utils._set_obj_state(self, state)

    def __init__(self, data: torch.Tensor, weight_loader: Callable[..., None]) -> None:
        self._weight_loader = weight_loader
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self._check_layout()

    def _check_layout(self) -> None:
        """ValueError (TypeError for a non-int) at construction for a dim keyword the data cannot have: out of range,
        ``output_dim == input_dim``, a ``packed_dim`` that is neither, a packing factor below 1. Each would surface
        only at load, as an IndexError or a size mismatch blamed on the checkpoint."""
        name, shape = type(self).__name__, tuple(self.data.shape)
        dims = {k: getattr(self, k) for k in ("output_dim", "input_dim", "packed_dim") if hasattr(self, f"_{k}")}
        for key, dim in dims.items():
            if not isinstance(dim, int) or isinstance(dim, bool):
                raise TypeError(f"{name}: {key} must be an int (a dim of the data), found {type(dim).__name__} {dim!r}")
            if not 0 <= dim < self.data.dim():
                raise ValueError(f"{name}: {key}={dim} is not a dim of its data, shape {shape} ({self.data.dim()} dims: "
                                 f"{key} must be 0..{self.data.dim() - 1})")
        if "output_dim" in dims and dims.get("input_dim") == dims["output_dim"]:
            raise ValueError(f"{name}: output_dim and input_dim are both {dims['output_dim']} (data shape {shape}); "
                             "output features and input features are different dims (a linear weight [out, in] has "
                             "output_dim=0, input_dim=1)")
        if "packed_dim" in dims:
            own = [dims[k] for k in ("output_dim", "input_dim") if k in dims]
            if dims["packed_dim"] not in own:
                raise ValueError(f"{name}: packed_dim={dims['packed_dim']} is neither its output_dim nor its input_dim "
                                 f"({', '.join(f'{k}={v}' for k, v in dims.items() if k != 'packed_dim')}); values are "
                                 "packed along one of those")
            factor = self._packed_factor
            if not isinstance(factor, int | Fraction) or isinstance(factor, bool) or factor < 1:
                raise ValueError(f"{name}: packed_factor must be an int or a Fraction >= 1 (values per stored element, "
                                 f"e.g. 8 int4 per int32, Fraction(32, 3) 3-bit values per int32), found {factor!r}")

    @property
    def weight_loader(self) -> Callable[..., None]:
        """The layer's ``weight_loader_v2`` this parameter was created with (``extra_weight_attrs``): what loading
        calls with each checkpoint tensor."""
        return self._weight_loader

    def _assert_and_load(self, loaded_weight: TensorLike) -> None:
        copy_checked(self.data, loaded_weight, type(self).__name__, is_packed(self))

    def load_replicated_weight(self, loaded_weight: TensorLike, what: str) -> None:
        """Called by ``ReplicatedLinear.weight_loader`` with the full checkpoint tensor (a 0-d one as ``[1]``), which
        every rank holds whole: copied in, shape and dtype kind checked, errors naming ``what`` (the layer's name for
        the parameter). A subclass that records what was loaded (fp8's scales) extends it as it does the others."""
        copy_checked(self.data, loaded_weight, what, is_packed(self))

    def load_column_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``ColumnParallelLinear.weight_loader_v2`` with the full checkpoint tensor; this class is not
        sharded, so it is copied in whole (shape and dtype kind checked)."""
        self._assert_and_load(loaded_weight)

    def load_row_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``RowParallelLinear.weight_loader_v2`` with the full checkpoint tensor; copied in whole, the same
        on every rank."""
        self._assert_and_load(loaded_weight)

    def load_merged_column_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``MergedColumnParallelLinear.weight_loader_v2`` with one part's full checkpoint tensor
        (``shard_id``, ``shard_offset``, ``shard_size``), and by both fused layers' (QKV's too) with a tensor for a
        parameter without ``output_dim`` (no keywords). Copied in whole; the keywords are not read."""
        self._assert_and_load(loaded_weight)

    def load_qkv_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``QKVParallelLinear.weight_loader_v2`` with the full checkpoint tensor of ``'q'``, ``'k'`` or
        ``'v'``. Copied in whole; the keywords are not read."""
        self._assert_and_load(loaded_weight)


class _ColumnvLLMParameter(BasevLLMParameter):
    """A parameter sharded along ``output_dim`` across TP ranks."""

    def __init__(self, output_dim: int, **kwargs: Any) -> None:
        self._output_dim = output_dim
        super().__init__(**kwargs)

    @property
    def output_dim(self) -> int:
        """The dim that holds output features: column and fused layers shard along it."""
        return self._output_dim

    def shard_units(self, shard_offset: int, shard_size: int) -> tuple[int, int]:
        """Convert (offset, size) in output rows to this parameter's storage units along output_dim."""
        if getattr(self, "packed_dim", None) == self.output_dim:
            return packed_units(shard_offset, shard_size, self.packed_factor, type(self).__name__)
        return shard_offset, shard_size

    def _described(self, shard_id: Any = None) -> str:
        """The parameter's class (and fused shard) for messages, with its packing when it is packed along the output
        dim: sizes there count stored elements, ``packed_factor`` checkpoint rows each."""
        what = type(self).__name__ + ("" if shard_id is None else f" shard {shard_id!r}")
        if getattr(self, "packed_dim", None) == self.output_dim:
            what += f" (packed_factor {self.packed_factor} along packed_dim {self.packed_dim}, the output dim)"
        return what

    def load_column_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``ColumnParallelLinear.weight_loader_v2``: rank ``tp_rank``'s ``1/tp_size`` of the full checkpoint
        tensor along ``output_dim`` (sizes in stored elements); WeightLoadError when its size there is not ``tp_size``
        times the parameter's."""
        shard_size = self.data.shape[self.output_dim]
        check_full_size(loaded_weight, self.output_dim, shard_size * self.tp_size, self._described())
        loaded = narrow(loaded_weight, self.output_dim, self.tp_rank * shard_size, shard_size)
        self._assert_and_load(loaded)

    def load_merged_column_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``MergedColumnParallelLinear.weight_loader_v2`` with one part's full checkpoint tensor:
        ``shard_offset`` and ``shard_size`` (output rows, converted by :meth:`shard_units`) place this rank's slice
        of the part; rank ``tp_rank``'s slice along ``output_dim`` goes there. ``shard_id`` names the part in
        errors."""
        shard_offset, shard_size = self.shard_units(kwargs["shard_offset"], kwargs["shard_size"])
        what = self._described(kwargs.get("shard_id"))
        check_full_size(loaded_weight, self.output_dim, shard_size * self.tp_size, what)
        dst = self.data.narrow(self.output_dim, shard_offset, shard_size)
        copy_checked(dst, narrow(loaded_weight, self.output_dim, self.tp_rank * shard_size, shard_size), what,
                     is_packed(self))

    def load_qkv_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``QKVParallelLinear.weight_loader_v2`` with the full checkpoint tensor of ``shard_id`` (``'q'``,
        ``'k'``, ``'v'``): ``shard_offset`` and ``shard_size`` (output rows, converted by :meth:`shard_units`) place
        it; the slice along ``output_dim`` is rank ``tp_rank // num_heads``'s for k and v (``num_heads``: the ranks
        each KV head is replicated on), ``tp_rank``'s for q."""
        shard_id = kwargs["shard_id"]
        shard_offset, shard_size = self.shard_units(kwargs["shard_offset"], kwargs["shard_size"])
        replicas = 1 if shard_id == "q" else kwargs["num_heads"]
        shard_rank = self.tp_rank // replicas
        what = self._described(shard_id)
        check_full_size(loaded_weight, self.output_dim, shard_size * (self.tp_size // replicas), what)
        dst = self.data.narrow(self.output_dim, shard_offset, shard_size)
        copy_checked(dst, narrow(loaded_weight, self.output_dim, shard_rank * shard_size, shard_size), what,
                     is_packed(self))


class RowvLLMParameter(BasevLLMParameter):
    """A parameter sharded along ``input_dim`` across TP ranks."""

    def __init__(self, input_dim: int, **kwargs: Any) -> None:
        self._input_dim = input_dim
        super().__init__(**kwargs)

    @property
    def input_dim(self) -> int:
        """The dim that holds input features: row layers shard along it."""
        return self._input_dim

    def load_row_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``RowParallelLinear.weight_loader_v2``: rank ``tp_rank``'s ``1/tp_size`` of the full checkpoint
        tensor along ``input_dim`` (a 0-d tensor taken as ``[1]``); WeightLoadError when its size there is not
        ``tp_size`` times the parameter's."""
        if loaded_weight.dim() == 0:
            loaded_weight = materialize(loaded_weight).reshape(1)
        shard_size = self.data.shape[self.input_dim]
        try:
            check_full_size(loaded_weight, self.input_dim, shard_size * self.tp_size, type(self).__name__)
        except CheckpointShapeError as exc:
            hint = self._row_split_hint(loaded_weight, shard_size)  # (with one, the size sentence stays: it explains)
            raise (WeightLoadError if hint else CheckpointShapeError)(f"{exc}{hint}") from None
        self._assert_and_load(narrow(loaded_weight, self.input_dim, self.tp_rank * shard_size, shard_size))

    def _row_split_hint(self, loaded_weight: TensorLike, shard_size: int) -> str:
        """Why a checkpoint tensor does not split over the row layer's ranks along ``input_dim``."""
        if loaded_weight.dim() <= self.input_dim:
            return ""
        full, tp = loaded_weight.shape[self.input_dim], self.tp_size
        if tp > 1 and full % tp:
            return (f" ({full} along input_dim cannot be split over {tp} ranks: what all input features share — a "
                    "single group, a per-channel scale — is replicated in row layers: make it a "
                    "ChannelQuantScaleParameter (output_dim only), or PerTensorScaleParameter for one value)")
        if tp > 1:  # (the parameter cannot tell which side is wrong: it names both)
            return (f" (each of the {tp} ranks holds {shard_size} along input_dim, so the checkpoint's {full} would be "
                    f"{full // tp} a rank: either the checkpoint holds one rank's share — load the unsharded tensors, "
                    "each rank takes its part — or the parameter was sized from input_size: size it from "
                    "input_size_per_partition, this rank's input features)")
        return ""


class ModelWeightParameter(_ColumnvLLMParameter, RowvLLMParameter):
    """A linear weight: column-sharded in column layers, row-sharded in row layers."""


class GroupQuantScaleParameter(_ColumnvLLMParameter, RowvLLMParameter):
    """Group-wise scales/zeros ``[in/group, out]`` (or transposed): shard like the weight."""


class ChannelQuantScaleParameter(_ColumnvLLMParameter):
    """Per-output-channel scales: shard along the output dim, replicated in row layers."""


class BlockQuantScaleParameter(_ColumnvLLMParameter, RowvLLMParameter):
    """Block scales ``[ceil(out/bn), ceil(in/bk)]``: offsets given in rows convert to blocks.

    ``block_size`` ``(bn, bk)``; without it (vLLM's and FastVideo's constructor, which take none) the layer fills it
    from its config's ``weight_block_size`` when the method creates the weights. Sharded shards must align to the
    block (``out_per_rank % bn == 0``), which the layer checks then.
    """

    def __init__(self, block_size: tuple[int, int] | list[int] | None = None, **kwargs: Any) -> None:
        self.block_size = None if block_size is None else parse_block_size(block_size, "BlockQuantScaleParameter")
        super().__init__(**kwargs)

    def shard_units(self, shard_offset: int, shard_size: int) -> tuple[int, int]:
        """(offset, size) in output rows → in block rows: ``offset // bn`` and ``ceil(size / bn)``. WeightLoadError
        for a shard that does not start on a block row: its scales would share a row with the shard before it, one
        overwriting the other (layers refuse such part sizes when they are built)."""
        if self.block_size is None:
            raise WeightLoadError(
                "BlockQuantScaleParameter: no block_size, so rows cannot be converted to block rows; pass "
                "block_size=(bn, bk), or create it in a layer whose config has weight_block_size (the layer fills it)")
        bn = self.block_size[0]
        if shard_offset % bn:
            raise WeightLoadError(
                f"BlockQuantScaleParameter: the shard at output row {shard_offset} (size {shard_size}) does not start "
                f"on a block of bn={bn} rows, so its scales would share a block row with the shard before it; every "
                f"fused part but the last must be a multiple of bn (or keep one grid per part)")
        return shard_offset // bn, -(-shard_size // bn)


def parse_block_size(value: Any, what: str) -> tuple[int, int]:
    """``value`` as ``(bn, bk)``: two positive ints; ValueError naming ``what`` otherwise."""
    try:
        bn, bk = value
    except (TypeError, ValueError):
        raise ValueError(f"{what}: block_size must be two positive ints (bn, bk), found {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in (bn, bk)):
        raise ValueError(f"{what}: block_size must be two positive ints (bn, bk), found {value!r}")
    return int(bn), int(bk)  # (numpy ints and the like, as the constructor took them)


class PerTensorScaleParameter(BasevLLMParameter):
    """One scalar per fused shard (``[len(output_partition_sizes)]``): q, k, v or gate, up."""

    def _index(self, shard_id: int | str | None) -> int:
        if isinstance(shard_id, str):
            if shard_id not in QKV_INDEX:
                raise ShardingError(f"PerTensorScaleParameter: unknown shard id {shard_id!r}; expected 'q', 'k' or 'v'")
            shard_id = QKV_INDEX[shard_id]
        if not isinstance(shard_id, int) or not 0 <= shard_id < self.data.numel():
            raise ShardingError(
                f"PerTensorScaleParameter: shard id {shard_id!r} out of range for {self.data.numel()} shards"
            )
        return shard_id

    def _load_into_shard_id(self, loaded_weight: TensorLike, shard_id: int | str | None) -> None:
        check_dtype_kind(self.data, loaded_weight, "PerTensorScaleParameter" + (
            "" if shard_id is None else f" shard {shard_id!r}"))  # (an integer scale would be cast: 1 for 0.0011)
        if shard_id is None:  # one scale for the whole fused tensor: every shard gets it
            value = _scalar(loaded_weight, "PerTensorScaleParameter")
            self.data.copy_(value.expand_as(self.data))
            return
        self.data[self._index(shard_id)] = _scalar(loaded_weight, f"PerTensorScaleParameter shard {shard_id!r}")

    def load_merged_column_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``MergedColumnParallelLinear.weight_loader_v2`` with one part's scalar, stored in the slot of
        ``shard_id``, and by both fused layers' with ``shard_id=None`` for a scale fused on disk, stored in every
        slot. ShardingError for an unknown shard id, WeightLoadError for a tensor of more than one element."""
        self._load_into_shard_id(loaded_weight, kwargs.get("shard_id"))

    def load_qkv_weight(self, loaded_weight: TensorLike, **kwargs: Any) -> None:
        """Called by ``QKVParallelLinear.weight_loader_v2`` with the scalar of ``shard_id`` (``'q'``, ``'k'``, ``'v'``),
        stored in its slot; not sharded (every rank holds it)."""
        self._load_into_shard_id(loaded_weight, kwargs.get("shard_id"))

    def load_column_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``ColumnParallelLinear.weight_loader_v2``: the one scalar, stored in every slot; not sharded."""
        self._load_into_shard_id(loaded_weight, None if self.data.numel() > 1 else 0)

    def load_row_parallel_weight(self, loaded_weight: TensorLike) -> None:
        """Called by ``RowParallelLinear.weight_loader_v2``: the one scalar, stored in every slot; not sharded."""
        self._load_into_shard_id(loaded_weight, None if self.data.numel() > 1 else 0)


def _scalar(loaded_weight: TensorLike, what: str) -> torch.Tensor:
    value = materialize(loaded_weight)
    if value.numel() != 1:
        raise WeightLoadError(f"{what}: expected a scalar (one element), found shape {tuple(value.shape)}")
    return value.reshape(())


def packed_units(offset: int, size: int, factor: int | Fraction, what: str) -> tuple[int, int]:
    """(offset, size) in values → in stored elements holding ``factor`` values each (vLLM's packing arithmetic:
    ``// factor``). A Fraction factor (3-bit values, ``Fraction(32, 3)`` a word) must divide both exactly:
    WeightLoadError naming ``what`` for a shard that would start or end inside a stored element."""
    if not isinstance(factor, int) and any((Fraction(v) / factor).denominator != 1 for v in (offset, size)):
        raise WeightLoadError(
            f"{what}: a shard of {size} values at offset {offset} is not whole stored elements of {factor} values "
            "(packed_factor); every fused part and rank's share must be a multiple of the stored element's values")
    return int(offset // factor), int(size // factor)


class _PackedMixin:
    """``packed_factor`` values along ``packed_dim`` share one stored element (e.g. 8 int4 per int32)."""

    def _init_packing(self, packed_factor: int | Fraction, packed_dim: int) -> None:
        self._packed_factor = packed_factor
        self._packed_dim = packed_dim

    @property
    def packed_dim(self) -> int:
        return self._packed_dim

    @property
    def packed_factor(self) -> int | Fraction:
        return self._packed_factor

    # vLLM spells it both ways; keep the alias plugins ported from vLLM use.
    @property
    def pack_factor(self) -> int | Fraction:
        return self._packed_factor

    def adjust_shard_indexes_for_packing(self, shard_size: int, shard_offset: int) -> tuple[int, int]:
        """vLLM's spelling: (size, offset) in rows → in storage units (``shard_units``; for a layout packed along the
        input dim, unchanged)."""
        offset, size = self.shard_units(shard_offset, shard_size)
        return size, offset


class PackedColumnParameter(_PackedMixin, _ColumnvLLMParameter):
    """A column-sharded parameter packed along its output dim (e.g. AWQ ``qzeros``)."""

    def __init__(self, packed_factor: int | Fraction, packed_dim: int, **kwargs: Any) -> None:
        self._init_packing(packed_factor, packed_dim)
        super().__init__(**kwargs)


class PackedvLLMParameter(_PackedMixin, ModelWeightParameter):
    """A packed weight (e.g. AWQ ``qweight``): column- or row-sharded, packed along ``packed_dim``.

    ``marlin_tile_size`` / ``bitblas_tile_size`` (vLLM's kernel layouts that tile rows) scale
    shard offsets after the packing division, as vLLM does.
    """

    def __init__(self, packed_factor: int | Fraction, packed_dim: int, marlin_tile_size: int | None = None,
                 bitblas_tile_size: int | None = None, **kwargs: Any) -> None:
        self._init_packing(packed_factor, packed_dim)
        self.marlin_tile_size = marlin_tile_size
        self.bitblas_tile_size = bitblas_tile_size
        super().__init__(**kwargs)

    def shard_units(self, shard_offset: int, shard_size: int) -> tuple[int, int]:
        """(offset, size) in output rows → in packed storage units along the output dim, times the Marlin/BitBLAS
        tile where the layout has one."""
        offset, size = super().shard_units(shard_offset, shard_size)
        tile = self.marlin_tile_size or self.bitblas_tile_size
        if tile and self.packed_dim == self.output_dim:
            offset, size = offset * tile, size * tile
        return offset, size



def permute_param_layout_(param: BasevLLMParameter, input_dim: int, output_dim: int,
                          **kwargs: int) -> BasevLLMParameter:
    """Permute ``param`` in place so its input dim is ``input_dim`` and its output dim ``output_dim`` (vLLM's API).

    For kernels that want a known physical layout, e.g. a packed weight as ``{input_dim=0, output_dim=1,
    packed_dim=0}``: ``permute_param_layout_(p, input_dim=0, output_dim=1, packed_dim=0)``. The data is permuted
    (a view; make it contiguous yourself if the kernel needs that) and the dim attributes follow it. A parameter
    that knows only one of its dims must be 2-D (the other is the remaining one). ``packed_dim`` (keyword) is
    checked, not chosen: it must land where asked, or a ValueError says where it lands instead.
    """
    name = type(param).__name__
    ndim = param.data.dim()
    cur_in, cur_out = getattr(param, "input_dim", None), getattr(param, "output_dim", None)
    if cur_in is None and cur_out is None:
        raise ValueError(f"permute_param_layout_: {name} has neither input_dim nor output_dim; nothing says which "
                         "dim is which")
    if cur_in is None or cur_out is None:
        if ndim != 2:
            raise ValueError(f"permute_param_layout_: {name} knows only one of input_dim/output_dim, so it must be "
                             f"2-D; found shape {tuple(param.data.shape)}")
        cur_in = 1 - cur_out if cur_in is None else cur_in
        cur_out = 1 - cur_in if cur_out is None else cur_out
    for what, dim in (("input_dim", input_dim), ("output_dim", output_dim)):
        if not 0 <= dim < ndim:
            raise ValueError(f"permute_param_layout_: {what}={dim} is out of range for {name} of shape "
                             f"{tuple(param.data.shape)}")
    if input_dim == output_dim:
        raise ValueError(f"permute_param_layout_: input_dim and output_dim must differ, both are {input_dim}")
    unknown = set(kwargs) - {"packed_dim"}
    if unknown:
        raise ValueError(f"permute_param_layout_: unknown keyword(s) {sorted(unknown)}; only packed_dim is checked")
    # perm[new position] = old dim: the other dims keep their order around the two placed ones
    perm = [d for d in range(ndim) if d not in (cur_in, cur_out)]
    for new, old in sorted(((input_dim, cur_in), (output_dim, cur_out))):
        perm.insert(new, old)
    new_packed = None
    if "packed_dim" in kwargs:
        old_packed = getattr(param, "packed_dim", None)
        if old_packed is None:
            raise ValueError(f"permute_param_layout_: packed_dim={kwargs['packed_dim']} asked of {name}, which is "
                             "not packed")
        new_packed = perm.index(old_packed)
        if new_packed != kwargs["packed_dim"]:
            raise ValueError(f"permute_param_layout_: {name}'s packed dim (now {old_packed}) lands at "
                             f"{new_packed} in this layout, not at packed_dim={kwargs['packed_dim']}")
    param.data = param.data.permute(*perm)
    if hasattr(param, "_input_dim"):
        param._input_dim = input_dim
    if hasattr(param, "_output_dim"):
        param._output_dim = output_dim
    if hasattr(param, "_packed_dim"):
        param._packed_dim = perm.index(param._packed_dim) if new_packed is None else new_packed
    return param
