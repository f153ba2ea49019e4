"""What activation ordering ('group', a ``weight_g_idx``) costs AWQ layers on the GPU, against the same checkpoint's
contiguous groups and bf16, measured in the same run.

    python benchmarks/awq_act_order.py OUT.json [M ...]

int4 layers per DiT shape, all compressed-tensors W4A16_ASYM at group 128, loaded through the plugin:
``contiguous`` (actorder null), ``gptq`` (a GPTQ act-order ``weight_g_idx``: a permutation of the inputs, each group
exactly 128 of them; the activations are gathered into group order each call; also timed with each way of gathering,
``GATHERS``) and ``row-half`` (the first half of the inputs of such a layer, as one of two row-parallel ranks holds
it: its groups hold ~64 of its inputs each, so the rank's inputs are regrouped with padding rows, in the kernel group
size ``act_order.choose_group`` picks — or each of ``AWQ_ACT_ORDER_GROUPS=128,64,32`` — more bytes read).
First, each way of gathering alone against a copy.
Each is first checked against float32 math of its
de-quantized weight on fresh random inputs; then CUDA-graph replay (GPU time) and eager medians
(``fastvideo_quant.bench``), bf16 ``F.linear`` of the same [N, K] (or [N, K/2]) timed alongside.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, median_ms, rel_err

GROUP = 128


def _layer(k: int, n: int, g_idx: torch.Tensor | None) -> torch.nn.Module:
    """A ReplicatedLinear of random int4 codes, scales and zero points (the bits do not change the time)."""
    from fvq_awq.config import AWQConfig
    from fvq_awq.ct_format import pack_rows

    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import process_weights_after_loading

    groups = k // GROUP if g_idx is None else int(g_idx.max()) + 1
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": GROUP,
               "dynamic": False, "actorder": None if g_idx is None else "group"}
    config = AWQConfig.from_config({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [],
                                    "config_groups": {"g": {"targets": ["Linear"], "weights": weights}}})
    with torch.device("cuda"):
        layer = ReplicatedLinear(k, n, bias=False, params_dtype=torch.bfloat16, quant_config=config, prefix="bench")
    if g_idx is not None and groups * GROUP != k:  # (a row rank's half: the whole input's groups, this rank's inputs)
        layer.weight_scale.data = torch.empty(n, groups, device="cuda")
        layer.weight_zero_point.data = torch.empty(n // 8, groups, dtype=torch.int32, device="cuda")
    tensors = {"weight_packed": pack_rows(torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")),
               "weight_scale": (torch.rand(n, groups, device="cuda") * 0.02 + 1e-3).bfloat16().float(),
               "weight_zero_point": pack_rows(torch.randint(0, 16, (groups, n), dtype=torch.uint8, device="cuda")).t()
               .contiguous(), "weight_shape": torch.tensor([n, k])}
    if g_idx is not None:
        tensors["weight_g_idx"] = g_idx.to("cuda")
    params = dict(layer.named_parameters())
    for name, tensor in tensors.items():
        params[name].data.copy_(tensor.to(params[name].dtype))  # (shapes set above; the loader is tested elsewhere)
    process_weights_after_loading(layer)
    return layer


def _gptq_order(k: int) -> torch.Tensor:
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(k))
    g = torch.empty(k, dtype=torch.int32)
    g[perm] = (torch.arange(k) // GROUP).to(torch.int32)
    return g


#: How a call can gather its activations into the kernel's order (``act_order.gather_inputs``), each timed alone and
#: in the ``gptq`` layer.
GATHERS = {
    "shipped": lambda x, order: _kernels().gather_columns(x, order),
    "columns": lambda x, order: _kernels().gather_by_columns(x, order),
    **{f"rows_b{b}_w{w}": (lambda x, order, b=b, w=w: _kernels().gather_rows(x, order, b, w))
       for b, w in ((1024, 4), (2048, 8), (4096, 8), (2048, 16), (4096, 16))},
    "rows_b2048_w8_i32": lambda x, order: _kernels().gather_rows(x, _int32(order), 2048, 8),
    "index_select": lambda x, order: x.index_select(-1, order),
}


def _kernels():
    from fvq_awq.kernels import gather

    return gather


_I32: dict = {}


def _int32(order: torch.Tensor) -> torch.Tensor:  # (made once per order, outside the timed call)
    key = (order.data_ptr(), order.numel())
    if key not in _I32:
        _I32[key] = order.int()
    return _I32[key]


def _forced_group(k: int, n: int, g: torch.Tensor, group: int) -> torch.nn.Module:
    from fvq_awq import act_order

    chosen = act_order.choose_group
    act_order.choose_group = lambda counts: group
    try:
        return _layer(k, n, g)
    finally:
        act_order.choose_group = chosen


def gather_table(ms: list[int]) -> list[dict]:
    """Each way of gathering ``[M, K]`` bf16 by a permutation, against a plain copy (CUDA-graph medians)."""
    rows = []
    for k in sorted({k for k, _ in DIT_SHAPES}):
        order = torch.randperm(k, device="cuda")
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x[:, order]
            row = dict(K=k, M=m, copy_us=graph_median_ms(x.clone) * 1e3)
            for name, fn in GATHERS.items():
                if not torch.equal(fn(x, order), ref):
                    raise AssertionError(f"gather {name} K={k} M={m}: wrong values")
                row[f"{name}_us"] = graph_median_ms(lambda fn=fn, x=x, order=order: fn(x, order)) * 1e3
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(out: str, ms: list[int]) -> None:
    from fvq_awq import act_order

    gather_ms = [int(v) for v in os.environ.get("AWQ_GATHER_MS", "").split(",") if v] or ms
    rows, gathers = [], gather_table(gather_ms)
    for k, n in DIT_SHAPES:
        g = _gptq_order(k)
        layers = {"contiguous": _layer(k, n, None), "gptq": _layer(k, n, g)}
        if os.environ.get("AWQ_ACT_ORDER_GROUPS"):  # e.g. "128,64,32": the row half in each kernel group size
            layers |= {f"row-half-g{group}": _forced_group(k // 2, n, g[: k // 2], int(group))
                       for group in os.environ["AWQ_ACT_ORDER_GROUPS"].split(",")}
        else:
            layers["row-half"] = _layer(k // 2, n, g[: k // 2])  # (the kernel group act_order.choose_group picks)
        for name, layer in layers.items():
            kl = layer.input_size
            w_ref = layer.quant_method.dequantize_weight(layer).float()
            w_bf16 = torch.randn(n, kl, device="cuda", dtype=torch.bfloat16)
            for m in ms:
                x = torch.randn(m, kl, device="cuda", dtype=torch.bfloat16)
                err = rel_err(layer.quant_method.apply(layer, x), x.float() @ w_ref.T)
                if err > 1e-2:
                    raise AssertionError(f"{name} {k}x{n} M={m}: rel err {err} against float32 math")

                def run(layer=layer, x=x):
                    return layer.quant_method.apply(layer, x)

                def bf16(x=x, w=w_bf16):
                    return F.linear(x, w)

                bf16_graph, int4_graph = graph_median_ms(bf16), graph_median_ms(run)
                bf16_eager, int4_eager = median_ms(bf16), median_ms(run)
                by_gather = {}
                if name == "gptq":
                    shipped = act_order.gather_inputs
                    try:
                        for gname, fn in ((n, GATHERS[n]) for n in ("columns", "rows_b2048_w8", "index_select")):
                            act_order.gather_inputs = fn
                            by_gather[f"{gname}_graph_us"] = graph_median_ms(run) * 1e3
                    finally:
                        act_order.gather_inputs = shipped
                rows.append(dict(layer=name, K=kl, N=n, M=m, rel_err=err, **by_gather,
                                 kernel_in=layer.awq_layout.in_features, kernel_group=layer.awq_layout.group,
                                 bf16_graph_us=bf16_graph * 1e3, int4_graph_us=int4_graph * 1e3,
                                 bf16_eager_us=bf16_eager * 1e3, int4_eager_us=int4_eager * 1e3,
                                 graph_speedup=bf16_graph / int4_graph, eager_speedup=bf16_eager / int4_eager))
                print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as f:
        json.dump({"env": environment(), "rows": rows, "gathers": gathers}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], [int(v) for v in sys.argv[2:]] or [1, 16, 128, 1024, 4096])
