"""fp8 just above a wave boundary: ``_scaled_mm`` on the first H rows, a small-M GEMM on the rest, one quantization.

    python benchmarks/head_tail_probe.py --out DIR [--shapes 5120x5120 ...] [--ms 392 400 ...] [--head 384]

Why (``w8_notes.md``, twelfth and thirteenth sessions): at 5120x5120 M=385-447 the fp8 layer is at parity with bf16
(0.99-1.00x): cuBLASLt's 128x128 tiles go from 3 to 4 row blocks at M=385 (120 -> 160 tiles on 132 SMs: 26.6 ->
37.3 µs with the quantization), and no padding, Triton config or persistent / split-K Triton GEMM
(``streamk_probe.py``) beat it there.

Prediction: quantize all M rows once, run row-wise ``_scaled_mm`` on the first H=384 rows (one wave of 120 tiles,
written in place into ``out[:H]``) and the remaining M - H <= 63 rows through a weight-streaming GEMM into
``out[H:]``. The tail re-reads the 26 MB fp8 weight right after the head has streamed it, so much of it should come
from L2 (50 MB): ~4-8 µs, ~31-35 µs in all against bf16's 36.7-40 µs (~1.05-1.15x). Tails offered: ``_scaled_mm``
(cuBLASLt's own small-M kernel) and the core Triton W8A8 GEMM with small-M tiles.

Every variant is checked against float32 math of the same fp8 operands (rel err <= 1e-2) before it is timed as a
CUDA-graph replay (quantization included); bf16 ``F.linear`` and the shipped layer's path (quantization + plain
``_scaled_mm``) in the same process. Writes ``head-tail-probe_<gpu>_<date>[_tag].json``.
"""

from __future__ import annotations

import argparse
import time

import torch

TAIL_PICKS = [(16, 32, 512, 1, 4, 3), (16, 64, 256, 1, 4, 4), (32, 64, 256, 1, 4, 4), (32, 128, 256, 1, 4, 4),
              (64, 64, 256, 8, 4, 4), (64, 128, 256, 8, 4, 4), (64, 64, 128, 8, 4, 6)]


def head_tail(x, w, s_row, head: int, tail):
    """``tail``: "cublas" or a W8A8 pick (six ints)."""
    from fastvideo_quant.kernels import w8a8_gemm
    from fastvideo_quant.kernels.per_token_quant import per_token_quant

    def fn():
        xq, xs = per_token_quant(x, w.dtype)
        out = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype, device=x.device)
        torch._scaled_mm(xq[:head], w.t(), scale_a=xs[:head], scale_b=s_row, out_dtype=x.dtype,
                         use_fast_accum=True, out=out[:head])
        if tail == "cublas":
            torch._scaled_mm(xq[head:], w.t(), scale_a=xs[head:], scale_b=s_row, out_dtype=x.dtype,
                             use_fast_accum=True, out=out[head:])
        else:
            w8a8_gemm.w8a8_gemm_unchecked(xq[head:], xs[head:], w, s_row, None, x.dtype, w8a8_gemm.Pick(*tail),
                                          out=out[head:])
        return out
    return fn


def measure(K: int, N: int, M: int, w, s_row, wb, heads: list[int]) -> dict:
    from fastvideo_quant.bench import graph_median_ms, rel_err
    from fastvideo_quant.kernels.per_token_quant import per_token_quant

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    xq, xs = per_token_quant(x, w.dtype)
    exact = (xq.float() * xs.view(-1, 1)) @ (w.float() * s_row.view(-1, 1)).T
    row = dict(K=K, N=N, M=M, bf16=graph_median_ms(lambda: torch.nn.functional.linear(x, wb), 5, 25), split={})

    def shipped():
        q, s = per_token_quant(x, w.dtype)
        return torch._scaled_mm(q, w.t(), scale_a=s, scale_b=s_row, out_dtype=x.dtype, use_fast_accum=True)
    row["cublas_err"] = rel_err(shipped(), exact)
    row["cublas"] = graph_median_ms(shipped, 5, 25)
    for head in heads:
        if head >= M:
            continue
        for tail in ["cublas", *TAIL_PICKS]:
            fn = head_tail(x, w, s_row, head, tail)
            key = f"head {head} + {'cublas' if tail == 'cublas' else 'triton ' + 'x'.join(map(str, tail))}"
            try:
                err = rel_err(fn(), exact)
            except Exception as e:  # a pick the compiler rejects
                print(f"skip {key}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            if err > 1e-2:
                print(f"WRONG M={M} {K}x{N} {key}: rel err {err:.3e}", flush=True)
                continue
            row["split"][key] = graph_median_ms(fn, 5, 25)
    return row


def main() -> None:
    from fastvideo_quant.bench import build_layer, write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=["5120x5120"])
    ap.add_argument("--ms", type=int, nargs="*", default=[392, 400, 416, 432, 447])
    ap.add_argument("--heads", type=int, nargs="*", default=[384])
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    rows = []
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        wb = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
        layer = build_layer("fp8", wb)
        w, s_row = layer.weight, layer.weight_scale  # fp8 [N, K], float32 [1, N]
        for M in args.ms:
            if time.time() - t0 > args.budget_s:
                print("budget reached", flush=True)
                break
            row = measure(K, N, M, w, s_row, wb, args.heads)
            best = min(row["split"].items(), key=lambda kv: kv[1]) if row["split"] else ("-", float("nan"))
            print(f"{K}x{N} M={M}: bf16 {row['bf16']*1e3:.1f} µs, cublas {row['cublas']*1e3:.1f} "
                  f"({row['bf16']/row['cublas']:.2f}x), best {best[0]} {best[1]*1e3:.1f} "
                  f"({row['bf16']/best[1]:.2f}x)  [{time.time()-t0:.0f} s]", flush=True)
            for k, v in sorted(row["split"].items(), key=lambda kv: kv[1])[:4]:
                print(f"    {k}: {v*1e3:.1f} µs ({row['bf16']/v:.2f}x)", flush=True)
            rows.append(row)
    print("wrote", write_json(args.out, "head-tail-probe", dict(rows=rows), args.tag))


if __name__ == "__main__":
    main()
