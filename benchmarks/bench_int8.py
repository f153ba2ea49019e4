"""int8 plugin on a GPU: correctness against bitsandbytes, then the Triton path vs bf16 and vs bitsandbytes.

    python benchmarks/bench_int8.py --out benchmarks/results [--log-dir $OUT]

1. correctness on fresh random inputs: Triton path vs the bitsandbytes path vs float32
   of the de-quantized weight, for bf16/fp16/fp32, 2-D/3-D and bias;
2. the shared harness (``fastvideo_quant.bench``) for the Triton path and for the
   bitsandbytes path (``fvq_backend=bitsandbytes``), bf16 timed in the same run;
3. a breakdown at a few M: quantization kernel alone, GEMM with the weight ``[N, K]``
   (K-major, what the plugin stores) and ``[K, N]``, and ``torch._int_mm`` + a torch epilogue;
4. a combined table (bf16, Triton, bitsandbytes) and the autotuner's picks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import (
    DIT_MS,
    DIT_SHAPES,
    bench_method,
    build_layer,
    environment,
    median_ms,
    rel_err,
    result_stem,
    unused_stem,
    write_results,
)
from fastvideo_quant.plugins import ensure_registered


def _has_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - reported in the log
        traceback.print_exc()
        return False
    return True


def check_correctness(log) -> list[dict]:
    """Triton vs bitsandbytes vs float32 reference on fresh inputs; raises on a bad result."""
    from fvq_int8.bnb_path import bnb_int8_linear

    gen = torch.Generator(device="cuda").manual_seed(1)
    out = []
    for (K, N) in DIT_SHAPES:
        w = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
        layer = build_layer("int8", w, {"fvq_backend": "triton"})
        dq = layer.quant_method.dequantize_weight(layer)
        for dtype, shape, use_bias in [(torch.bfloat16, (1, K), False), (torch.bfloat16, (3, 333, K), True),
                                       (torch.float16, (128, K), True), (torch.float32, (77, K), False),
                                       (torch.bfloat16, (4096, K), False)]:
            x = torch.randn(shape, device="cuda", generator=gen).to(dtype)
            bias = torch.randn(N, device="cuda", generator=gen).to(dtype) if use_bias else None
            y = layer.quant_method.apply(layer, x, bias)
            ref = x.float() @ dq.T + (bias.float() if bias is not None else 0)
            x2 = x.reshape(-1, K)
            yb = bnb_int8_linear(x2, layer.weight, layer.SCB, bias, 0.0).reshape(y.shape)
            row = dict(K=K, N=N, shape=list(shape), dtype=str(dtype), bias=use_bias,
                       triton_vs_ref=rel_err(y, ref), bnb_vs_ref=rel_err(yb, ref), triton_vs_bnb=rel_err(y, yb.float()))
            log(json.dumps(row))
            if not torch.isfinite(y).all() or row["triton_vs_ref"] > 2.5e-2 or y.dtype != dtype:
                raise RuntimeError(f"Triton int8 path is wrong: {row}, out dtype {y.dtype}")
            out.append(row)
        del layer, w, dq
    return out


def _breakdown_row(K: int, N: int, M: int, w: torch.Tensor, w_kn: torch.Tensor, ws: torch.Tensor,
                   gen: torch.Generator) -> dict:
    from fvq_int8.kernels import quantize_per_token

    from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    xq, sx = quantize_per_token(x)
    wb = (torch.randn(N, K, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)

    def gemm_nk():
        return w8a8_gemm(xq, sx, w, ws, None, torch.bfloat16)

    def gemm_kn():
        return w8a8_gemm(xq, sx, w_kn.t(), ws, None, torch.bfloat16)

    def intmm():
        acc = torch._int_mm(xq, w.t())
        return (acc.float() * sx[:, None] * ws[None, :]).to(torch.bfloat16)

    a = gemm_nk()
    if rel_err(gemm_kn(), a.float()) > 1e-2 or rel_err(intmm(), a.float()) > 1e-2:
        raise RuntimeError(f"int8 GEMM variants disagree at K={K} N={N} M={M}")
    row = dict(K=K, N=N, M=M, bf16=median_ms(lambda: F.linear(x, wb)),
               quant=median_ms(lambda: quantize_per_token(x)), gemm_nk=median_ms(gemm_nk),
               gemm_kn=median_ms(gemm_kn), int_mm_epilogue=median_ms(intmm))
    row["gemm_nk_tops"] = 2 * M * N * K / row["gemm_nk"] / 1e9
    return row


def breakdown(log, ms=(128, 4096, 32768)) -> list[dict]:
    """Kernel components and alternatives at a few M (median ms)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    rows = []
    for (K, N) in DIT_SHAPES:
        w = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8, generator=gen)
        w_kn = w.t().contiguous()
        ws = torch.rand(N, device="cuda", generator=gen) * 0.01
        for M in ms:
            row = _breakdown_row(K, N, M, w, w_kn, ws, gen)
            log(json.dumps(row))
            rows.append(row)
    return rows


