"""Activation-ordered AWQ layers under ``torch.compile(fullgraph=True)``: the gather inside the layer's op (the
Triton gather, as in eager calls) against the gather traced by dynamo before the op (``index_select``, what compiled
code ran before 2026-12-06), bf16 ``F.linear`` compiled the same way, measured in the same run.

    python benchmarks/awq_act_order_compile.py OUT.json [M ...]

Layers as ``benchmarks/awq_act_order.py`` builds them (``gptq``: a GPTQ act-order ``weight_g_idx`` at group 128 on
each DiT shape). Each compiled function is first checked against float32 math of the layer's de-quantized weight on
fresh random inputs (and the two orderings against each other); then CUDA-graph replay of the compiled call (GPU
time, ``fastvideo_quant.bench.graph_median_ms``).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, rel_err


def main(out: str, ms: list[int]) -> None:
    from awq_act_order import _gptq_order, _layer
    from fvq_awq import ops

    rows = []
    for k, n in DIT_SHAPES:
        layer = _layer(k, n, _gptq_order(k))
        lay, order = layer.awq_layout, layer.input_order_k
        w_ref = layer.quant_method.dequantize_weight(layer).float()
        w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)

        def traced_gather(x, layer=layer, lay=lay, order=order):  # (the compiled path before: gather, then the op)
            return ops.linear(x.index_select(-1, order), layer.qweight_k, layer.zeros_k, layer.scales_k, None,
                              lay.in_features, lay.out_features, lay.group, lay.bk8)

        fns = {"op_gather": torch.compile(lambda x, layer=layer: layer(x)[0], fullgraph=True),
               "traced_gather": torch.compile(traced_gather, fullgraph=True),
               "bf16": torch.compile(lambda x, w=w_bf16: F.linear(x, w), fullgraph=True)}
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ w_ref.T
            outs = {name: fn(x) for name, fn in list(fns.items())[:2]}
            errs = {name: rel_err(o, ref) for name, o in outs.items()}
            if max(errs.values()) > 1e-2 or not torch.equal(outs["op_gather"], outs["traced_gather"]):
                raise AssertionError(f"{k}x{n} M={m}: rel err {errs}, equal: "
                                     f"{torch.equal(outs['op_gather'], outs['traced_gather'])}")
            row = dict(K=k, N=n, M=m, rel_err=errs["op_gather"],
                       **{f"{name}_graph_us": graph_median_ms(lambda fn=fn, x=x: fn(x)) * 1e3
                          for name, fn in fns.items()})
            row["op_gather_speedup"] = row["bf16_graph_us"] / row["op_gather_graph_us"]
            row["traced_gather_speedup"] = row["bf16_graph_us"] / row["traced_gather_graph_us"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        json.dump({"env": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    main(sys.argv[1], [int(v) for v in sys.argv[2:]] or [1, 16, 1024, 4096])
