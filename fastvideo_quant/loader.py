"""Load safetensors checkpoints into models built from our layers.

* Files: ``model.safetensors``, sharded ``*.safetensors`` with
  ``model.safetensors.index.json``, or any ``*.safetensors`` in the directory. Never pickle.
* Names: a checkpoint tensor ``...q_proj.weight`` goes to ``...qkv_proj.weight`` with
  shard id ``'q'`` through ``packed_modules_mapping`` (``gate_proj/up_proj`` → ``gate_up_proj``
  with 0/1); the shard id comes from the layer (:meth:`LinearBase.checkpoint_shard_id`).
* Validation first: missing and unexpected names are found before anything is copied,
  and every load is rehearsed on ``meta`` tensors (shapes only), so a mis-shaped tensor is
  reported, with the others, before the model is touched. Nothing is half-loaded.
* Each TP rank reads only its slices: loaders get a :class:`~fastvideo_quant.lazy.LazyTensor`.
* Finally ``process_weights_after_loading`` runs on every layer with a quant method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from fastvideo_quant.errors import CheckpointError, FastVideoQuantError
from fastvideo_quant.lazy import LazyTensor, TensorLike, materialize
from fastvideo_quant.parameter import copy_checked
from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING

#: safetensors dtype strings (safetensors Dtype) → torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclasses.dataclass
class LoadReport:
    """What a load did: tensors read per parameter, and the files read."""

    loaded: dict[str, list[object]]
    files: list[Path]


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint (a file, or a directory with or without an index)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; only safetensors checkpoints are loaded (never pickle)")
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = sorted({path / f for f in weight_map.values()})
        absent = [str(f.name) for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} names files that are not in {path}: {absent}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {pickles}: pickle checkpoints are not loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"no *.safetensors files in {path}{hint}")
    return files


def _target_for(name: str, params: dict[str, torch.nn.Parameter], owners: dict[str, torch.nn.Module],
                reverse: dict[str, tuple[str, int]]) -> tuple[str, object] | None:
    if name in params:
        return name, None
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in reverse:
            fused, index = reverse[part]
            candidate = ".".join(parts[:i] + [fused] + parts[i + 1 :])
            # Only a fused layer takes a shard id; elsewhere the name is simply not the model's.
            if candidate in params and _is_fused(owners[candidate]):
                return candidate, owners[candidate].checkpoint_shard_id(index)
    return None


def _is_fused(module: torch.nn.Module) -> bool:
    from fastvideo_quant.layers.column import _FusedColumnLinear  # Merged and QKV: the layers that take shard ids

    return isinstance(module, _FusedColumnLinear)


def default_weight_loader(param: torch.nn.Parameter, loaded_weight: TensorLike) -> None:
    """Copy a whole tensor into a parameter that has no ``weight_loader`` (shape-checked)."""
    copy_checked(param.data, loaded_weight, "parameter")


def _meta_twin(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """A parameter of the same class and attributes whose data is a meta tensor (shapes only)."""
    data = torch.empty_like(param.data, device="meta")
    cls = type(param)
    twin = torch.nn.Parameter(data, requires_grad=False) if cls is torch.nn.Parameter else cls.__new__(cls, data)
    twin.__dict__.update(param.__dict__)
    return twin


def _call_loader(param: torch.nn.Parameter, tensor: TensorLike, shard_id: object) -> None:
    loader = getattr(param, "weight_loader", default_weight_loader)
    if shard_id is None:
        loader(param, tensor)
    else:
        loader(param, tensor, shard_id)


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    packed_modules_mapping: dict[str, list[str]] | None = None,
    strict: bool = True,
    process_weights: bool = True,
) -> LoadReport:
    """Load a safetensors checkpoint into ``model``; CheckpointError lists every problem at once.

    :param packed_modules_mapping: fused module → checkpoint modules; defaults to the
        model's ``packed_modules_mapping`` attribute, else q/k/v → qkv_proj, gate/up → gate_up_proj.
    :param strict: report missing and unexpected tensors as errors (mis-shaped ones always are).
    """
    files = checkpoint_files(path)
    mapping = packed_modules_mapping or getattr(model, "packed_modules_mapping", None) or DEFAULT_PACKED_MODULES_MAPPING
    reverse = {part: (fused, i) for fused, parts in mapping.items() for i, part in enumerate(parts)}
    params = dict(model.named_parameters())
    owners = {n: model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model for n in params}

    with contextlib.ExitStack() as stack:
        handles = [(f, stack.enter_context(safe_open(str(f), framework="pt"))) for f in files]
        plan: list[tuple[str, str, object, object, Path]] = []
        unexpected: list[str] = []
        for file, handle in handles:
            for name in handle.keys():
                target = _target_for(name, params, owners, reverse)
                if target is None:
                    unexpected.append(name)
                else:
                    plan.append((name, target[0], target[1], handle, file))
        problems = _check_names(plan, params, owners, mapping, unexpected, strict)
        problems += _rehearse(plan, params)
        if problems:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit the model ({len(problems)} problem(s); nothing was loaded):\n  "
                + "\n  ".join(problems)
            )
        loaded: dict[str, list[object]] = {}
        for name, target, shard_id, handle, _ in plan:
            _call_loader(params[target], lazy_slice(handle, name), shard_id)
            loaded.setdefault(target, []).append(shard_id)
    if process_weights:
        process_weights_after_loading(model)
    return LoadReport(loaded, files)


def lazy_slice(handle, name: str, shape_only: bool = False) -> LazyTensor:
    """A LazyTensor over tensor ``name`` of an open safetensors file (``shape_only``: reads nothing, ever)."""
    sl = handle.get_slice(name)
    shape = tuple(sl.get_shape())
    dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
    source = _MetaSource(dtype) if shape_only else sl
    return LazyTensor(source, shape, name, dtype)


class _MetaSource:
    """Stands in for a safetensors slice in the rehearsal: indexing yields a meta tensor of that shape."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype or torch.float32

    def __getitem__(self, index) -> torch.Tensor:
        if index is Ellipsis:
            return torch.empty((), dtype=self.dtype, device="meta")
        return torch.empty(tuple(s.stop - s.start for s in index), dtype=self.dtype, device="meta")