def tuned_configs() -> dict[str, str]:
    from fastvideo_quant.kernels.w8a8_gemm import _tuned

    return {str(k): str(v) for k, v in _tuned.cache.items()}


def combined_md(tri, bnb, env) -> str:
    lines = ["# int8: Triton path (W8A16 kernel at M ≤ FVQ_INT8_W8A16_MAX_M, W8A8 above) vs bf16 and vs bitsandbytes "
             "(threshold 0)", "",
             f"GPU: {env['gpu']} · torch {env['torch']} (CUDA {env['cuda']}) · {env['date']}", "",
             "Median ms (triton do_bench, L2 flushed), all three in the same run; apply() of a "
             "ReplicatedLinear loaded from a bitsandbytes int8 checkpoint, bf16 activations.", "",
             "| K | N | M | bf16 ms | int8 Triton ms | bnb ms | Triton / bf16 | Triton / bnb | rel err | weight bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    bmap = {(r.K, r.N, r.M): r for r in bnb}
    for r in tri:
        b = bmap.get((r.K, r.N, r.M))
        bms = f"{b.method_ms:.4f}" if b else "n/a"
        vs = f"{b.method_ms / r.method_ms:.2f}×" if b else "n/a"
        lines.append(f"| {r.K} | {r.N} | {r.M} | {r.bf16_ms:.4f} | {r.method_ms:.4f} | {bms} | {r.speedup:.2f}× | "
                     f"{vs} | {r.rel_err_vs_dequant:.2e} | {r.weight_bytes_ratio:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--m", nargs="*", type=int, default=DIT_MS)
    args = ap.parse_args()
    log_dir = Path(args.log_dir or args.out)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_f = open(log_dir / "int8_log.txt", "a")

    def log(s: str) -> None:
        print(s, flush=True)
        log_f.write(s + "\n")
        log_f.flush()

    ensure_registered("int8", "fvq_int8.hooks")
    env = environment()
    log(json.dumps(env))
    has_bnb = _has_bnb()
    log(f"bitsandbytes importable: {has_bnb}")
    extra: dict = {"environment": env}
    if has_bnb:
        extra["correctness"] = check_correctness(log)
    tri = bench_method("int8", DIT_SHAPES, args.m, config={"fvq_backend": "triton"}, log=log)
    for p in write_results(tri, args.out, tag="int8"):
        log(f"wrote {p}")
    extra["autotune"] = tuned_configs()
    bnb = []
    if has_bnb:
        try:
            bnb = bench_method("int8", DIT_SHAPES, args.m, config={"fvq_backend": "bitsandbytes"}, log=log)
            for p in write_results(bnb, args.out, tag="int8-bnb"):
                log(f"wrote {p}")
        except Exception:  # noqa: BLE001 - the Triton results above still stand
            log(traceback.format_exc())
    md = combined_md(tri, bnb, env)
    stem = unused_stem(Path(args.out), result_stem("int8-combined", env), (".md", ".json"))
    (Path(args.out) / f"{stem}.md").write_text(md)
    log(md)
    try:
        extra["breakdown"] = breakdown(log)
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    extra["triton_rows"] = [dataclasses.asdict(r) for r in tri]
    extra["bnb_rows"] = [dataclasses.asdict(r) for r in bnb]
    (Path(args.out) / f"{stem}.json").write_text(json.dumps(extra, indent=1))
    log(json.dumps(extra["autotune"], indent=0))


if __name__ == "__main__":
    main()
