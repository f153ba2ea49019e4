# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Does a later entry of cuBLASLt's heuristic list beat its first pick for the row-wise fp8 GEMM?

    python benchmarks/lt_algo_probe.py --out-dir $OUT [--count 32] [--budget-s 300]

``torch._scaled_mm`` (row-wise scales, fast accumulation) runs the heuristic's first algorithm. Here, per DiT shape
and M, every algorithm the heuristic returns (``fastvideo_quant.kernels.cublaslt``) is first checked on fresh random
fp8 operands against float32 math of the same operands and against ``_scaled_mm``'s output, then timed as a
CUDA-graph replay (L2 flushed), with ``_scaled_mm`` and bf16 ``F.linear`` timed in the same process, and the
per-token quantization in front of it timed alone (so the whole path's ratio can be read). Writes
``lt-algo-probe_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import time

import cublaslt_lt as cublaslt
import torch
import torch.nn.functional as F

from fastvideo_quant.bench import graph_median_ms, rel_err, write_json
from fastvideo_quant.kernels.per_token_quant import per_token_quant

POINTS = ([(5120, 5120, m) for m in (128, 256, 320, 384, 400, 416, 448, 512, 768, 1024, 2048, 4096)]
          + [(k, n, m) for k, n in ((5120, 13824), (13824, 5120), (3072, 12288)) for m in (128, 352, 1024, 4096)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--tag")
    args = ap.parse_args()
    t0 = time.time()
    dev = torch.cuda.current_device()
    payload: dict = {"cublaslt_version": cublaslt.version(), "points": []}
    print("cuBLASLt", payload["cublaslt_version"], flush=True)
    weights: dict = {}
    for K, N, M in POINTS:
        if time.time() - t0 > args.budget_s:
            print("budget spent", flush=True)
            break
        if (K, N) not in weights:
            W = torch.randn(N, K, device="cuda") * 0.02
            s = W.abs().amax(1, keepdim=True) / 448.0
            weights = {(K, N): (W, (W / s).to(torch.float8_e4m3fn), s.t().contiguous().float())}
        W, wq, ws = weights[(K, N)]
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        xq, xs = per_token_quant(x, torch.float8_e4m3fn)
        xs = xs.reshape(M, 1).float()
        ref32 = (xq.float() * xs) @ (wq.float() * ws.t()).t()
        torch_out = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16,
                                     use_fast_accum=True)
        wbf = W.to(torch.bfloat16)
        point = {"K": K, "N": N, "M": M,
                 "bf16_ms": graph_median_ms(lambda: F.linear(x, wbf), 5, 30),
                 "quant_ms": graph_median_ms(lambda: per_token_quant(x, torch.float8_e4m3fn), 5, 30),
                 "scaled_mm_ms": graph_median_ms(lambda: torch._scaled_mm(
                     xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True), 5, 30),
                 "scaled_mm_err": rel_err(torch_out, ref32), "algos": []}
        plan = cublaslt.RowwiseFp8Plan(M, N, K, torch.bfloat16, dev, count=args.count)
        out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        xsf, wsf = xs.reshape(-1).contiguous(), ws.reshape(-1).contiguous()
        for info in plan.algos:
            out.fill_(float("nan"))
            try:
                plan.run(info.rank, xq, wq, xsf, wsf, out)
                torch.cuda.synchronize()
            except cublaslt.CublasLtError as e:
                point["algos"].append({"rank": info.rank, "config": info.config, "error": str(e)})
                continue
            err = rel_err(out, ref32)
            same = bool(torch.equal(out, torch_out))
            row = {"rank": info.rank, "config": info.config, "waves": info.waves, "workspace": info.workspace,
                   "err": err, "equal_to_scaled_mm": same}
            if torch.isfinite(out).all() and err < 1e-2:
                row["ms"] = graph_median_ms(lambda: plan.run(info.rank, xq, wq, xsf, wsf, out), 5, 30)
            point["algos"].append(row)
        timed = [a for a in point["algos"] if "ms" in a]
        best = min(timed, key=lambda a: a["ms"]) if timed else None
        point["best_rank"] = best["rank"] if best else None
        point["best_ms"] = best["ms"] if best else None
        payload["points"].append(point)
        r0 = next((a for a in timed if a["rank"] == 0), None)
        print(f"{K}x{N} M={M}: bf16 {point['bf16_ms']*1e3:.1f} quant {point['quant_ms']*1e3:.1f} scaled_mm "
              f"{point['scaled_mm_ms']*1e3:.1f} | lt rank0 {r0['ms']*1e3 if r0 else float('nan'):.1f} best rank "
              f"{point['best_rank']} {point['best_ms']*1e3 if best else float('nan'):.1f} ({len(timed)}/"
              f"{len(plan.algos)} ok) [{best and ' '.join(f'{k}{v}' for k, v in best['config'].items())}]",
              flush=True)
        bad = [a for a in point["algos"] if "ms" not in a]
        if bad:
            print("   not timed:", [(a["rank"], a.get("error") or f"err {a.get('err')}") for a in bad], flush=True)
    print(write_json(args.out_dir, "lt-algo-probe", payload, args.tag))


if __name__ == "__main__":
    main()