def _check_names(plan, params, owners, mapping, unexpected, strict) -> list[str]:
    if not strict:
        return []
    problems = [f"unexpected tensor {n!r}: no parameter of the model takes it" for n in sorted(unexpected)]
    seen: dict[str, set] = {}
    for _, target, shard_id, _, _ in plan:
        seen.setdefault(target, set()).add(shard_id)
    for name, param in params.items():
        got = seen.get(name)
        if got is None and getattr(param, "checkpoint_optional", False):
            continue  # the method fills it when the checkpoint has none (e.g. a default format code)
        leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        parts = mapping.get(leaf)
        if got is None:
            problems.append(f"missing tensor for parameter {name!r}" + (f" (or its parts {parts})" if parts else ""))
        elif parts and None not in got and len(got) < len(parts):
            owner = owners[name]
            want = [owner.checkpoint_shard_id(i) for i in range(len(parts))]  # (shard ids come from fused layers)
            absent = [parts[i] for i, s in enumerate(want) if s not in got]
            problems.append(f"missing parts {absent} of fused parameter {name!r}")
    return problems


#: Checkpoint tensors up to this many elements are read for real in the rehearsal (format codes,
#: scalar scales: loaders may look at their values); larger ones are rehearsed by shape only.
REHEARSE_WITH_DATA_NUMEL = 4096


def _rehearse(plan, params) -> list[str]:
    """Run every load into meta twins of the parameters; collect every failure without touching the model.

    Any exception is a problem to report: a loader that cannot be rehearsed cannot be
    trusted not to fail half-way through the real load either.
    """
    problems = []
    twins = {target: _meta_twin(params[target]) for _, target, _, _, _ in plan}
    for name, target, shard_id, handle, file in plan:
        tensor = lazy_slice(handle, name, shape_only=True)
        if tensor.numel() <= REHEARSE_WITH_DATA_NUMEL:
            tensor = lazy_slice(handle, name)
        try:
            _call_loader(twins[target], tensor, shard_id)
        except Exception as exc:  # noqa: BLE001 - every failure is reported with the others
            kind = "" if isinstance(exc, FastVideoQuantError) else f"{type(exc).__name__}: "
            problems.append(f"tensor {name!r} ({file.name}) → {target!r}"
                            + (f" shard {shard_id!r}" if shard_id is not None else "") + f": {kind}{exc}")
    return problems


def process_weights_after_loading(model: torch.nn.Module) -> None:
    """Call each layer's ``quant_method.process_weights_after_loading`` once (layers already processed are skipped)."""
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is None or getattr(module, "_fvq_weights_processed", False):
            continue
        method.process_weights_after_loading(module)
        module._fvq_weights_processed = True


def read_tensor(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """One tensor from a checkpoint (for tools and tests)."""
    for f in checkpoint_files(path):
        with safe_open(str(f), framework="pt") as handle:
            if name in handle.keys():
                return materialize(lazy_slice(handle, name))
    raise CheckpointError(f"tensor {name!r} is not in checkpoint {str(path)!r}")
