"""fp8 at 17 <= M <= 512: every W8A8 GEMM config, every W8A16 small-M config, and row-wise ``_scaled_mm``, per shape.

    python benchmarks/fp8_path_sweep.py --out DIR [--ms 20 24 32 ...] [--budget-s 420]

Why (``results/fp8-m-sweep_*``): across a fine M grid the fp8 layer was slower than bf16 on the GPU at 5120x5120
M=20-32 (W8A16 kernel 0.96-0.98x) and 3072x12288 M=288-352 (``_scaled_mm`` 0.72-0.90x), and the Triton W8A8 GEMM's
speed at one (shape, M) moved by up to 20% between two processes (5120x5120 M=160: 1.30x / 1.11x; M=24-32:
1.04x / 0.85x): its autotuner picks a config per power-of-two M bucket, at whichever M arrives first, from one
short timing. This sweep times every config the autotuner would consider (``w8a8_configs.prune`` for the M bucket)
at every M, so a table can pick per bucket the config that is best over the bucket's M (not at one M), and the
path (W8A16 / Triton W8A8 / ``_scaled_mm`` / ``_scaled_mm`` on a padded row count) per shape and M range from GPU
times measured side by side. Above M=256, ``cublas_pad`` times the plugin's padded path (``gemm.padded_scaled_mm``:
the quantization writes M rows of a P-row buffer, ``_scaled_mm`` runs on P rows) for each P in :func:`pad_rows`:
cuBLASLt's kernel choice for some M is slower than its choice for a larger row count (3072x12288: 37.4 µs at M=352,
34.0 µs at 512 rows, ``results/scaled-mm-pad-probe_*``).

Each candidate is checked against float32 math of the de-quantized weight (rel err <= 4e-2, W8A8 quantizes
activations; <= 1e-2 for W8A16) before it is timed as a CUDA-graph replay (GPU time; quantization included for
the W8A8 paths). bf16 ``F.linear`` in the same process. Writes ``fp8-path-sweep_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fvq_fp8.kernels import gemm

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms, rel_err
from fastvideo_quant.kernels import small_m, w8a8_gemm
from fastvideo_quant.kernels.per_token_quant import per_token_quant
from fastvideo_quant.kernels.w8a8_configs import CONFIGS, m_bucket, prune

DEFAULT_MS = [20, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 512]


def pad_rows(M: int) -> list[int]:
    """Padded row counts tried at M (> 256): the multiples of 64 above M, up to M + 256."""
    return list(range((M // 64 + 1) * 64, M + 257, 64))


def small_candidates(M: int) -> list[small_m.Config]:
    return [small_m.Config(bm, bn, bk, split, 4, 4) for bm in (16, 32) for bn in (32, 64) for bk in (128, 256)
            for split in (1, 2, 4)]


def triton_fn(x, w, s_row, pick: w8a8_gemm.Pick):
    """Per-token quantization + the core GEMM launched with ``pick``."""
    def fn():
        xq, xs = per_token_quant(x, w.dtype)
        return w8a8_gemm.w8a8_gemm_unchecked(xq, xs, w, s_row, None, x.dtype, pick)
    return fn


def measure(M: int, K: int, N: int, w, s_row, wb, dq, t0: float) -> dict:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    exact = x.float() @ dq.T
    row: dict = dict(K=K, N=N, M=M, bf16_graph=graph_median_ms(lambda: F.linear(x, wb), 5, 25),
                     triton={}, small={})

    def cublas():
        xq, xs = per_token_quant(x, w.dtype)
        return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s_row, out_dtype=x.dtype, use_fast_accum=True)
    row["cublas_err"] = rel_err(cublas(), exact)
    row["cublas_graph"] = graph_median_ms(cublas, 5, 25)
    if M > 256:
        row["cublas_pad"] = {}
        for P in pad_rows(M):
            def padded(P=P):
                return gemm.padded_scaled_mm(x, w, s_row, None, P)
            err = rel_err(padded(), exact)
            if err > 4e-2 or padded().shape != (M, N):
                print(f"WRONG M={M} {K}x{N} cublas padded to {P}: rel err {err:.3e}", flush=True)
                continue
            row["cublas_pad"][str(P)] = graph_median_ms(padded, 5, 25)
    for cfg in prune(CONFIGS, {"M_BUCKET": m_bucket(M)}):
        pick = w8a8_gemm.Pick.of(cfg)
        fn = triton_fn(x, w, s_row, pick)
        try:
            err = rel_err(fn(), exact)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is data
            print(f"skip M={M} {K}x{N} {tuple(pick)}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            continue
        if err > 4e-2:
            print(f"WRONG M={M} {K}x{N} triton {tuple(pick)}: rel err {err:.3e}", flush=True)
            continue
        row["triton"][",".join(map(str, pick))] = graph_median_ms(fn, 5, 25)
    if M <= 32:
        for cfg in small_candidates(M):
            def fn(cfg=cfg):
                return small_m.small_m_linear(x, w, s_row, None, config=cfg)
            try:
                err = rel_err(fn(), exact)
            except Exception as exc:  # noqa: BLE001
                print(f"skip M={M} {K}x{N} small {tuple(cfg)}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            if err > 1e-2 or (cfg.split_k > 1 and not torch.equal(fn(), fn())):
                print(f"WRONG/NONDETERMINISTIC M={M} {K}x{N} small {tuple(cfg)}: rel err {err:.3e}", flush=True)
                continue
            row["small"][",".join(map(str, cfg))] = graph_median_ms(fn, 5, 25)
    bt = min(row["triton"].items(), key=lambda kv: kv[1]) if row["triton"] else ("-", float("inf"))
    bs = min(row["small"].items(), key=lambda kv: kv[1]) if row["small"] else ("-", float("inf"))
    b = row["bf16_graph"]
    pads = " ".join(f"{P}: {b / t:.2f}" for P, t in row.get("cublas_pad", {}).items())
    print(f"{K}x{N} M={M}: bf16 {b * 1e3:.1f}us | cublas {b / row['cublas_graph']:.2f} [padded {pads or '-'}] | triton best "
          f"{b / bt[1]:.2f} [{bt[0]}] | small best {b / bs[1]:.2f} [{bs[0]}] [{time.time() - t0:.0f}s]", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=DEFAULT_MS)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--shapes", nargs="+", default=None, help="KxN shapes (default: the four DiT shapes)")
    args = ap.parse_args()
    t0 = time.time()
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_" + "-".join(args.shapes) if args.shapes else ""
    path = out / f"fp8-path-sweep_{env['gpu'].lower().replace(' ', '-')}_{env['date']}{tag}.json"
    rows = []
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes] if args.shapes else DIT_SHAPES
    for K, N in shapes:
        torch.manual_seed(K + N)
        layer = build_layer("fp8", torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5)
        w, s_row = layer.weight, layer.weight_scale  # fp8 [N, K], float32 [1, N]
        dq = w.float() * s_row.reshape(-1, 1)
        wb = dq.to(torch.bfloat16)
        for M in args.ms:
            if time.time() - t0 > args.budget_s:
                print(f"budget spent: skipped {K}x{N} M={M} and after", flush=True)
                break
            rows.append(measure(M, K, N, w, s_row, wb, dq, t0))
            with open(path, "w") as f:  # after every point: a run cut short keeps what it measured
                json.dump({"environment": env, "rows": rows}, f)


if __name__ == "__main__":
    main()
