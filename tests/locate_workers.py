"""Rank functions for the checkpoint-location tests (module level, so spawned ranks import them by name).

A checkpoint is written with a distinct value in every entry it can hold one (float and int32 tensors), loaded with
``load_checkpoint`` on a real rank, and every entry of the layer's parameters is looked up with
``checkpoint_location``: the checkpoint must hold the same value there. The checkpoint is built from the shapes of
each method's format, written here by hand — not by the code under test.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

#: layer kind → (attribute / prefix leaf, checkpoint modules of its parts, or None for a layer that is not fused)
KINDS = {
    "replicated": ("proj", None),
    "column": ("up", None),
    "row": ("down", None),
    "merged": ("gate_up_proj", ["gate_proj", "up_proj"]),
    "qkv": ("qkv_proj", ["q_proj", "k_proj", "v_proj"]),
}
METHODS = ("unquantized", "ref_v1", "ref_v2", "int8", "fp8-tensor", "fp8-static", "fp8-channel", "fp8-block",
           "awq-32", "awq-whole")
BLOCK = 8  # fp8 block size [8, 8]
#: Checkpoint tensors whose dtype cannot hold a distinct value per entry: written, not checked.
UNCHECKED = {"int8": {"weight", "weight_format"}, "fp8-tensor": {"weight"}, "fp8-static": {"weight"},
             "fp8-channel": {"weight"}, "fp8-block": {"weight"}}


def register(method: str) -> Any:
    """The quant config for ``method``, its plugin registered in this process."""
    from fastvideo_quant.plugins import ensure_registered, register_plugin
    from fastvideo_quant.plugins.manager import get_registry

    if method == "unquantized":
        return None
    if method.startswith("ref"):
        import tp_workers

        if "test_ref_v1" not in get_registry().by_name:
            register_plugin(tp_workers.RefPlugin(), name="tp-ref")
        return tp_workers.RefV1Config() if method == "ref_v1" else tp_workers.RefV2Config()
    if method.startswith("int8"):
        ensure_registered("int8", "fvq_int8.hooks")
        from fvq_int8 import Int8Config

        if method == "int8-online":  # a float checkpoint, quantized on load
            return Int8Config.from_config({"quant_method": "int8"})
        return Int8Config.from_config({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0})
    if method.startswith("fp8"):
        ensure_registered("fp8", "fvq_fp8.hooks")
        from fvq_fp8 import Fp8Config

        extra = {"fp8-static": {"activation_scheme": "static"}, "fp8-channel": {"weight_scale_strategy": "channel"},
                 "fp8-block": {"weight_block_size": [BLOCK, BLOCK]}}.get(method, {})
        return Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic", **extra})
    ensure_registered("awq", "fvq_awq.hooks")
    from fvq_awq.config import AWQConfig

    return AWQConfig(group_size=32 if method == "awq-32" else -1)


def checkpoint_shapes(method: str, out: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype, int | None]]:
    """``suffix → (shape, dtype, output dim)`` of one checkpoint module with a float ``[out, k]`` weight."""
    if method == "unquantized":
        return {"weight": ((out, k), torch.float32, 0), "bias": ((out,), torch.float32, 0)}
    if method.startswith("ref"):
        return {"weight": ((out, k), torch.float64, 0), "packed": ((out // 8, k), torch.int32, 0),
                "scale": ((), torch.float32, None)}
    if method == "int8":
        return {"weight": ((out, k), torch.int8, 0), "SCB": ((out,), torch.float32, 0),
                "weight_format": ((), torch.uint8, None)}
    if method.startswith("fp8"):
        shapes = {"weight": ((out, k), torch.float8_e4m3fn, 0)}
        if method == "fp8-block":
            shapes["weight_scale_inv"] = ((math.ceil(out / BLOCK), math.ceil(k / BLOCK)), torch.float32, 0)
        elif method == "fp8-channel":
            shapes["weight_scale"] = ((out, 1), torch.float32, 0)
        else:
            shapes["weight_scale"] = ((), torch.float32, None)
        if method == "fp8-static":
            shapes["input_scale"] = ((), torch.float32, None)
        return shapes
    groups = k // 32 if method == "awq-32" else 1
    return {"qweight": ((k, out // 8), torch.int32, 1), "qzeros": ((groups, out // 8), torch.int32, 1),
            "scales": ((groups, out), torch.float16, 1)}


class Distinct:
    """Tensors whose entries differ from every other entry written: int32/float32/float64 count up from 1, float16
    takes the bit patterns of the values in (0, 1) (never equal to a count); int8, uint8 and fp8 are zeros."""

    def __init__(self) -> None:
        self.count = 1
        self.half = 1

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        if dtype in (torch.int32, torch.float32, torch.float64):
            t = torch.arange(self.count, self.count + n, dtype=torch.float64).to(dtype)
            self.count += n
        elif dtype == torch.float16:
            assert self.half + n < 0x3C00, "too many float16 entries for distinct values below 1"
            t = torch.arange(self.half, self.half + n, dtype=torch.int32).to(torch.int16).view(torch.float16)
            self.half += n
        else:
            t = torch.zeros(n, dtype=dtype)
        return t.reshape(shape)


def sizes(kind: str, method: str, tp: int, a: int, b: int, kv: int, partial: bool) -> dict[str, Any]:
    """The layer's arguments at TP size ``tp``: every per-rank size a multiple of 8 (packing, fp8 blocks), inputs of
    32 (AWQ groups); ``partial`` (fp8 block scales at TP 1) adds half a block to the rows and the input."""
    extra = 4 if partial else 0
    k = 32 * b + extra
    if kind == "replicated":
        return {"input_size": k, "output_size": 8 * a + extra}
    if kind == "column":
        return {"input_size": k, "output_size": 8 * a * tp + extra}
    if kind == "row":
        return {"input_size": 32 * b * tp + extra, "output_size": 8 * a + extra}
    if kind == "merged":
        return {"input_size": k, "output_sizes": [8 * a * tp + extra, 8 * b * tp]}
    return {"hidden_size": k, "head_size": 8, "total_num_heads": 4, "total_num_kv_heads": kv}


def write_quantized(path: Path, method: str, modules: dict[str, tuple[int, int]], edit=None) -> None:
    """A checkpoint of ``method``'s ``quantize_weight`` of seeded float ``[out, in]`` weights, one per module name
    (``blk.k_proj``); ``edit(tensors)`` spoils it first."""
    from safetensors.torch import save_file

    cfg = register(method)
    g = torch.Generator().manual_seed(0)
    tensors = {f"{name}.{suffix}": t for name, (out, k) in modules.items()
               for suffix, t in cfg.quantize_weight(torch.randn(out, k, generator=g) / 16).items()}
    if edit is not None:
        edit(tensors)
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(Path(path) / "model.safetensors"))


def spoil(name: str, index: Any, value: float):
    """An ``edit`` for :func:`write_quantized`: tensor ``name`` with ``value`` at ``index``."""
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].clone()
        tensors[name][index] = value
    return edit


def load_error(rank: int, world: int, path: str, kind: str, method: str, args: dict[str, Any]) -> str | None:
    """Build the layer at TP ``world`` on this rank and load ``path``: the WeightLoadError it raises, ``"peer: "`` and
    the PeerLoadError of a rank told that another rank's load failed, or None."""
    from fastvideo_quant.errors import PeerLoadError, WeightLoadError
    from fastvideo_quant.loader import load_checkpoint

    model, _ = build(kind, method, args)
    try:
        load_checkpoint(model, path)
    except WeightLoadError as exc:
        return str(exc)
    except PeerLoadError as exc:
        return f"peer: {exc}"
    return None


