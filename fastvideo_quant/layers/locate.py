"""Where an entry of a layer's parameter came from: the checkpoint tensor's name and the index in it.

A check of the loaded weights (``validate_loaded_weights``) finds a bad value at an index of the layer's parameter on
this rank, but the user fixes the checkpoint, where a fused layer's rows come from several tensors (``q_proj``,
``k_proj``, ``v_proj``) and a tensor-parallel rank holds a slice of each. This undoes what the weight loaders did,
with the geometry they use (the fused layer's ``_shard_geometry`` and ``_fused_shards``, the parameter's storage
units), so it agrees with them by construction:

* replicated layers: the same index in ``<prefix>.<name>``;
* column layers: ``+ tp_rank * rows per rank`` along the parameter's ``output_dim`` (in its storage units: packed
  words, scale blocks); row layers the same along ``input_dim`` (parameters without one are whole on every rank);
* fused layers: the part the entry lies in, from the layer's parts and ``packed_modules_mapping`` (``qkv_proj`` →
  ``q_proj``/``k_proj``/``v_proj``), the offset within the part plus the rank's slice of it (``tp_rank //
  num_kv_head_replicas`` for KV rows, which several ranks hold); one scalar per part (a per-tensor scale) is that
  part's scalar. A tensor fused on disk (``qkv_proj.weight``) is located in it instead. Which of the two the
  checkpoint held is read from what ``load_checkpoint`` recorded on the layer (``_fvq_loaded_shards``).

Tensor names are the layer's ``prefix`` (its path in the model, the vLLM convention the loader relies on) and the
parameter's name. When it cannot be told — a layer without a prefix, a parameter without layout attributes, a fused
layer loaded by hand (not through ``load_checkpoint``), a layer that is not one of ours — the answer is None, never a
guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.base import LinearBase, storage_units
from fastvideo_quant.layers.column import ColumnParallelLinear, _FusedColumnLinear
from fastvideo_quant.layers.replicated import ReplicatedLinear
from fastvideo_quant.layers.row import RowParallelLinear
from fastvideo_quant.parameter import PerTensorScaleParameter
from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING

__all__ = ["checkpoint_location", "fused_part"]

Index = tuple[int, ...]


@dataclass(frozen=True)
class _Where:
    part: int | None = None  # the fused part (its position) the entry belongs to; None: not fused, or unknown
    tensor: str | None = None  # the checkpoint tensor; None when it cannot be told
    index: Index = ()


def checkpoint_location(layer: torch.nn.Module, name: str, index: Any) -> tuple[str, Index] | None:
    """``(checkpoint tensor name, index in it)`` of entry ``index`` of parameter ``layer.<name>`` on this rank, as the
    layer's weight loaders read it; the index is ``()`` for a scalar. None when it cannot be told."""
    where = _locate(layer, name, index)
    return None if where is None or where.tensor is None else (where.tensor, where.index)


def fused_part(layer: torch.nn.Module, name: str, index: Any) -> int | str | None:
    """The shard id (``'k'``, ``1``) of the fused part holding entry ``index`` of ``layer.<name>``; None for a layer
    that is not fused or an entry no part owns alone. Needs no record of how the checkpoint stored the part."""
    where = _locate(layer, name, index)
    return None if where is None or where.part is None else layer.checkpoint_shard_id(where.part)


def _locate(layer: torch.nn.Module, name: str, index: Any) -> _Where | None:
    param = getattr(layer, "_parameters", {}).get(name)
    if not isinstance(layer, LinearBase) or not isinstance(param, torch.Tensor):
        return None
    index = tuple(int(i) for i in index)
    if len(index) != param.dim() or any(not 0 <= i < s for i, s in zip(index, param.shape, strict=True)):
        return None
    if getattr(param, "marlin_tile_size", None) or getattr(param, "bitblas_tile_size", None):
        return None  # kernel layouts that tile rows: storage order is not the checkpoint's
    if isinstance(layer, _FusedColumnLinear):
        return _in_fused(layer, name, param, index)
    own = _loaded_from(layer, name, None) or (f"{layer.prefix}.{name}" if layer.prefix else None)
    if isinstance(param, PerTensorScaleParameter) and not isinstance(layer, ReplicatedLinear):
        return _Where(None, own, ())  # column/row layers load one scalar into every entry
    if isinstance(layer, ColumnParallelLinear):
        return _Where(None, own, _shifted(index, getattr(param, "output_dim", None), layer.tp_rank, param))
    if isinstance(layer, RowParallelLinear):
        return _Where(None, own, _shifted(index, getattr(param, "input_dim", None), layer.tp_rank, param))
    if isinstance(layer, ReplicatedLinear):
        return _Where(None, own, _whole(index, param))
    return None


def _whole(index: Index, param: torch.Tensor) -> Index:
    """A parameter copied whole: the same index (none for a single element, which a checkpoint may store 0-d)."""
    return () if param.numel() == 1 else index


