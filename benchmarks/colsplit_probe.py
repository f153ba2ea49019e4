"""fp8 above M=256: row-wise ``_scaled_mm`` in two column blocks, the first a whole number of waves.

    python benchmarks/colsplit_probe.py --out DIR [--points 5120x5120:1024 ...]

Why (``w8_notes.md``, thirteenth session): cuBLASLt's 128-row tiles leave a partial last wave at 5120x5120 M=1024
(320 tiles of 128x128 on 132 SMs: 2.42 waves run as 3) and M=385-447 (160 tiles); a persistent split-K Triton GEMM
fixes the waves but its tiles run ~20% slower, and a head + tail split by rows pays the weight's second read.

Prediction: split the *output columns* instead — ``_scaled_mm`` on the first ``NA`` columns, chosen so that block
holds a whole number of waves of tiles (5120x5120 M=1024: 8 row blocks x 33 column tiles = 264 = 2 waves), then on
the remaining columns (56 tiles), whose small problem cuBLASLt may tile finer or split over K. Each weight row is
read by one of the two GEMMs only (no second read), the activations twice (5 MB, from L2). If the second GEMM spreads
over the machine, ~2.4-2.5 tile-rounds instead of 3: ~38-40 µs against 46.5 for the GEMM at M=1024, ~1.5x bf16.

The two products write into one ``[M, N]`` output through column views (``out=``, leading dimension N), or, where
``_scaled_mm`` refuses a strided ``out``, into two tensors joined by ``torch.cat`` (timed as well: its copy costs).
Every variant is checked against float32 math of the same fp8 operands (rel err <= 1e-2) before it is timed as a
CUDA-graph replay (quantization included); bf16 ``F.linear`` and the shipped path (quantization + one ``_scaled_mm``)
in the same process. Writes ``colsplit-probe_<gpu>_<date>[_tag].json``.
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT_POINTS = ["5120x5120:1024", "5120x5120:400", "5120x5120:416", "5120x5120:440", "5120x5120:2048",
                  "5120x5120:4096", "13824x5120:1024", "5120x13824:1024", "3072x12288:1024", "13824x5120:4096"]


def candidates(M: int, N: int, sms: int) -> list[int]:
    """Column counts for the first block: for 128-row tiles 128 or 256 wide, the most columns whose tiles make whole
    waves, and one tile-column either side."""
    rows = -(-M // 128)
    out = set()
    for tw in (128, 256):
        tiles = rows * (N // tw)
        waves = tiles // sms
        for w in (waves, waves - 1):
            if w <= 0:
                continue
            cols = (w * sms) // rows
            for c in (cols - 1, cols, cols + 1):
                na = c * tw
                if 0 < na < N:
                    out.add(na)
    return sorted(out)


def split_fn(x, w, s_row, na: int, strided: bool):
    from fastvideo_quant.kernels.per_token_quant import per_token_quant

    wa, wb_ = w[:na], w[na:]
    sa, sb = s_row[:, :na], s_row[:, na:]

    def fn():
        xq, xs = per_token_quant(x, w.dtype)
        if strided:
            out = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype, device=x.device)
            torch._scaled_mm(xq, wa.t(), scale_a=xs, scale_b=sa, out_dtype=x.dtype, use_fast_accum=True,
                             out=out[:, :na])
            torch._scaled_mm(xq, wb_.t(), scale_a=xs, scale_b=sb, out_dtype=x.dtype, use_fast_accum=True,
                             out=out[:, na:])
            return out
        a = torch._scaled_mm(xq, wa.t(), scale_a=xs, scale_b=sa, out_dtype=x.dtype, use_fast_accum=True)
        b = torch._scaled_mm(xq, wb_.t(), scale_a=xs, scale_b=sb, out_dtype=x.dtype, use_fast_accum=True)
        return torch.cat([a, b], dim=1)
    return fn


def measure(K: int, N: int, M: int, w, s_row, wbf, sms: int) -> dict:
    from fastvideo_quant.bench import graph_median_ms, rel_err
    from fastvideo_quant.kernels.per_token_quant import per_token_quant

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    xq, xs = per_token_quant(x, w.dtype)
    exact = (xq.float() * xs.view(-1, 1)) @ (w.float() * s_row.view(-1, 1)).T
    row = dict(K=K, N=N, M=M, bf16=graph_median_ms(lambda: torch.nn.functional.linear(x, wbf), 5, 25), split={})

    def shipped():
        q, s = per_token_quant(x, w.dtype)
        return torch._scaled_mm(q, w.t(), scale_a=s, scale_b=s_row, out_dtype=x.dtype, use_fast_accum=True)
    row["cublas_err"] = rel_err(shipped(), exact)
    row["cublas"] = graph_median_ms(shipped, 5, 25)
    for na in candidates(M, N, sms):
        for strided in (True, False):
            key = f"{na}+{N - na} {'view' if strided else 'cat'}"
            fn = split_fn(x, w, s_row, na, strided)
            try:
                err = rel_err(fn(), exact)
            except Exception as e:  # (a strided out= that _scaled_mm refuses)
                print(f"skip {key}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            if err > 1e-2:
                print(f"WRONG {K}x{N} M={M} {key}: rel err {err:.3e}", flush=True)
                continue
            row["split"][key] = graph_median_ms(fn, 5, 25)
    return row


def main() -> None:
    from fastvideo_quant.bench import build_layer, write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--points", nargs="*", default=DEFAULT_POINTS)
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, weights = [], {}
    for point in args.points:
        if time.time() - t0 > args.budget_s:
            print("budget reached", flush=True)
            break
        shape, m = point.split(":")
        K, N = map(int, shape.split("x"))
        if shape not in weights:
            wbf = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
            layer = build_layer("fp8", wbf)
            weights = {shape: (wbf, layer.weight_scale, layer.weight)}  # float32 [1, N], fp8 [N, K]
        wbf, s_row, w = weights[shape]
        row = measure(K, N, int(m), w, s_row, wbf, sms)
        best = min(row["split"].items(), key=lambda kv: kv[1]) if row["split"] else ("-", float("nan"))
        print(f"{K}x{N} M={m}: bf16 {row['bf16']*1e3:.1f} µs, cublas {row['cublas']*1e3:.1f} "
              f"({row['bf16']/row['cublas']:.2f}x), best split {best[0]} {best[1]*1e3:.1f} "
              f"({row['bf16']/best[1]:.2f}x)  [{time.time()-t0:.0f} s]", flush=True)
        for k, v in sorted(row["split"].items(), key=lambda kv: kv[1])[:4]:
            print(f"    {k}: {v*1e3:.1f} µs ({row['bf16']/v:.2f}x)", flush=True)
        rows.append(row)
    print("wrote", write_json(args.out, "colsplit-probe", dict(rows=rows), args.tag))


if __name__ == "__main__":
    main()
