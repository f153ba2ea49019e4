"""Column-parallel layers: ColumnParallelLinear and the fused Merged/QKV layers that load shard by shard."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter

from fastvideo_quant._tp_autograd import copy_to_tp_region, gather_from_tp_region, recording
from fastvideo_quant.distributed import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tp_sizes_text,
)
from fastvideo_quant.errors import ConfigError, ShardingError, WeightLoadError
from fastvideo_quant.layers.base import (
    LinearBase,
    adjust_scalar_to_fused_array,
    divide_with_advice,
    flag,
    heads_split,
    method_tp_advice,
    positive_int,
    shard_sizes,
    storage_units,
)
from fastvideo_quant.lazy import TensorLike, materialize, narrow
from fastvideo_quant.parameter import (
    BasevLLMParameter,
    PerTensorScaleParameter,
    check_full_size,
    copy_checked,
    is_packed,
)
from fastvideo_quant.processing import record_written
from fastvideo_quant.quantization.base import QuantizationConfig


def _part_sizes(sizes: Any, layer: str) -> list[int]:
    """The output sizes of a fused layer's parts, checked: a non-empty list of positive ints."""
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise ConfigError(f"{layer}: output_sizes must be a non-empty list of positive ints (one per fused part), "
                          f"found {sizes!r}")
    return [positive_int(s, f"output_sizes[{i}]", layer) for i, s in enumerate(sizes)]