def build(kind: str, method: str, args: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """``model.blk.<leaf>`` of ``kind`` built at the current TP group; (model, layer)."""
    from fastvideo_quant.layers import linear

    cls = {"replicated": linear.ReplicatedLinear, "column": linear.ColumnParallelLinear,
           "row": linear.RowParallelLinear, "merged": linear.MergedColumnParallelLinear,
           "qkv": linear.QKVParallelLinear}[kind]
    leaf = KINDS[kind][0]
    dtype = torch.float64 if method.startswith("ref") else torch.float32
    layer = cls(**args, bias=method == "unquantized", params_dtype=dtype, quant_config=register(method),
                prefix=f"blk.{leaf}")
    model, model.blk = torch.nn.Module(), torch.nn.Module()
    setattr(model.blk, leaf, layer)
    return model, layer


def part_rows(kind: str, args: dict[str, Any]) -> list[int]:
    if kind == "merged":
        return list(args["output_sizes"])
    hd = args["head_size"]
    return [args["total_num_heads"] * hd, args["total_num_kv_heads"] * hd, args["total_num_kv_heads"] * hd]


def checkpoint(kind: str, method: str, args: dict[str, Any], fused_on_disk: bool) -> dict[str, torch.Tensor]:
    """The checkpoint of the layer: its parts' tensors (or one tensor fused on disk), every value distinct."""
    leaf, parts = KINDS[kind]
    k = args.get("input_size", args.get("hidden_size"))
    make = Distinct()
    if parts is None:
        out = args["output_size"]
        return {f"blk.{leaf}.{s}": make(shape, dtype) for s, (shape, dtype, _) in checkpoint_shapes(method, out, k).items()}
    rows = part_rows(kind, args)
    per_part = [checkpoint_shapes(method, r, k) for r in rows]
    if not fused_on_disk:
        return {f"blk.{p}.{s}": make(shape, dtype) for p, shapes in zip(parts, per_part, strict=True)
                for s, (shape, dtype, _) in shapes.items()}
    fused = {}
    for s, (shape, dtype, dim) in per_part[0].items():
        if dim is None:  # one scalar (format code, per-tensor scale) for the whole fused tensor
            fused[f"blk.{leaf}.{s}"] = make(shape, dtype)
        else:
            fused[f"blk.{leaf}.{s}"] = torch.cat([make(p[s][0], dtype) for p in per_part], dim=dim)
    return fused


def indices(shape: torch.Size, seed: int, limit: int = 256) -> list[tuple[int, ...]]:
    """Every index of ``shape``, or ``limit`` of them drawn at random."""
    every = math.prod(shape)
    if every <= limit:
        return list(itertools.product(*(range(s) for s in shape)))
    g = torch.Generator().manual_seed(seed)
    flat = torch.randint(0, every, (limit,), generator=g)
    return [tuple(int(i) for i in torch.unravel_index(f, tuple(shape))) for f in flat]


def check_layer(kind: str, method: str, tp: int, fused_on_disk: bool, args: dict[str, Any], seed: int) -> int:
    """Load the checkpoint into the layer at this rank; every checked entry's location holds its value. Returns
    how many entries were checked."""
    from safetensors.torch import save_file

    from fastvideo_quant.layers.locate import checkpoint_location
    from fastvideo_quant.loader import load_checkpoint

    tensors = checkpoint(kind, method, args, fused_on_disk)
    model, layer = build(kind, method, args)
    with tempfile.TemporaryDirectory() as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(Path(tmp) / "model.safetensors"))
        load_checkpoint(model, tmp, process_weights=False)
    checked = 0
    for name, param in layer.named_parameters(recurse=False):
        if name in UNCHECKED.get(method, ()):
            continue
        for index in indices(param.shape, seed):
            where = f"{kind}/{method} tp={tp} rank={layer.tp_rank} fused={fused_on_disk} {name}{list(index)}"
            found = checkpoint_location(layer, name, index)
            assert found is not None, f"{where}: no location"
            tensor, at = found
            assert tensor in tensors, f"{where}: {tensor!r} is not a checkpoint tensor ({sorted(tensors)})"
            want, got = tensors[tensor][at].item(), param.data[index].item()
            assert want == got, f"{where} → {tensor}{list(at)}: holds {want}, the parameter {got}"
            checked += 1
    return checked


