"""Sweep the shared small-M 8-bit-weight kernel (``fastvideo_quant.kernels.small_m``) on a GPU.

    python benchmarks/bench_small_m_sweep.py --out DIR [--cases fp8:16 int8:32 ...] [--budget-s 280]

For each case (weight dtype, M) and DiT shape: every candidate config is first checked against
float32 math of the de-quantized weight (rel err <= 1e-2; split-K configs must also repeat bit for
bit), then timed (``do_bench`` median, L2 flushed). In
the same run: bf16 ``F.linear`` and the plugin's two-launch W8A8 path (per-token quantization +
GEMM: ``fp8`` ``_scaled_mm`` / ``int8`` Triton GEMM), both eager and as a CUDA-graph replay (its GPU
time alone). Prints per case the best config per shape and overall (geometric mean), and writes
every timing to ``small-m-sweep_<gpu>_<date>.json`` — what :data:`small_m.TABLE` is set from.
(The committed ``results/small-m-sweep_*`` also holds the dropped in-kernel W8A8 variant, "g128", swept by
this script's first version; see git history.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, median_ms, rel_err
from fastvideo_quant.kernels import small_m

DEFAULT_CASES = [f"{d}:{m}" for m in (16, 32, 64) for d in ("fp8", "int8")]


def _weights(n: int, k: int, dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, device="cuda") * k**-0.5
    if dtype == "int8":
        s = w.abs().amax(1) / 127
        q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    else:
        s = w.abs().amax(1) / 448
        q = (w / s[:, None]).to(torch.float8_e4m3fn)
    return q, s.float(), q.float() * s[:, None]


def candidates(m: int) -> list[small_m.Config]:
    """A pruned grid (compiles dominate the sweep's time): one BLOCK_M per M, warps by BLOCK_M."""
    bm = min(max(16, 1 << (m - 1).bit_length()), 128)
    warps = 8 if bm >= 128 else 4
    bks = (128, 256) if bm <= 32 else (64, 128)
    bns = (32, 64) if bm <= 16 else (64, 128)
    return [small_m.Config(bm, bn, bk, split, warps, 4) for bn in bns for bk in bks for split in (1, 2, 4, 8)]


def w8a8_two_launch(dtype: str):
    """The plugin's per-token W8A8 path as ``fn(x, q, s)`` (what small M used before this kernel)."""
    if dtype == "fp8":
        from fvq_fp8.kernels import act_quant_triton

        def fp8(x, q, s):
            xq, xs = act_quant_triton.per_token_quant(x)
            return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s.reshape(1, -1), out_dtype=x.dtype,
                                    use_fast_accum=True)
        return fp8
    from fvq_int8.kernels import quantize_per_token

    from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm

    def int8(x, q, s):  # not int8_linear: it sends small M to the kernel being swept
        xq, xs = quantize_per_token(x)
        return w8a8_gemm(xq, xs, q, s, None, x.dtype)
    return int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="dtype:M pairs, swept in this order")
    ap.add_argument("--budget-s", type=float, default=280.0, help="stop sweeping after this many seconds")
    args = ap.parse_args()
    t0 = time.time()
    env = environment()
    rows, base = [], {}
    for case in args.cases:
        dtype, m_str = case.split(":")
        M = int(m_str)
        if time.time() - t0 > args.budget_s:
            print(f"budget spent: skipped {case} and after")
            break
        for K, N in DIT_SHAPES:
            q, s, dq = _weights(N, K, dtype)
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            exact = x.float() @ dq.T
            bkey = (dtype, K, N, M)
            if bkey not in base:
                wb = dq.to(torch.bfloat16)
                two = w8a8_two_launch(dtype)

                def w8a8(two=two, x=x, q=q, s=s):
                    return two(x, q, s)
                base[bkey] = dict(bf16=median_ms(lambda x=x, wb=wb: F.linear(x, wb), 5, 25),
                                  w8a8=median_ms(w8a8, 5, 25), w8a8_graph=graph_median_ms(w8a8, 5, 25),
                                  w8a8_err=rel_err(w8a8(), exact))
            for cfg in candidates(M) + [None]:
                def fn(x=x, q=q, s=s, cfg=cfg):
                    return small_m.small_m_linear(x, q, s, None, config=cfg)
                try:
                    err = rel_err(fn(), exact)
                except Exception as exc:  # noqa: BLE001 - a config that does not compile is data
                    print(f"skip {case} {K}x{N} {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                    continue
                if err > 1e-2:
                    print(f"WRONG {case} {K}x{N} {cfg}: rel err {err:.3e}")
                    continue
                chosen = cfg or small_m.config_for_shape(M, N, K, torch.cuda.get_device_properties(0).multi_processor_count)
                if chosen.split_k > 1 and not torch.equal(fn(), fn()):
                    print(f"NONDETERMINISTIC {case} {K}x{N} {chosen}")
                    continue
                rows.append(dict(dtype=dtype, K=K, N=N, M=M, cfg=list(chosen), table=cfg is None,
                                 ms=median_ms(fn, 5, 25), rel_err=err, **base[bkey]))
                if cfg is None:
                    rows[-1]["graph_ms"] = graph_median_ms(fn, 5, 25)
        print(f"{case} done at {time.time() - t0:.0f}s", flush=True)
    summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    with open(out / f"small-m-sweep_{gpu}_{env['date']}.json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f)


def summarize(rows: list[dict]) -> None:
    """Per case: the table config's speedups (eager, graph) and errors; the best configs."""
    for dtype, M in sorted({(r["dtype"], r["M"]) for r in rows}):
        sub = [r for r in rows if (r["dtype"], r["M"]) == (dtype, M)]
        print(f"\n{dtype} M={M}   [shape: table x bf16 (graph) | W8A8 two-launch eager / graph x bf16 | err]")
        for r in sub:
            if r["table"]:
                print(f"  {r['K']}x{r['N']}: {r['bf16'] / r['ms']:.2f}x ({r['ms'] * 1e3:.1f}us, graph "
                      f"{r['bf16'] / r['graph_ms']:.2f}x) cfg {r['cfg']} | {r['bf16'] / r['w8a8']:.2f}x / "
                      f"{r['bf16'] / r['w8a8_graph']:.2f}x | err {r['rel_err']:.2e} (w8a8 {r['w8a8_err']:.2e})")
        by_cfg: dict[tuple, list[float]] = {}
        for r in sub:
            if not r["table"]:
                by_cfg.setdefault(tuple(r["cfg"]), []).append(r["bf16"] / r["ms"])
        ranked = sorted(((math.exp(sum(map(math.log, v)) / len(v)), c, v) for c, v in by_cfg.items() if len(v) == 4),
                        reverse=True)
        for gm, c, v in ranked[:3]:
            print(f"  {c}: geomean {gm:.2f}x  per shape " + " ".join(f"{x:.2f}" for x in v))
        best: dict[tuple, dict] = {}
        for r in sub:
            if (r["K"], r["N"]) not in best or r["ms"] < best[(r["K"], r["N"])]["ms"]:
                best[(r["K"], r["N"])] = r
        print("  best per shape: " + "  ".join(f"{k}x{n} {r['bf16'] / r['ms']:.2f}x {r['cfg']}"
                                               for (k, n), r in best.items()))


if __name__ == "__main__":
    main()