def _shifted(index: Index, dim: int | None, rank: int, param: torch.Tensor) -> Index:
    """The rank's slice along ``dim`` starts at ``rank * size`` (in storage units, as the loaders narrow)."""
    if dim is None:
        return _whole(index, param)
    return index[:dim] + (index[dim] + rank * param.shape[dim],) + index[dim + 1:]


def _in_fused(layer: _FusedColumnLinear, name: str, param: torch.Tensor, index: Index) -> _Where | None:
    """An entry of a Merged/QKV layer's parameter: its part, and where it is in the part's (or the fused) tensor."""
    n = len(layer.output_partition_sizes)
    output_dim = getattr(param, "output_dim", None)
    scalars = isinstance(param, PerTensorScaleParameter) or getattr(param, "needs_scalar_to_array", False)
    if scalars and param.dim() == 1 and param.shape[0] == n:
        part, in_part, in_fused = index[0], (), ()  # one scalar per part; a fused tensor's one scalar fills all
    elif output_dim is not None:
        found = _row_in_part(layer, param, output_dim, index[output_dim])
        if found is None:
            return None
        part, row, fused_row = found
        in_part = index[:output_dim] + (row,) + index[output_dim + 1:]
        in_fused = None if fused_row is None else index[:output_dim] + (fused_row,) + index[output_dim + 1:]
    else:  # copied whole by each part's load: the last one wins, so only a tensor fused on disk tells
        part, in_part, in_fused = None, None, _whole(index, param)
    fused = _stored_fused(layer, name, part)
    if fused and in_fused is not None:
        whole = _loaded_from(layer, name, None) or (f"{layer.prefix}.{name}" if layer.prefix else None)
        return _Where(part, whole, in_fused) if whole else _Where(part)
    if fused is False and in_part is not None:
        shard = layer.checkpoint_shard_id(part)
        return _Where(part, _loaded_from(layer, name, shard) or _part_tensor(layer, name, part, n), in_part)
    return _Where(part)


def _loaded_from(layer: torch.nn.Module, name: str, shard_id: Any) -> str | None:
    """The checkpoint tensor ``load_checkpoint`` wrote into ``layer.<name>`` (shard ``shard_id``; None: whole), as
    it recorded it; None for a layer loaded by hand. Exact whatever the model's name mapping."""
    return getattr(layer, "_fvq_loaded_from", {}).get(name, {}).get(shard_id)


def _row_in_part(layer: _FusedColumnLinear, param: torch.Tensor, dim: int,
                 unit: int) -> tuple[int, int, int | None] | None:
    """``(part, index in the part's tensor, index in the tensor fused on disk)`` of storage unit ``unit`` along the
    output dim: the same (offset, size, rank) and unit conversion as the fused layers' loaders. The fused index is
    None where those loaders could not split a fused tensor (block scales of parts that are not whole blocks)."""
    for part in range(len(layer.output_partition_sizes)):
        shard_id = layer.checkpoint_shard_id(part)
        offset, size, rank, _ = layer._shard_geometry(shard_id)
        start, units = storage_units(param, dim, offset, size)
        if start <= unit < start + units:
            row = rank * units + unit - start
            fused_start = _fused_start(layer, param, dim, shard_id)
            return part, row, None if fused_start is None else fused_start + row
    return None


def _fused_start(layer: _FusedColumnLinear, param: torch.Tensor, dim: int, shard_id: Any) -> int | None:
    """Where part ``shard_id`` starts in a tensor fused on disk, in storage units (as ``_load_fused`` splits it)."""
    for sid, offset, size in layer._fused_shards():
        if sid == shard_id:
            try:
                return storage_units(param, dim, offset, size)[0]
            except WeightLoadError:
                return None
    return None


def _stored_fused(layer: torch.nn.Module, name: str, part: int | None) -> bool | None:
    """Whether ``load_checkpoint`` wrote ``name`` from a tensor fused on disk (True) or from its parts (False); None
    when nothing was recorded (a layer loaded by hand) or both were, for this part."""
    written = getattr(layer, "_fvq_loaded_shards", {}).get(name)
    if not written:
        return None
    whole = None in written
    own = part is not None and layer.checkpoint_shard_id(part) in written
    if whole and own:
        return None
    return whole


def _part_tensor(layer: LinearBase, name: str, part: int | None, parts: int) -> str | None:
    """``blocks.0.attn.k_proj.<name>`` for part 1 of ``blocks.0.attn.qkv_proj``: the quant config's
    ``packed_modules_mapping`` (the default one without a config) names the parts; None when it does not."""
    if part is None or not layer.prefix:
        return None
    base, _, leaf = layer.prefix.rpartition(".")
    mapping = getattr(layer.quant_config, "packed_modules_mapping", None)
    modules = (DEFAULT_PACKED_MODULES_MAPPING if mapping is None else mapping).get(leaf)
    if not modules or len(modules) != parts:
        return None
    return f"{base}.{modules[part]}.{name}" if base else f"{modules[part]}.{name}"