def combos(tp: int) -> list[tuple[str, str, bool, int]]:
    """(kind, method, fused on disk, KV heads) for every kind and method; fused layers both ways; QKV with 1, 2 and
    4 KV heads (of 4), so at TP 2 and 4 some are replicated over ranks."""
    return [(kind, method, fused, kv) for kind in KINDS for method in METHODS
            for fused in ((False, True) if KINDS[kind][1] else (False,)) for kv in ((1, 2, 4) if kind == "qkv" else (0,))]


def locate_roundtrip(rank: int, world: int, max_examples: int) -> dict[tuple[str, str, int, bool, int], int]:
    """For each TP size (1, 2, 4) this rank is part of and each combination (:func:`combos`), Hypothesis draws the
    sizes and the entries sampled (derandomized: every rank draws the same); returns the entries checked per
    (kind, method, tp, fused, KV heads)."""
    import torch.distributed as dist

    from fastvideo_quant.distributed import tp_group

    groups = {1: dist.new_group([0]), 2: dist.new_group([0, 1]), 4: dist.new_group([0, 1, 2, 3])}
    checked: dict[tuple[str, str, int, bool, int], int] = {}
    for tp, group in groups.items():
        if rank >= tp:
            continue
        with tp_group(group):
            for kind, method, fused, kv in combos(tp):
                _property(kind, method, tp, fused, kv, checked, max_examples)()
    return checked


def _property(kind: str, method: str, tp: int, fused: bool, kv: int, checked: dict, max_examples: int):
    """The Hypothesis test of one combination: sizes, KV heads, partial blocks and the sampled entries drawn."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(a=st.integers(1, 2), b=st.integers(1, 2), partial=st.booleans(), seed=st.integers(0, 2**16))
    def prop(a, b, partial, seed):
        partial = partial and method == "fp8-block" and tp == 1 and not fused and kind != "qkv"
        args = sizes(kind, method, tp, a, b, kv, partial)
        key = (kind, method, tp, fused, kv)
        checked[key] = checked.get(key, 0) + check_layer(kind, method, tp, fused, args, seed)

    return prop
