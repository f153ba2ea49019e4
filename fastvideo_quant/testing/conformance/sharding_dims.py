"""A parameter's ``output_dim`` / ``input_dim``, checked against the checkpoint tensors before the suite computes with
them (the per-rank shape, the parts fused on disk): a dim the parameter lacks, both the same dim, fused parts that
differ along another dim, or fused parts that differ where the parameter has no ``output_dim`` is a ``[contract:
create_weights]`` failure naming the parameter, its dims and shape and the layer's partition sizes, not an IndexError
or a torch.cat error raised in the suite's own code (which the verdict would take for the plugin's exception)."""

from __future__ import annotations

import torch

from fastvideo_quant.testing.conformance.subject import Subject


def sharding_dims_problem(param: torch.Tensor, parts: list[torch.Tensor]) -> str | None:
    """Why ``param``'s ``output_dim`` / ``input_dim`` cannot be the dims its checkpoint ``parts`` (one unsharded
    tensor per checkpoint module) are sharded and fused along: a dim it does not have, both the same dim, or parts
    that differ along another dim than ``output_dim`` (each part is its module's output rows, stacked along it);
    None when they can. Checked before the suite computes with them, so such a parameter is a failure naming it,
    not an IndexError or a torch.cat error in the suite's own code."""
    dims = {n: getattr(param, n, None) for n in ("output_dim", "input_dim")}
    shapes = [list(t.shape) for t in parts]
    if len({t.dim() for t in parts}) > 1:
        return f"quantize_weight writes tensors of different ranks for the parts of this layer: {shapes}"
    ndim = min(param.dim(), parts[0].dim())
    for name, d in dims.items():
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim):
            of = f"its shape {list(param.shape)}" if param.dim() == ndim else \
                f"the checkpoint tensors quantize_weight writes for it, {shapes}"
            return f"{name}={d!r} is not a dim of {of}"
    out, inp = dims["output_dim"], dims["input_dim"]
    if out is not None and inp is not None and out % ndim == inp % ndim:
        return (f"output_dim and input_dim are the same dim {out}, but the output rows and the input features are "
                "two different dims")
    differ = [i for i in range(ndim) if len({t.shape[i] for t in parts}) > 1] if len(parts) > 1 else []
    if out is None and differ:
        return (f"quantize_weight writes {shapes} for the parts of this fused layer (each one checkpoint module's "
                f"output rows), which differ along dim {differ[0]}, but the parameter has no output_dim, so the "
                "loader copies each part whole into it instead of into the part's rows")
    if out is not None and any(i != out % ndim for i in differ):
        return (f"quantize_weight writes {shapes} for the parts of this fused layer (each one checkpoint "
                f"module's output rows), which differ along dim {differ[0]}, not along output_dim={out}, so they "
                "cannot be stacked along output_dim")
    return None


def sharding_dims_failure(subject: Subject, kind: str, layer: torch.nn.Module, suffix: str, problem: str,
                          tp: int = 1):
    """The ``[contract: create_weights]`` failure for :func:`sharding_dims_problem`: the parameter, its dims and
    shape, and the layer's partition sizes (with the parameter's dims that have them)."""
    param = dict(layer.named_parameters(recurse=False))[suffix]
    shape = list(param.shape)
    sizes = list(getattr(layer, "output_partition_sizes", None) or [])
    cols = getattr(layer, "input_size_per_partition", None)

    def dims_of(n: object) -> str:
        found = [i for i, size in enumerate(shape) if size == n]
        return f" (dim {' and '.join(map(str, found))} of {shape})" if found else ""

    partitions = (f"output_partition_sizes {sizes}, sum {sum(sizes)}{dims_of(sum(sizes))}" if sizes else "") + (
        f", input_size_per_partition {cols}{dims_of(cols)}" if cols is not None else "")
    method = type(getattr(layer, "quant_method", None)).__name__
    return subject.fail(
        "create_weights", subject.describe(kind, tp=tp),
        f"{method}.create_weights of {subject.owner()} registers parameter {suffix!r} {shape} with "
        f"output_dim={getattr(param, 'output_dim', None)}, input_dim={getattr(param, 'input_dim', None)}: {problem}; "
        f"the layer's partitions: {partitions.lstrip(', ')}",
        "set output_dim to the parameter's dim holding the output rows (0 for an [out, in] weight and for a "
        "per-channel scale [out]) and input_dim to the dim holding the input features (1 for an [out, in] weight; "
        "none for a per-channel scale): layers shard and fuse the checkpoint tensors along them",
    )
