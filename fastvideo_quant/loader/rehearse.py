"""Calling weight loaders: the rehearsal of every load into ``meta`` twins of the parameters (so a failure is
reported with all the others before anything is written), the overflow check of a narrowing float cast, and the
call itself (a layer's ``weight_loader``, or a whole copy for a persistent buffer)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from fastvideo_quant.errors import CheckpointShapeError, CheckpointValueError, PluginError
from fastvideo_quant.lazy import LazyTensor, TensorLike, materialize
from fastvideo_quant.loader.diagnose import WHOLE_SHAPE, order_hint
from fastvideo_quant.loader.files import lazy_slice
from fastvideo_quant.loader.targets import leaf_name
from fastvideo_quant.parameter import copy_checked, is_packed
from fastvideo_quant.processing import (
    kind,
)


def default_weight_loader(param: torch.nn.Parameter, loaded_weight: TensorLike) -> None:
    """Copy a whole tensor into a parameter that has no ``weight_loader`` (shape-checked)."""
    copy_checked(param.data, loaded_weight, "parameter", is_packed(param))


def call_loader(param: torch.nn.Parameter, tensor: TensorLike, shard_id: object,
                 owner: torch.nn.Module | None = None, target: str = "parameter") -> None:
    if not isinstance(param, torch.nn.Parameter):
        # A persistent buffer: copied whole (shape and dtype kind checked), never through a layer's weight_loader
        # (target_for gives buffers no shard id; every rank holds the whole buffer).
        copy_checked(param, tensor, f"{target} (persistent buffer)")
        return
    loader = getattr(param, "weight_loader", None)
    # default_weight_loader copies whole tensors: no fused shard to place, no rank's slice to take
    if loader is None and (shard_id is not None or getattr(owner, "tp_size", 1) > 1):
        raise PluginError(_no_loader_message(owner, shard_id, target))
    if loader is None:
        loader = lambda p, t: copy_checked(p.data, t, target, is_packed(p))  # noqa: E731 - default_weight_loader
    if shard_id is None:
        loader(param, tensor)
    else:
        loader(param, tensor, shard_id)


def _no_loader_message(owner: torch.nn.Module | None, shard_id: object, target: str = "parameter") -> str:
    """Why a parameter without ``weight_loader`` cannot take a fused layer's shard, naming the method's plugin; or,
    for the bias (which the layer itself gives its loader), that the parameter lost its attributes on the way."""
    from fastvideo_quant.layers.base import LinearBase
    from fastvideo_quant.plugins.manager import describe_method_owner

    what = (f"place shard {shard_id!r} of this fused layer" if shard_id is not None else
            f"take this rank's slice of it over the layer's {owner.tp_size} tensor-parallel ranks")
    if isinstance(owner, LinearBase) and leaf_name(target) == "bias":
        return (f"the parameter has no weight_loader, so nothing can {what}. The layer gives its bias one when it is "
                "built, so the parameter lost its attributes on the way here: torch.multiprocessing (and any copy "
                "that keeps only a plain Parameter's data) drops them. Build the model in the process that loads it "
                "(docs/guide/loading.md, 'Between processes'), or hand over a model already loaded")
    config = getattr(owner, "quant_config", None)
    method = type(getattr(owner, "quant_method", None)).__name__
    whose = f" of {describe_method_owner(type(config))}" if config is not None else ""
    return (f"the parameter has no weight_loader, so nothing can {what}; "
            f"{method}.create_weights{whose} must give every parameter the layer's weight_loader "
            "(set_weight_attrs(param, extra_weight_attrs), or a fastvideo_quant.parameter class built with "
            "weight_loader=extra_weight_attrs['weight_loader'])")


def _meta_twin(param: torch.nn.Parameter | torch.Tensor) -> torch.Tensor:
    """A parameter of the same class and attributes whose data is a meta tensor (shapes only); for a buffer, a meta
    tensor of its shape and dtype."""
    data = torch.empty_like(param.data, device="meta")
    if not isinstance(param, torch.nn.Parameter):
        return data
    cls = type(param)
    twin = torch.nn.Parameter(data, requires_grad=False) if cls is torch.nn.Parameter else cls.__new__(cls, data)
    twin.__dict__.update(param.__dict__)
    return twin


#: Checkpoint tensors up to this many elements are read for real in the rehearsal (format codes,
#: scalar scales: loaders may look at their values); larger ones are rehearsed by shape only, unless the parameter
#: they load into has ``rehearse_with_data = True`` (a plugin's loader that checks values it converts).
REHEARSE_WITH_DATA_NUMEL = 4096


def rehearse_loads(plan, params, owners, mapping) -> list[str]:
    """Run every load into meta twins of the parameters; collect every failure without touching the model.

    Any exception is a problem to report: a loader that cannot be rehearsed cannot be
    trusted not to fail half-way through the real load either.
    """
    problems = []
    twins = {target: _meta_twin(params[target]) for _, target, _, _, _ in plan}
    for name, target, shard_id, handle, file in plan:
        tensor = lazy_slice(handle, name, shape_only=True)
        if tensor.numel() <= REHEARSE_WITH_DATA_NUMEL or getattr(params[target], "rehearse_with_data", False):
            tensor = lazy_slice(handle, name)
        try:
            with _standing_in(owners[target], leaf_name(target), twins[target]):
                call_loader(twins[target], tensor, shard_id, owners[target], target)
        except Exception as exc:  # noqa: BLE001 - every failure is reported with the others
            hint = ("" if isinstance(exc, CheckpointValueError)
                    else order_hint(name, tensor, params[target], owners[target], shard_id, mapping))
            said = _unnamed(str(exc), target, shard_id)
            if hint.startswith(WHOLE_SHAPE) and hint[len(WHOLE_SHAPE):] in said:
                hint = ""  # (the loader's message states the same whole shape: said once)
            if isinstance(exc, CheckpointShapeError) and hint.startswith(WHOLE_SHAPE):
                # One sentence, not two: the whole tensor's shape for a parameter (in place of its size along one
                # dim, or its shard's shape), a buffer's own message (unsharded: its shape is the whole one).
                parameter = isinstance(params[target], torch.nn.Parameter)
                detail = hint[len(WHOLE_SHAPE):] if parameter else f"{kind(exc)}{said}"
            else:
                detail = f"{kind(exc)}{said}{hint}"
            problems.append(f"tensor {name!r} ({file.name}) → {target!r}"
                            + (f" shard {shard_id!r}" if shard_id is not None else "") + f": {detail}")
    return problems


def _unnamed(message: str, target: str, shard_id: Any) -> str:
    """A weight loader's ``message`` without what the line reporting it already says: the parameter's name and shard
    that a layer's loader puts first (``blocks.0.qkv_proj.scales shard 'q': ...``, for a direct call of the loader), and
    the shard again after the parameter class (``GroupQuantScaleParameter shard 'q'``)."""
    shard = f" shard {shard_id!r}" if shard_id is not None else ""
    message = message.removeprefix(f"{target}{shard}: ")
    head, sep, rest = message.partition(shard) if shard else ("", "", "")
    if sep and head.isidentifier() and rest.startswith((":", " (")):  # (the parameter class: one word)
        message = head + rest
    return message


@contextlib.contextmanager
def _standing_in(owner: torch.nn.Module, leaf: str, twin: torch.nn.Parameter):
    """Register ``twin`` as ``owner.<leaf>`` for one rehearsed load: the layer finds it among its parameters, so
    its messages name the parameter (``qkv_proj.weight``, not ``qkv_proj.parameter``). Always put back."""
    params = owner._parameters
    if params.get(leaf) is None:
        yield
        return
    real = params[leaf]
    params[leaf] = twin
    try:
        yield
    finally:
        params[leaf] = real


def _narrowing(source: torch.dtype | None, target: torch.dtype) -> bool:
    """Whether casting floats of ``source`` to ``target`` can overflow (bf16/float32 → float16); float8 targets
    are left to their loaders, which check their own range."""
    if source is None or not source.is_floating_point or not target.is_floating_point:
        return False
    if target.itemsize == 1:
        return False
    return torch.finfo(target).max < torch.finfo(source).max


def overflows(plan, params, owners) -> list[str]:
    """Checkpoint tensors with finite values that become inf when cast to their parameter's narrower float dtype
    (a bf16 bias of 1e6 in a float16 model): the checkpoint is fine, the model's dtype cannot hold it — or, for a
    parameter its method keeps in a dtype of its own (AWQ's float16 scales in a bfloat16 model), the method cannot.
    Read only for such casts; reported with the other problems, before anything is written."""
    problems = []
    for name, target, _, handle, file in plan:
        dtype = params[target].dtype
        tensor = lazy_slice(handle, name, shape_only=True)
        if not _narrowing(tensor.dtype, dtype) or tensor.numel() == 0:
            continue
        count, largest = _overflow(lazy_slice(handle, name), dtype)
        if not count:
            continue
        found = (f"tensor {name!r} ({file.name}) → {target!r}: {count} finite value(s) of the checkpoint's "
                 f"{tensor.dtype} become inf when cast to the parameter's {dtype} (largest magnitude {largest:.4g}; "
                 f"{dtype}'s max is {torch.finfo(dtype).max:.6g}).")
        model_dtype = getattr(owners.get(target), "params_dtype", None)
        if isinstance(model_dtype, torch.dtype) and model_dtype != dtype:  # (the method's dtype, not the model's)
            method = getattr(getattr(owners[target], "quant_method", None), "__class__", type(None)).__name__
            problems.append(f"{found} {method} keeps this parameter in {dtype} whatever the model's dtype (the layer's "
                            f"is {model_dtype}): its kernels read {dtype}, so building the model in another dtype does "
                            "not help. The checkpoint's values are out of the method's range: re-quantize the layer "
                            "(or the tensor was written corrupt)")
            continue
        problems.append(
            f"{found} The checkpoint is not corrupt: the model's dtype cannot hold its values; build the model in "
            "torch.bfloat16 or torch.float32 (params_dtype), or rescale the tensor"
        )
    return problems


#: Elements read at once by the overflow check (bounds its memory on large tensors).
OVERFLOW_CHUNK_NUMEL = 1 << 22


def _overflow(tensor: LazyTensor, dtype: torch.dtype) -> tuple[int, float]:
    """(finite values becoming inf when cast to ``dtype``, the largest finite magnitude), read in row chunks."""
    if tensor.dim() == 0:
        chunks = [materialize(tensor).reshape(1)]
    else:
        rows = max(1, OVERFLOW_CHUNK_NUMEL // max(1, tensor.numel() // tensor.shape[0]))
        chunks = (materialize(tensor.narrow(0, i, min(rows, tensor.shape[0] - i))) for i in range(0, tensor.shape[0], rows))
    count, largest = 0, 0.0
    for chunk in chunks:
        values = chunk.float()
        finite = torch.isfinite(values)
        count += int((finite & torch.isinf(values.to(dtype))).sum())
        if finite.any():
            largest = max(largest, values[finite].abs().max().item())
    return count, largest