def _divide_parts(sizes: list[int], tp: int, layer: str, quant_config: QuantizationConfig | None = None,
                  input_size: int = 0) -> list[int]:
    """Each part's per-rank size; ShardingError naming the parts that do not divide and the TP sizes that do (and,
    of those, the ones the method's alignment allows)."""
    bad = [f"output_sizes[{i}]={s}" for i, s in enumerate(sizes) if s % tp]
    if bad:
        raise ShardingError(
            f"{layer}: {', '.join(bad)} not divisible by the tensor-parallel size {tp}; every fused part is split "
            f"over the ranks. {tp_sizes_text(*sizes)}"
            + method_tp_advice(quant_config, lambda t: shard_sizes(t, input_size, sizes))
        )
    return [s // tp for s in sizes]


def _heads_per_rank(heads: int, kv_heads: int, tp: int, layer: str, quant_config: QuantizationConfig | None = None,
                    head_size: int = 1, hidden_size: int = 0) -> tuple[int, int, int]:
    """:func:`heads_split`, or a ShardingError listing the TP sizes that work (and, of those, the ones the method's
    alignment allows)."""
    split = heads_split(heads, kv_heads, tp)
    if split is not None:
        return split
    works = [t for t in range(1, heads + 1) if heads_split(heads, kv_heads, t) is not None]

    raise ShardingError(
        f"{layer} total_num_heads={heads}, total_num_kv_heads={kv_heads}: cannot be split over tensor-parallel size "
        f"{tp}. The query heads must divide evenly over the ranks, and the KV heads must too or be replicated "
        f"(the TP size a multiple of the KV heads). TP sizes that work: {works}"
        + method_tp_advice(quant_config, lambda t: shard_sizes(t, hidden_size, [], heads=(heads, kv_heads, head_size)),
                           limit=heads)
    )


class ColumnParallelLinear(LinearBase):
    """``Y = X A + b`` with ``A`` split by columns (output dim) over TP ranks."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        output_sizes: list[int] | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        super().__init__(input_size, output_size, skip_bias_add, params_dtype, quant_config, prefix,
                         return_bias=return_bias)
        layer = f"{type(self).__name__} {prefix!r}"
        self.gather_output = flag(gather_output, "gather_output", layer)
        self.input_size_per_partition = self.input_size
        parts = getattr(self, "output_sizes", None)  # fused subclasses set theirs first
        if parts is None and output_sizes is not None:
            parts = self.output_sizes = _part_sizes(output_sizes, layer)
        if parts is not None and sum(parts) != self.output_size:
            raise ConfigError(f"{layer}: output_sizes {parts} sum to {sum(parts)}, but output_size is {self.output_size}; "
                              "the fused parts must add up to the layer's output size")
        self.output_partition_sizes = None if parts is None else _divide_parts(parts, self.tp_size, layer, quant_config,
                                                                                self.input_size)
        self.output_size_per_partition = divide_with_advice(
            self.output_size, self.tp_size, f"{layer} output size", quant_config,
            lambda t: shard_sizes(t, self.input_size, [self.output_size]))
        if self.output_partition_sizes is None:
            self.output_partition_sizes = [self.output_size_per_partition]
        self._create_weights(self.input_size_per_partition, self.output_partition_sizes)
        self._create_bias(self.output_size_per_partition, bias, {"output_dim": 0})

    def weight_loader(self, param: Parameter, loaded_weight: TensorLike) -> None:
        """v1 loader: ``loaded_weight`` is the full checkpoint tensor; this rank's ``1/tp_size`` of it along the
        parameter's ``output_dim`` is copied in, or all of it when the parameter has no ``output_dim`` (a per-tensor
        scale). Delegates to :meth:`LinearBase._load_along`."""
        self._check_loaded(param, loaded_weight)
        self._load_along(param, loaded_weight, getattr(param, "output_dim", None),
                         ("output_dim", self.output_size_per_partition))

    def weight_loader_v2(self, param: BasevLLMParameter, loaded_weight: TensorLike) -> None:
        """v2 loader: the parameter's class shards the full checkpoint tensor, in
        :meth:`~fastvideo_quant.parameter.BasevLLMParameter.load_column_parallel_weight` (along its ``output_dim``, or
        whole for a class without one). Delegates to :meth:`LinearBase._load_v2`."""
        self._check_loaded(param, loaded_weight)
        self._load_v2(param, loaded_weight, param.load_column_parallel_weight)

    def forward(self, input_: torch.Tensor) -> tuple[torch.Tensor, Parameter | None] | torch.Tensor:
        """``(output, output_bias)`` as FastVideo's and vLLM's (``input_``: their argument's name); the output alone
        with ``return_bias=False`` (vLLM's)."""
        x, autocast = self._autocast(input_)
        self._check_width(x, self.input_size)
        if self.tp_size > 1 and recording(x):  # each rank's input gradient is its shard's part: summed in backward
            x = copy_to_tp_region(x, self._collective_group("all-reduce (of the input gradient)"))
        bias = self.bias if not self.skip_bias_add else None
        output = self._run_method(x, bias, autocast)
        output_bias = self.bias if self.skip_bias_add else None
        if self.gather_output and self.tp_size > 1:
            output = self._gather(output)
            if output_bias is not None:  # the whole bias, to add to the whole output
                output_bias = self._gather(output_bias)
        return (output, output_bias) if self.return_bias else output

    #: Whether each rank holds its slice of every part (the fused layers' loaders, by shard id or split from a tensor
    #: fused on disk), not a contiguous block of rows; a plain column layer with ``output_sizes`` loads a contiguous
    #: block, as vLLM's does (the sizes only tell ``create_weights`` the parts).
    _ranks_hold_each_part = False

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's output columns gathered over the layer's TP group into the TP=1 layout: rank-major where each
        rank holds a contiguous block of rows; for fused parts (gate, up), each part's shards put back together in part
        order. (A plain column layer with ``output_sizes`` was reordered as fused parts though it loads a contiguous
        block: its gathered output was scrambled at TP > 1.) While autograd records, the gradient of the gathered
        tensor goes back as this rank's slice (the reorder is plain torch ops, which autograd inverts)."""
        group = self._collective_group("all-gather")
        if recording(x):
            gathered = gather_from_tp_region(x, self.tp_rank, self.tp_size, group)
        else:
            gathered = tensor_model_parallel_all_gather(x, dim=-1, group=group)
        if len(self.output_partition_sizes) == 1 or not self._ranks_hold_each_part:
            return gathered
        per_rank = [chunk.split(self.output_partition_sizes, dim=-1)
                    for chunk in gathered.split(self.output_size_per_partition, dim=-1)]
        return torch.cat([shards[part] for part in range(len(self.output_partition_sizes)) for shards in per_rank],
                         dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.input_size}, output_features={self.output_size_per_partition}, "
            f"bias={self.bias is not None}, tp_size={self.tp_size}, gather_output={self.gather_output}"
        )


class _FusedColumnLinear(ColumnParallelLinear):
    """Shared loading for layers that fuse several checkpoint tensors along the output dim.

    Subclasses give ``_shard_geometry(shard_id)`` → (per-rank offset, per-rank size,
    rank of the checkpoint slice, unsharded size) and ``_fused_shards()`` → the
    (shard_id, offset, size) of each part of a tensor fused on disk.
    """

    _ranks_hold_each_part = True

    def _normalise_shard_id(self, shard_id: Any) -> Any:
        raise NotImplementedError

    def _record(self, param: Parameter, loaded_shard_id: Any) -> None:
        """Record the part written (None: all), for :func:`~fastvideo_quant.processing.unwritten_parts`; not for the
        loader's rehearsal into a meta twin."""
        if param.is_meta:
            return
        leaf = next((n for n, p in self.named_parameters(recurse=False) if p is param), None)
        if leaf is not None:
            shard_id = None if loaded_shard_id is None else self._normalise_shard_id(loaded_shard_id)
            record_written(self, leaf, shard_id)

    def weight_loader(self, param: Parameter, loaded_weight: TensorLike, loaded_shard_id: Any = None) -> None:
        """v1 loader of one fused part, or of a tensor fused on disk (each part written is recorded on the layer: a
        parameter left with parts never written is refused when the layer is processed).

        With ``loaded_shard_id`` (Merged: ``0, 1, ...``; QKV: ``'q'``, ``'k'``, ``'v'``), ``loaded_weight`` is that
        part's full checkpoint tensor: this rank's slice of it along the parameter's ``output_dim`` goes into the
        part's rows of the parameter (a KV head replicated over ranks: the slice of rank ``tp_rank //
        num_kv_head_replicas``); without ``output_dim``, a per-part scalar array (``needs_scalar_to_array``) takes
        it in the part's slot, another parameter all of it. With None, ``loaded_weight`` holds every part: along
        ``output_dim`` it is split into the parts, each loaded as above; without, a per-part scalar array takes the
        one scalar in every slot, another parameter all of it.
        """
        self._check_loaded(param, loaded_weight)
        self._load_v1(param, loaded_weight, loaded_shard_id)
        self._record(param, loaded_shard_id)

    def _load_v1(self, param: Parameter, loaded_weight: TensorLike, loaded_shard_id: Any) -> None:
        output_dim = getattr(param, "output_dim", None)
        if loaded_shard_id is None:
            if output_dim is None:
                if getattr(param, "needs_scalar_to_array", False):
                    for i in range(param.data.shape[0]):
                        dst, src = adjust_scalar_to_fused_array(param.data, materialize(loaded_weight), i)
                        dst.copy_(src)
                    return
                copy_checked(param.data, loaded_weight, self._what(param), is_packed(param))
                return
            self._load_fused(param, loaded_weight, output_dim, self._load_v1)
            return
        shard_id = self._normalise_shard_id(loaded_shard_id)
        what = self._what(param, loaded_shard_id)
        param_data = param.data
        if output_dim is not None:
            offset, size, rank, full = self._shard_geometry(shard_id)
            offset, size = storage_units(param, output_dim, offset, size)
            full = storage_units(param, output_dim, 0, full)[1]
            check_full_size(loaded_weight, output_dim, full, what)
            param_data = param_data.narrow(output_dim, offset, size)
            loaded_weight = narrow(loaded_weight, output_dim, rank * size, size)
        elif getattr(param, "needs_scalar_to_array", False):
            param_data, loaded_weight = adjust_scalar_to_fused_array(param_data, materialize(loaded_weight), shard_id)
        else:  # (the part whole into every part's rows: a parameter sized by the parts wanted output_dim)
            full = self._shard_geometry(shard_id)[3]  # (the part's rows in the checkpoint)
            error = self._missing_dim_error(param, loaded_weight, "output_dim", sum(self.output_partition_sizes), full,
                                            what)
            if error is not None:
                raise error
        copy_checked(param_data, loaded_weight, what, is_packed(param))

    def _load_fused(self, param: Parameter, loaded_weight: TensorLike, output_dim: int, loader) -> None:
        """Split a tensor fused on disk into its shards and load each."""
        shards = self._fused_shards()
        units = [(shard_id, *storage_units(param, output_dim, offset, size)) for shard_id, offset, size in shards]
        total = sum(size for _, _, size in units)
        self._refuse_one_block_grid(param, loaded_weight, output_dim, total, shards)
        check_full_size(loaded_weight, output_dim, total, self._what(param) + " (fused on disk)")
        for shard_id, offset, size in units:
            loader(param, narrow(loaded_weight, output_dim, offset, size), shard_id)

    def _refuse_one_block_grid(self, param: Parameter, loaded_weight: TensorLike, output_dim: int, total: int,
                               shards: list[tuple[Any, int, int]]) -> None:
        """WeightLoadError saying why, for block scales stored fused as one grid over all the fused rows where the
        layer keeps a grid per part: a part starting inside a block (fp8's [200, 56] at bn=128) has no block rows of
        its own in the stored grid, which the size check alone reported as 'expected 3 rows, found 2'."""
        block = getattr(param, "block_size", None)
        found = tuple(loaded_weight.shape)
        if block is None or len(found) <= output_dim or found[output_dim] == total:
            return
        bn, rows = block[0], sum(size for _, _, size in shards)
        inside = [(shard_id, offset) for shard_id, offset, _ in shards if offset % bn]
        if found[output_dim] != -(-rows // bn) or not inside:
            return
        shard_id, offset = inside[0]
        raise WeightLoadError(
            f"{self._what(param)} (fused on disk): the checkpoint holds one grid of {found[output_dim]} block rows over "
            f"the {rows} fused rows (bn={bn}), but the layer keeps a grid per part ({total} block rows): part "
            f"{shard_id!r} starts at row {offset}, inside a block, so the stored grid has no rows of its own for it. "
            f"Store the parts as separate tensors (one grid each), or use part sizes that are multiples of {bn}")

    def weight_loader_v2(self, param: BasevLLMParameter, loaded_weight: TensorLike, loaded_shard_id: Any = None) -> None:
        """v2 loader of one fused part, or of a tensor fused on disk; the parameter's class shards it.

        With ``loaded_shard_id``, ``loaded_weight`` is that part's full checkpoint tensor, handed with the part's
        per-rank offset and size in the parameter to ``load_merged_column_weight`` (Merged) or ``load_qkv_weight``
        (QKV, with the KV-head replica count as ``num_heads``), errors prefixed with the parameter and part. With
        None: a :class:`~fastvideo_quant.parameter.PerTensorScaleParameter` takes the one scalar in every slot, a
        parameter without ``output_dim`` all of the tensor (``load_merged_column_weight`` without a part, both
        layers), and one with ``output_dim`` has the tensor split into the parts, each loaded as above. Each part
        written is recorded, as by :meth:`weight_loader`.
        """
        self._check_loaded(param, loaded_weight)
        self._load_v2(param, loaded_weight, loaded_shard_id)
        self._record(param, loaded_shard_id)

    def _load_v2(self, param: BasevLLMParameter, loaded_weight: TensorLike, loaded_shard_id: Any) -> None:
        if loaded_shard_id is None:
            if isinstance(param, PerTensorScaleParameter):
                param.load_merged_column_weight(loaded_weight=loaded_weight, shard_id=None)
                return
            if getattr(param, "output_dim", None) is None:  # not sharded along the output: one whole tensor
                param.load_merged_column_weight(loaded_weight=loaded_weight)
                return
            self._load_fused(param, loaded_weight, param.output_dim, self._load_v2)
            return
        shard_id = self._normalise_shard_id(loaded_shard_id)
        offset, size, _, _ = self._shard_geometry(shard_id)
        with self._naming(param, loaded_shard_id):
            self._load_v2_shard(param, loaded_weight, shard_id, offset, size)


class MergedColumnParallelLinear(_FusedColumnLinear):
    """Several column-parallel layers (e.g. gate and up) fused along the output dim; shard ids 0, 1, ..."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = True,
        gather_output: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        layer = f"MergedColumnParallelLinear {prefix!r}"
        self.output_sizes = _part_sizes(output_sizes, layer)
        _divide_parts(self.output_sizes, get_tensor_model_parallel_world_size(), layer,  # before the sum's message
                      quant_config, input_size)
        super().__init__(input_size, sum(self.output_sizes), bias, gather_output, skip_bias_add,
                         params_dtype, quant_config, prefix=prefix, return_bias=return_bias)

    def _normalise_shard_id(self, shard_id: Any) -> int:
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ShardingError(
                f"{type(self).__name__} {self.prefix!r}: unknown shard id {shard_id!r}; "
                f"expected an int in [0, {len(self.output_sizes)}) or None for a fused tensor"
            )
        return shard_id

    def _shard_geometry(self, shard_id: int) -> tuple[int, int, int, int]:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        return offset, size, self.tp_rank, self.output_sizes[shard_id]

    def _fused_shards(self) -> list[tuple[int, int, int]]:
        return [(i, sum(self.output_sizes[:i]), s) for i, s in enumerate(self.output_sizes)]

    def _load_v2_shard(self, param, loaded_weight, shard_id, offset, size) -> None:
        param.load_merged_column_weight(loaded_weight=loaded_weight, shard_id=shard_id,
                                        shard_offset=offset, shard_size=size)


class QKVParallelLinear(_FusedColumnLinear):
    """The fused q, k, v projection; KV heads are replicated when ``tp_size > total_num_kv_heads``."""

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int | None = None,
        bias: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
    ) -> None:
        layer = f"QKVParallelLinear {prefix!r}"
        self.hidden_size = positive_int(hidden_size, "hidden_size", layer)
        self.head_size = head_size = positive_int(head_size, "head_size", layer)
        heads = self.total_num_heads = positive_int(total_num_heads, "total_num_heads", layer)
        kv = total_num_heads if total_num_kv_heads is None else total_num_kv_heads
        kv = self.total_num_kv_heads = positive_int(kv, "total_num_kv_heads", layer)
        if heads % kv:
            raise ConfigError(
                f"{layer}: total_num_heads={heads} is not a multiple of total_num_kv_heads={kv}; grouped-query "
                f"attention shares each KV head among the same number of query heads. KV head counts that fit "
                f"{heads} query heads: {[d for d in range(1, heads + 1) if heads % d == 0]}"
            )
        tp = get_tensor_model_parallel_world_size()
        self.num_heads, self.num_kv_heads, self.num_kv_head_replicas = _heads_per_rank(
            heads, kv, tp, layer, quant_config, head_size, self.hidden_size)
        self.output_sizes = [
            self.num_heads * head_size * tp,
            self.num_kv_heads * head_size * tp,
            self.num_kv_heads * head_size * tp,
        ]
        output_size = sum(self.output_sizes)
        super().__init__(hidden_size, output_size, bias, False, skip_bias_add, params_dtype, quant_config, prefix=prefix,
                         return_bias=return_bias)

    def checkpoint_shard_id(self, index: int) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 3:
            raise ShardingError(
                f"QKVParallelLinear {self.prefix!r}: no shard at position {index!r}; the layer has 3 shards, 'q', 'k', "
                "'v' at positions 0, 1, 2 (packed_modules_mapping lists one checkpoint module per shard, in that order)"
            )
        return "qkv"[index]

    def _normalise_shard_id(self, shard_id: Any) -> str:
        if shard_id not in ("q", "k", "v"):
            raise ShardingError(
                f"QKVParallelLinear {self.prefix!r}: unknown shard id {shard_id!r}; "
                "expected 'q', 'k', 'v', or None for a fused tensor"
            )
        return shard_id

    def _shard_geometry(self, shard_id: str) -> tuple[int, int, int, int]:
        q = self.num_heads * self.head_size
        kv = self.num_kv_heads * self.head_size
        offset = {"q": 0, "k": q, "v": q + kv}[shard_id]
        size = q if shard_id == "q" else kv
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.num_kv_head_replicas
        full = (self.total_num_heads if shard_id == "q" else self.total_num_kv_heads) * self.head_size
        return offset, size, rank, full

    def _fused_shards(self) -> list[tuple[str, int, int]]:
        q = self.total_num_heads * self.head_size
        kv = self.total_num_kv_heads * self.head_size
        return [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)]

    def _load_v2_shard(self, param, loaded_weight, shard_id, offset, size) -> None:
        param.load_qkv_weight(loaded_weight=loaded_weight, shard_id=shard_id, shard_offset=offset,
                              shard_size=size, num_heads=self.num_kv_head_replicas)
