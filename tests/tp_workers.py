"""Functions run on spawned gloo ranks by the core tests, and a reference v1/v2 test method.

They live in an importable module because spawned processes import them by name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn import Parameter
from toy_method import ToyConfig

from fastvideo_quant.parameter import ModelWeightParameter, PackedvLLMParameter, PerTensorScaleParameter
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization.base import LinearMethodBase, QuantizationConfig, Tolerance

DT = torch.float64


# --- a method with packed int32 and per-shard scalar parameters, in v1 and v2 flavours ---------
class PackedRefV1Method(LinearMethodBase):
    """Plain Parameters sharded by attributes (vLLM's v1 style)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        out = sum(output_partition_sizes)
        loader = extra["weight_loader"]
        weight = Parameter(torch.empty(out, input_size_per_partition, dtype=params_dtype), requires_grad=False)
        weight.input_dim, weight.output_dim, weight.weight_loader = 1, 0, loader
        packed = Parameter(torch.empty(out // 8, input_size_per_partition, dtype=torch.int32), requires_grad=False)
        packed.input_dim, packed.output_dim, packed.packed_dim, packed.pack_factor = 1, 0, 0, 8
        packed.weight_loader = loader
        scale = Parameter(torch.empty(len(output_partition_sizes), dtype=torch.float32), requires_grad=False)
        scale.needs_scalar_to_array, scale.weight_loader = True, loader
        layer.register_parameter("weight", weight)
        layer.register_parameter("packed", packed)
        layer.register_parameter("scale", scale)

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight, bias)


class PackedRefV2Method(PackedRefV1Method):
    """The same tensors as parameter classes that shard themselves (v2)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        out = sum(output_partition_sizes)
        loader = extra["weight_loader"]
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(out, input_size_per_partition, dtype=params_dtype), input_dim=1, output_dim=0,
            weight_loader=loader))
        layer.register_parameter("packed", PackedvLLMParameter(
            data=torch.empty(out // 8, input_size_per_partition, dtype=torch.int32), packed_factor=8, packed_dim=0,
            input_dim=1, output_dim=0, weight_loader=loader))
        layer.register_parameter("scale", PerTensorScaleParameter(
            data=torch.empty(len(output_partition_sizes), dtype=torch.float32), weight_loader=loader))


class _RefConfig(QuantizationConfig):
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=1e-12)
    method_cls: ClassVar[type] = PackedRefV1Method

    @classmethod
    def get_supported_act_dtypes(cls):
        return [DT, torch.float32]

    @classmethod
    def get_min_capability(cls):
        return 0

    @classmethod
    def cpu_support(cls):
        return "reference"

    @staticmethod
    def get_config_filenames():
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls()

    def to_dict(self):
        return {"quant_method": self.get_name()}

    def get_quant_method(self, layer, prefix):
        return self.method_cls()


class RefV1Config(_RefConfig):
    @classmethod
    def get_name(cls):
        return "test_ref_v1"


class RefV2Config(_RefConfig):
    method_cls = PackedRefV2Method

    @classmethod
    def get_name(cls):
        return "test_ref_v2"


class RefPlugin:
    @hookimpl
    def register_quantization_methods(self, register):
        register(RefV1Config, PackedRefV1Method, weight_loader_v2=False)
        register(RefV2Config, PackedRefV2Method, weight_loader_v2=True)


# --- helpers -------------------------------------------------------------------------------
def seeded(*shape: int, seed: int, dtype=DT) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _run(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``layer(x)`` on this rank's device (its GPU under NCCL), results back on the CPU for the parent."""
    from fastvideo_quant.testing.distributed import rank_device

    dev = rank_device()
    out, bias = layer.to(dev)(x.to(dev))
    return out.cpu(), None if bias is None else bias.cpu()


def layer_outputs(rank: int, world: int, tp_for_kv: int) -> dict[str, Any]:
    """Build every layer class at TP=world, load full tensors, return outputs for the parent to check."""
    from fastvideo_quant.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )

    K, N, tokens = 16, 24, 5
    x = seeded(2, tokens, K, seed=1)
    w, b = seeded(N, K, seed=2), seeded(N, seed=3)
    res: dict[str, Any] = {}

    rep = ReplicatedLinear(K, N, params_dtype=DT)
    rep.weight.weight_loader(rep.weight, w)
    rep.bias.weight_loader(rep.bias, b)
    res["replicated"] = _run(rep, x)[0]

    for gather in (False, True):
        for skip in (False, True):
            col = ColumnParallelLinear(K, N, gather_output=gather, skip_bias_add=skip, params_dtype=DT)
            col.weight.weight_loader(col.weight, w)
            col.bias.weight_loader(col.bias, b)
            out, ob = _run(col, x)
            res[f"column_g{int(gather)}_s{int(skip)}"] = (out, ob)

    sizes = [8 * world, 16 * world]
    wg, wu = seeded(sizes[0], K, seed=4), seeded(sizes[1], K, seed=5)
    bg, bu = seeded(sizes[0], seed=6), seeded(sizes[1], seed=7)
    merged = MergedColumnParallelLinear(K, sizes, params_dtype=DT)
    merged.weight.weight_loader(merged.weight, wg, 0)
    merged.weight.weight_loader(merged.weight, wu, 1)
    merged.bias.weight_loader(merged.bias, bg, 0)
    merged.bias.weight_loader(merged.bias, bu, 1)
    res["merged"] = _run(merged, x)[0]

    head, heads, kv = 4, 8, tp_for_kv
    wq, wk, wv = seeded(heads * head, K, seed=8), seeded(kv * head, K, seed=9), seeded(kv * head, K, seed=10)
    qkv = QKVParallelLinear(K, head, heads, kv, bias=False, params_dtype=DT)
    for sid, t in zip("qkv", (wq, wk, wv)):
        qkv.weight.weight_loader(qkv.weight, t, sid)
    res["qkv"] = _run(qkv, x)[0]
    res["qkv_meta"] = (qkv.num_heads, qkv.num_kv_heads, qkv.num_kv_head_replicas)

    for parallel in (True, False):
        row = RowParallelLinear(N, K, input_is_parallel=parallel, params_dtype=DT)
        wr, br = seeded(K, N, seed=11), seeded(K, seed=12)
        row.weight.weight_loader(row.weight, wr)
        row.bias.weight_loader(row.bias, br)
        xr = seeded(3, N, seed=13)
        if parallel:
            xr = xr.chunk(world, dim=-1)[rank]
        res[f"row_p{int(parallel)}"] = _run(row, xr)[0]
    row_nr = RowParallelLinear(N, K, reduce_results=False, skip_bias_add=True, params_dtype=DT)
    row_nr.weight.weight_loader(row_nr.weight, seeded(K, N, seed=11))
    row_nr.bias.weight_loader(row_nr.bias, seeded(K, seed=12))
    out, ob = _run(row_nr, seeded(3, N, seed=13).chunk(world, dim=-1)[rank])
    res["row_noreduce"] = (out, ob)
    if world > 1:  # sizes that do not divide over the real group are refused, naming the layer
        from fastvideo_quant.errors import ShardingError

        for build in (lambda: ColumnParallelLinear(K, 4 * world + 1, prefix="blk.col"),
                      lambda: RowParallelLinear(4 * world + 1, K, prefix="blk.row"),
                      lambda: QKVParallelLinear(K, 4, world + 1, 1, prefix="blk.qkv")):
            try:
                build()
                res.setdefault("sharding_errors", []).append(None)
            except ShardingError as exc:
                res.setdefault("sharding_errors", []).append(str(exc))
    return res


def loader_agreement(rank: int, world: int) -> dict[str, Any]:
    """v1 and v2 loaders, per-shard vs fused-on-disk, on packed int32 and scalar-per-shard params."""
    from fastvideo_quant.plugins import register_plugin, unregister_plugin

    register_plugin(RefPlugin(), name="tp-ref")
    try:
        return _loader_agreement(world)
    finally:
        unregister_plugin("tp-ref")  # at world 1 this runs in the test process itself


def _loader_agreement(world: int) -> dict[str, Any]:
    from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear

    K = 8
    out: dict[str, Any] = {}
    parts = {
        "merged": ([16 * world, 32 * world], [0, 1]),
        "qkv": ([8 * 4, 8 * 2, 8 * 2], ["q", "k", "v"]),
    }
    for kind, (sizes, ids) in parts.items():
        tensors = [
            {
                "weight": seeded(s, K, seed=20 + i),
                "packed": torch.randint(-2**31, 2**31 - 1, (s // 8, K), generator=torch.Generator().manual_seed(30 + i),
                                        dtype=torch.int32),
                "scale": torch.tensor(float(i + 1) / 7, dtype=torch.float32),
            }
            for i, s in enumerate(sizes)
        ]
        for cfg in ("RefV1Config", "RefV2Config"):
            for fused in (False, True):
                qc = globals()[cfg]()
                if kind == "merged":
                    layer = MergedColumnParallelLinear(K, sizes, bias=False, params_dtype=DT, quant_config=qc)
                else:
                    layer = QKVParallelLinear(K, 8, 4, 2, bias=False, params_dtype=DT, quant_config=qc)
                for name in ("weight", "packed", "scale"):
                    p = getattr(layer, name)
                    if fused and name != "scale":
                        p.weight_loader(p, torch.cat([t[name] for t in tensors], dim=0))
                    else:
                        for sid, t in zip(ids, tensors):
                            p.weight_loader(p, t[name], sid)
                out[(kind, cfg, fused)] = {n: getattr(layer, n).data.clone() for n in ("weight", "packed", "scale")}
                out[(kind, cfg, "v2")] = layer.uses_weight_loader_v2
    return out


def gather_roundtrip(rank: int, world: int, max_examples: int) -> int:
    """Hypothesis on every rank (derandomized, so all ranks draw the same examples): load a full
    checkpoint at each rank of a TP group of size 1, 2 or 4 and gather the shards back."""
    import torch.distributed as dist
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fastvideo_quant.distributed import tp_group
    from fastvideo_quant.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    groups = {1: dist.new_group([0]), 2: dist.new_group([0, 1]), 4: dist.new_group([0, 1, 2, 3])}
    checked = 0

    from fastvideo_quant.testing.distributed import rank_device

    def gather(t: torch.Tensor, dim: int, group) -> torch.Tensor:
        t = t.to(rank_device()).contiguous()  # NCCL gathers GPU tensors only
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return torch.cat(parts, dim=dim).cpu()

    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(tp=st.sampled_from([1, 2, 4]), kind=st.sampled_from(["column", "merged", "qkv", "row"]),
           a=st.integers(1, 3), b=st.integers(1, 3), kv=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
    def prop(tp, kind, a, b, kv, seed):
        nonlocal checked
        if rank >= tp:
            return
        group = groups[tp]
        with tp_group(group):
            K = 4 * a
            if kind == "column":
                full = seeded(4 * b * tp, K, seed=seed)
                layer = ColumnParallelLinear(K, full.shape[0], params_dtype=DT)
                layer.weight.weight_loader(layer.weight, full)
                back = gather(layer.weight.data, 0, group)
            elif kind == "row":
                full = seeded(4 * b, K * tp, seed=seed)
                layer = RowParallelLinear(K * tp, full.shape[0], params_dtype=DT)
                layer.weight.weight_loader(layer.weight, full)
                back = gather(layer.weight.data, 1, group)
            elif kind == "merged":
                sizes = [4 * a * tp, 4 * b * tp]
                parts = [seeded(s, K, seed=seed + i) for i, s in enumerate(sizes)]
                full = torch.cat(parts)
                layer = MergedColumnParallelLinear(K, sizes, params_dtype=DT)
                layer.weight.weight_loader(layer.weight, full)  # fused on disk
                g = gather(layer.weight.data, 0, group)
                # each rank holds [gate_r, up_r]; regroup into [gate, up]
                per = [t.split([s // tp for s in sizes]) for t in g.chunk(tp)]
                back = torch.cat([torch.cat([p[i] for p in per]) for i in range(len(sizes))])
            else:
                head, heads = 2, 4
                wq, wk, wv = (seeded(n * head, K, seed=seed + i) for i, n in enumerate((heads, kv, kv)))
                layer = QKVParallelLinear(K, head, heads, kv, params_dtype=DT)
                for sid, t in zip("qkv", (wq, wk, wv)):
                    layer.weight.weight_loader(layer.weight, t, sid)
                g = gather(layer.weight.data, 0, group)
                nq, nkv, rep = layer.num_heads * head, layer.num_kv_heads * head, layer.num_kv_head_replicas
                per = [t.split([nq, nkv, nkv]) for t in g.chunk(tp)]
                back = torch.cat([torch.cat([p[0] for p in per]),
                                  torch.cat([p[1] for p in per[::rep]]), torch.cat([p[2] for p in per[::rep]])])
                full = torch.cat([wq, wk, wv])
            assert torch.equal(back, full), f"{kind} tp={tp}: gathered shards differ from the checkpoint"
            checked += 1

    prop()
    return checked


def backend_and_device(rank: int, world: int) -> tuple[str, str]:
    """Which backend the group uses and where this rank puts its tensors."""
    import torch.distributed as dist

    from fastvideo_quant.testing.distributed import rank_device

    return dist.get_backend(), str(rank_device())


def construction_errors(rank: int, world: int, cases: list[tuple[str, tuple]]) -> dict[str, str | None]:
    """Build each ``(layer class name, args)`` on this rank; the error each raises (``Type: message``), or None."""
    from fastvideo_quant.layers import linear

    out: dict[str, str | None] = {}
    for name, args in cases:
        try:
            getattr(linear, name)(*args, prefix=f"blk.{name}{args}")
            out[f"{name}{args}"] = None
        except Exception as exc:  # noqa: BLE001 - the test reads the type and the message
            out[f"{name}{args}"] = f"{type(exc).__name__}: {exc}"
    return out


# --- block scales the core's BlockQuantScaleParameter cannot shard (built on real ranks) ------------------------
class BlockRefMethod(LinearMethodBase):
    """Block scales ``[ceil(out / bn), ceil(in / bk)]`` as the core's parameter class lays them out (block 16 x 256)."""

    block = (16, 256)

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        from fastvideo_quant.parameter import BlockQuantScaleParameter

        out, (bn, bk) = sum(output_partition_sizes), self.block
        loader = extra["weight_loader"]
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(out, input_size_per_partition, dtype=params_dtype), input_dim=1, output_dim=0,
            weight_loader=loader))
        layer.register_parameter("weight_scale", BlockQuantScaleParameter(
            data=torch.empty(-(-out // bn), -(-input_size_per_partition // bk)), block_size=self.block, input_dim=1,
            output_dim=0, weight_loader=loader))

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight, bias)


class BlockRefConfig(ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "block-ref"

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, BlockRefMethod)


class BlockRefPlugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(BlockRefConfig, BlockRefMethod, weight_loader_v2=True)


def block_grid_errors(rank: int, world: int) -> dict[str, str | None]:
    """Build block-scaled layers on this rank: the error each raises (``Type: message``), or None."""
    from fastvideo_quant import plugins
    from fastvideo_quant.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear

    plugins.register_plugin(BlockRefPlugin(), name="block-ref")
    config = BlockRefConfig()
    cases = {
        "row 384 (192 a rank: a block of 256 cut)": lambda: RowParallelLinear(384, 32, bias=False, quant_config=config,
                                                                              params_dtype=torch.float32),
        "row 512 (256 a rank)": lambda: RowParallelLinear(512, 32, bias=False, quant_config=config,
                                                          params_dtype=torch.float32),
        "column 48 (24 a rank)": lambda: ColumnParallelLinear(256, 48, bias=False, quant_config=config,
                                                              params_dtype=torch.float32),
        "merged [32, 64] (16, 32 a rank)": lambda: MergedColumnParallelLinear(256, [32, 64], bias=False,
                                                                              quant_config=config,
                                                                              params_dtype=torch.float32),
    }
    out: dict[str, str | None] = {}
    for name, build in cases.items():
        try:
            build()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - the test reads the type and the message
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def row_split_messages(rank: int, world: int) -> list[str]:
    """Load checkpoint tensors that do not split over this row layer's ranks into group scales: the errors."""
    from fastvideo_quant.errors import WeightLoadError
    from fastvideo_quant.parameter import GroupQuantScaleParameter

    out = []
    for groups, stored in ((1, (128, 1)), (4, (128, 4))):  # one group for all inputs; groups of the unsharded input
        param = GroupQuantScaleParameter(data=torch.empty(128, groups), output_dim=0, input_dim=1,
                                         weight_loader=lambda *a: None)
        try:
            param.load_row_parallel_weight(torch.ones(stored))
            out.append("loaded")
        except WeightLoadError as exc:
            out.append(str(exc))
    return out


def column_output_sizes_gather(rank: int, world: int) -> dict[str, Any]:
    """A plain ColumnParallelLinear with output_sizes and gather_output: its gathered output (and, with skip_bias_add,
    its gathered bias) against the float64 product of the whole checkpoint weight."""
    from fastvideo_quant.layers.linear import ColumnParallelLinear

    weight, bias, x = seeded(256, 64, seed=1), seeded(256, seed=2), seeded(5, 64, seed=3)
    out = {}
    for skip in (False, True):
        layer = ColumnParallelLinear(64, 256, bias=True, gather_output=True, skip_bias_add=skip, params_dtype=DT,
                                     output_sizes=[128, 128], prefix="proj")
        layer.weight.weight_loader(layer.weight, weight)
        layer.bias.weight_loader(layer.bias, bias)
        y, b = layer(x)
        got = y + b if skip else y
        out[skip] = {"err": float((got - (x @ weight.T + bias)).norm() / (x @ weight.T + bias).norm()),
                     "bias": None if b is None else float((b - bias).abs().max())}
    return out
