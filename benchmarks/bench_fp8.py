"""fp8 component timings at the DiT shapes, bf16 in the same run: where the time of ``apply`` goes.

    python benchmarks/bench_fp8.py --out DIR [--m 1 16 ...]

Per shape and M (median ms, triton do_bench): bf16 ``F.linear``; ``_scaled_mm`` alone on
pre-quantized inputs, tensor-wise and row-wise, with and without fast accumulation; the
Triton per-token quant kernel alone (and its achieved GB/s); the whole ``apply`` eager and
as a CUDA-graph replay (its GPU time without host overhead). Checks apply vs float32 first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import (
    DIT_MS,
    DIT_SHAPES,
    build_layer,
    environment,
    graph_median_ms,
    median_ms,
    rel_err,
)
from fastvideo_quant.plugins import ensure_registered


def bench_shape(k: int, n: int, ms: list[int], config: dict) -> list[dict]:
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
    layer = build_layer("fp8", w, config)
    wq, ws = layer.weight, layer.weight_scale
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        rows.append(_bench_one(layer, w, x, wq, ws))
    return rows


def _bench_one(layer, w: torch.Tensor, x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor) -> dict:
    from fvq_fp8.kernels.act_quant_triton import per_token_quant

    (m, k), n = x.shape, w.shape[0]
    one = torch.ones((), device="cuda")
    out = layer.quant_method.apply(layer, x)
    err = rel_err(out, x.float() @ w.float().T)
    assert err < 5e-2 and torch.isfinite(out).all(), f"fp8 apply wrong at K={k} N={n} M={m}: rel err {err}"
    xq, xs = per_token_quant(x)
    r = {"K": k, "N": n, "M": m, "rel_err": err}
    r["bf16"] = median_ms(lambda: F.linear(x, w))
    r["mm_tensor_fast"] = median_ms(lambda: torch._scaled_mm(xq, wq.t(), one, one, out_dtype=torch.bfloat16,
                                                       use_fast_accum=True))
    r["mm_tensor"] = median_ms(lambda: torch._scaled_mm(xq, wq.t(), one, one, out_dtype=torch.bfloat16))
    r["mm_row_fast"] = median_ms(lambda: torch._scaled_mm(xq, wq.t(), xs, ws, out_dtype=torch.bfloat16,
                                                    use_fast_accum=True))
    r["mm_row"] = median_ms(lambda: torch._scaled_mm(xq, wq.t(), xs, ws, out_dtype=torch.bfloat16))
    r["quant"] = median_ms(lambda: per_token_quant(x))
    r["quant_GBps"] = (m * k * 3 + m * 4) / r["quant"] / 1e6
    r["apply"] = median_ms(lambda: layer.quant_method.apply(layer, x))
    r["apply_graph"] = graph_median_ms(lambda: layer.quant_method.apply(layer, x))
    r["bf16_graph"] = graph_median_ms(lambda: F.linear(x, w))
    print(" ".join(f"{key}={v:.4f}" if isinstance(v, float) else f"{key}={v}" for key, v in r.items()), flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--linear-out", default=None, help="also run fastvideo_quant.bench for fp8, results here")
    ap.add_argument("--m", nargs="*", type=int, default=DIT_MS)
    ap.add_argument("--config", type=json.loads, default={"quant_method": "fp8"})
    args = ap.parse_args()
    ensure_registered("fp8", "fvq_fp8.hooks")
    if args.linear_out:
        from fastvideo_quant.bench import bench_method, write_results

        for path in write_results(bench_method("fp8", DIT_SHAPES, args.m, config=args.config), args.linear_out):
            print(f"wrote {path}")
    rows = [r for k, n in DIT_SHAPES for r in bench_shape(k, n, args.m, args.config)]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "fp8_components.json").write_text(json.dumps({"environment": environment(), "rows": rows}))
    print("K N M | bf16 | tensor_fast row_fast row | quant | apply apply_graph | speedup speedup_graph")
    for r in rows:
        print(f"{r['K']} {r['N']} {r['M']} | {r['bf16']:.4f} | {r['mm_tensor_fast']:.4f} {r['mm_row_fast']:.4f} "
              f"{r['mm_row']:.4f} | {r['quant']:.4f} | {r['apply']:.4f} {r['apply_graph']:.4f} | "
              f"{r['bf16'] / r['apply']:.2f} {r['bf16_graph'] / r['apply_graph']:.2f}")


if __name__ == "__main__":
    main()
