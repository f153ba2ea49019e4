"""Contract: ``create_weights`` builds loadable parameters of the declared per-rank shapes for every layer class."""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.report import fmt_shapes
from fastvideo_quant.testing.conformance.sharding_dims import sharding_dims_failure, sharding_dims_problem
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject


def expected_shape(param: torch.Tensor, ckpt_tensors: list[torch.Tensor], kind: str, tp: int,
                   num_kv_heads: int | None = None) -> tuple[int, ...] | None:
    """The per-rank shape a parameter must have to hold ``ckpt_tensors`` (its parts), or None if not checkable.
    Its dims must be ones the parts have (:func:`~.sharding_dims.sharding_dims_problem` is None).

    Unsharded: the parts concatenated along ``output_dim``. Column layers divide
    ``output_dim`` by ``tp``; the row layer divides ``input_dim``. In a QKV layer with fewer KV heads than ranks,
    each rank holds one whole KV head (replicated over ``tp / num_kv_heads`` ranks), so k and v divide by
    ``num_kv_heads`` instead.
    """
    out_dim, in_dim = getattr(param, "output_dim", None), getattr(param, "input_dim", None)
    if len(ckpt_tensors) > 1 and out_dim is None:
        return None  # one scalar per shard: its layout is the parameter class's business
    if tp > 1 and kind == "row" and in_dim is not None:
        full = list(ckpt_tensors[0].shape)
        full[in_dim] //= tp
        return tuple(full)
    if tp == 1 or kind not in ("column", "merged", "qkv") or out_dim is None:
        return tuple(torch.cat(ckpt_tensors, dim=out_dim).shape) if len(ckpt_tensors) > 1 else tuple(
            ckpt_tensors[0].shape)
    kv_ranks = min(tp, num_kv_heads or tp)
    divisors = [tp if kind != "qkv" or i == 0 else kv_ranks for i in range(len(ckpt_tensors))]
    full = list(ckpt_tensors[0].shape)
    full[out_dim] = sum(t.shape[out_dim] // d for t, d in zip(ckpt_tensors, divisors))
    return tuple(full)


def _unsplittable(param: torch.Tensor, parts: list[torch.Tensor], kind: str, tp: int,
                  num_kv_heads: int | None) -> str | None:
    """Why the checkpoint ``parts`` cannot be split over ``tp`` ranks along the dim the layer shards (a size that is
    not a multiple of the rank count: this rank would need a fraction of it), or None."""
    if tp == 1:
        return None
    out_dim, in_dim = getattr(param, "output_dim", None), getattr(param, "input_dim", None)
    if kind == "row" and in_dim is not None:
        size = parts[0].shape[in_dim] if parts[0].dim() > in_dim else None
        if size is not None and size % tp:
            return f"whose size {size} along input_dim={in_dim} cannot be split over the row layer's {tp} ranks"
    if kind in ("column", "merged", "qkv") and out_dim is not None:
        kv_ranks = min(tp, num_kv_heads or tp)
        for i, t in enumerate(parts):
            divisor = tp if kind != "qkv" or i == 0 else kv_ranks
            if t.dim() > out_dim and t.shape[out_dim] % divisor:
                return (f"whose part {i} has size {t.shape[out_dim]} along output_dim={out_dim}, which cannot be "
                        f"split over {divisor} ranks")
    return None


def check_param_shapes(subject: Subject, kind: str, layer: torch.nn.Module, ckpt: ck.LayerCheckpoint, tp: int) -> None:
    """Each parameter's shape equals the per-rank shape of what ``quantize_weight`` writes for it."""
    params = dict(layer.named_parameters(recurse=False))
    for suffix in ckpt.suffixes():
        if suffix not in params:
            continue  # reported by checkpoint.entries with the full list
        param = params[suffix]
        parts = [p.tensors[suffix] for p in ckpt.parts]
        problem = sharding_dims_problem(param, parts)
        if problem:
            raise sharding_dims_failure(subject, kind, layer, suffix, problem, tp=tp)
        uneven = _unsplittable(param, parts, kind, tp, subject.num_kv_heads)
        if uneven:
            raise subject.fail(
                "create_weights: per-rank shape", subject.describe(kind, tp=tp),
                f"parameter {suffix!r} (shape {list(param.shape)}): quantize_weight writes "
                f"{[list(t.shape) for t in parts]} for it, {uneven}",
                "what every input feature shares (one group, a per-channel scale) is replicated in row layers: "
                "register it as a ChannelQuantScaleParameter (output_dim only); blocks and groups along a sharded dim "
                "must be whole on every rank (refuse other TP sizes in create_weights, naming those that work)",
            )
        want = expected_shape(param, parts, kind, tp, subject.num_kv_heads)
        got = tuple(param.shape)
        if want is None or got == want or (param.numel() == 1 and parts[0].numel() == 1):
            continue
        raise subject.fail(
            "create_weights: per-rank shape", subject.describe(kind, tp=tp),
            f"parameter {suffix!r} has shape {list(got)}, but quantize_weight writes "
            f"{[list(t.shape) for t in parts]} for it, so this rank needs {list(want)} "
            f"(output_dim={getattr(param, 'output_dim', None)}, input_dim={getattr(param, 'input_dim', None)})",
            "size parameters from input_size_per_partition and output_partition_sizes (not the unsharded sizes) "
            "and set output_dim/input_dim to the dims the layer shards",
        )


def check_create_weights(subject: Subject, kind: str, bias: bool) -> None:
    """Parameters have weight loaders, the bias is right, shapes match the checkpoint, v2 is honoured."""
    from fastvideo_quant.plugins import get_registry

    dtype = subject.main_dtype()
    where = subject.describe(kind, bias=bias, dtype=dtype)
    with ck.loader_spy() as calls:
        layer = subject.build_layer(kind, bias=bias, dtype=dtype)
    params = dict(layer.named_parameters(recurse=False))
    if not [n for n in params if n != "bias"]:
        raise subject.fail("create_weights", where, "registered no parameters",
                           "register the weights with layer.register_parameter(name, param)")
    plain = {n: t for n, t in vars(layer).items() if isinstance(t, torch.Tensor)}
    if plain:
        raise subject.fail("create_weights: parameters registered", where,
                           f"{type(layer.quant_method).__name__}.create_weights of {subject.owner()} set "
                           f"{fmt_shapes(plain)} as plain tensor attributes of the layer, not registered parameters "
                           "or buffers: no checkpoint tensor loads into them (the loaders see only parameters) and "
                           "layer.to(device) leaves them behind", ck.register_fix(layer, each=True))
    if not all(callable(getattr(param, "weight_loader", None)) for param in params.values()):
        raise ck.no_loader_failure(subject, layer, where)
    _check_bias(subject, layer, kind, bias, dtype, where)
    _check_shard_problems(subject, layer, where)
    ckpt = ck.make_checkpoint(subject, kind)
    check_param_shapes(subject, kind, layer, ckpt, tp=1)
    if not get_registry().by_name[subject.method].weight_loader_v2 or kind == "replicated":
        return
    # (Plain parameters under weight_loader_v2 never get here: building the layer refuses them, with that contract.)
    ck.load(layer, ck.entries(layer, ckpt, subject, with_bias=bias), subject, kind)
    _check_v2_calls(subject, layer, calls, where)


def _check_shard_problems(subject: Subject, layer, where: str) -> None:
    """The config's ``shard_problems`` allows the shard its method just built (TP=1, the whole layer): the layers list
    TP sizes by it, so a hook refusing what ``create_weights`` accepts would advise against sizes that work."""
    from fastvideo_quant.layers.linear import rank_sizes

    config = layer.quant_config
    sizes = rank_sizes(layer, 1)
    if config is None or sizes is None:
        return
    problems = config.shard_problems(*sizes)
    if problems:
        raise subject.fail("create_weights: shard_problems", where,
                           f"{type(config).__name__}.shard_problems{tuple(sizes)} of {subject.owner()} refuses the shard "
                           f"its create_weights built: {problems}",
                           "return [] for every shard create_weights accepts (the layers list the TP sizes whose "
                           "shards it allows; it must refuse only what the method cannot hold)")


def _check_bias(subject: Subject, layer, kind: str, bias: bool, dtype: torch.dtype, where: str) -> None:
    if not bias:
        if getattr(layer, "bias", None) is not None:
            raise subject.fail("create_weights: bias", where, "bias=False but the layer has a bias",
                               "do not create a 'bias' parameter in create_weights; the layer owns the bias")
        return
    rows = subject.output_size if kind in ("replicated", "row") else subject.output_rows(kind)
    if layer.bias is None or tuple(layer.bias.shape) != (rows,) or layer.bias.dtype != dtype:
        found = None if layer.bias is None else (list(layer.bias.shape), layer.bias.dtype)
        raise subject.fail("create_weights: bias", where, f"bias is {found}, expected [{rows}] {dtype}",
                           "do not create or replace 'bias' in create_weights; the layer owns the bias")


def _check_v2_calls(subject: Subject, layer, calls: list[tuple[str, int]], where: str) -> None:
    by_param = {id(p): n for n, p in layer.named_parameters(recurse=False) if n != "bias"}
    v1 = sorted({by_param[i] for name, i in calls if name == "weight_loader" and i in by_param})
    v2 = {by_param[i] for name, i in calls if name == "weight_loader_v2" and i in by_param}
    not_v2 = sorted(set(by_param.values()) - v2)
    if v1 or not_v2:
        raise subject.fail("weight_loader_v2", where,
                           f"registered with weight_loader_v2=True, but {v1 or not_v2} loaded through "
                           f"{'the v1 weight_loader' if v1 else 'no layer weight_loader_v2 call'}",
                           "set weight_loader=extra_weight_attrs['weight_loader'] on each parameter (the layer "
                           "passes its weight_loader_v2 there); do not substitute your own loader")


class CreateWeightsTests(MethodFixtures):
    """``create_weights`` for every layer class, with and without bias."""

    @pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_create_weights(self, fvq_runnable: Subject, kind: str, bias: bool) -> None:
        check_create_weights(fvq_runnable, kind, bias)

