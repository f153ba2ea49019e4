"""Probe: block-scaled fp8 (DeepSeek-V3 style, 128x128 weight blocks) through one ``torch._scaled_mm``.

    python benchmarks/fp8_block_probe.py --out DIR [--ms 1 16 128 1024 4096] [--rounds 2]

Why: the fp8 plugin's block path ran one fp8 product per 128-column K block (40-108 launches and as many
``[M, N]`` float32 updates at the DiT shapes). torch >= 2.9 with cuBLASLt >= 12.9 runs DeepSeek-style block
scaling (activation scales per token and 128 columns, M-major; weight scales per 128x128 block) in one
``_scaled_mm`` on sm_90. The plugin now quantizes the activations per 128-column group in one Triton launch
(``fvq_fp8::per_group_quant``) and makes that one call (``gemm.block_scaled_mm``).

1. What torch and cuBLASLt take (raw ``_scaled_mm``): both recipes (1x128 x 128x128, 1x128 x 1x128), M not a
   multiple of 4, K not a multiple of 128, output dtypes, a bias, fast accumulation; each accepted call's error
   against float64 math of the same fp8 operands and scales.
2. The shipped path against the per-block loop (the reference) and float64 math; the quantization kernel bit for
   bit against ``per_group_quant_ref``.
3. GPU time (CUDA-graph replays): bf16 ``F.linear``, the shipped block path, its ``_scaled_mm`` alone on
   pre-quantized operands, the per-block loop, and the per-channel dynamic fp8 path for comparison.

Writes ``fp8-block-probe_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from fvq_fp8.format import expand_block_scale, quantize_per_block, quantize_per_channel
from fvq_fp8.kernels import gemm, ops

from fastvideo_quant.bench import DIT_SHAPES, best_of_rounds, environment, graph_median_ms, ratio_cell, rel_err

FP8 = torch.float8_e4m3fn
B = 128


def operands(m: int, k: int, n: int, seed: int) -> dict:
    torch.manual_seed(seed)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    wq, grid = quantize_per_block(w, (B, B))  # grid [ceil(n/128), ceil(k/128)]
    cols = expand_block_scale(grid, (B, B), (n, -(-k // B) * B))[:, ::B].t().contiguous()  # [G, n]
    return dict(x=x, w=w, wq=wq, grid=grid.contiguous(), cols=cols)


def exact(x: torch.Tensor, wq: torch.Tensor, grid: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float64 math of the block recipe: activations quantized by the reference, the fp8 operands scaled, summed."""
    xq, xs = ops.per_group_quant_ref(x, B)
    k = x.shape[1]
    xd = xq.double() * xs.double().repeat_interleave(B, dim=1)[:, :k]
    wd = wq.double() * expand_block_scale(grid.double(), (B, B), tuple(wq.shape))
    out = xd @ wd.T
    return out if bias is None else out + bias.double()


def support() -> list[dict]:
    rows = []

    def attempt(name: str, m: int, k: int, n: int, recipe: str, out_dtype: torch.dtype, bias: bool, fast: bool):
        o = operands(m, k, n, m + k + n)
        xq, xs = ops.per_group_quant_ref(o["x"], B)
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
        if recipe == "1x128_128x128_padded":  # the grid's rows at a stride rounded up to 4 floats (16 bytes)
            g = o["grid"]
            padded = g.new_zeros(g.shape[0], -(-g.shape[1] // 4) * 4)
            padded[:, : g.shape[1]] = g
            scale_b = padded[:, : g.shape[1]].t()
        else:
            scale_b = o["grid"].t() if recipe == "1x128_128x128" else o["cols"]
        row = dict(case=name, M=m, K=k, N=n, recipe=recipe, out_dtype=str(out_dtype), bias=bias, fast_accum=fast)
        try:
            out = torch._scaled_mm(xq, o["wq"].t(), scale_a=xs.t().contiguous().t(), scale_b=scale_b,
                                   bias=None if b is None else b.to(out_dtype), out_dtype=out_dtype,
                                   use_fast_accum=fast)
            torch.cuda.synchronize()
            row["ok"] = True
            row["rel_err"] = rel_err(out, exact(o["x"], o["wq"], o["grid"], b).float())
        except (RuntimeError, NotImplementedError, ValueError) as e:
            row["ok"] = False
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"
        print("support", row, flush=True)
        rows.append(row)

    for k in (1040, 1152, 1280):
        attempt("k_grid_padded", 16, k, 1024, "1x128_128x128_padded", torch.bfloat16, False, False)
    for recipe in ("1x128_128x128", "1x128_1x128"):
        for m in (1, 2, 3, 4, 5, 16, 132):
            attempt("m", m, 1024, 1024, recipe, torch.bfloat16, False, False)
        attempt("k_partial", 16, 1040, 1024, recipe, torch.bfloat16, False, False)
        attempt("k_9_blocks", 16, 1152, 1024, recipe, torch.bfloat16, False, False)
        attempt("k_10_blocks", 16, 1280, 1024, recipe, torch.bfloat16, False, False)
        attempt("n_partial", 16, 1024, 1040, recipe, torch.bfloat16, False, False)
        for dt in (torch.float16, torch.float32):
            attempt("out_dtype", 16, 1024, 1024, recipe, dt, False, False)
        attempt("bias", 16, 1024, 1024, recipe, torch.bfloat16, True, False)
        attempt("fast_accum", 16, 1024, 1024, recipe, torch.bfloat16, False, True)
    return rows


def kernel_check() -> list[dict]:
    rows = []
    for m, k in ((1, 5120), (5, 5120), (1024, 5120), (7, 13824), (33, 3072), (3, 1040)):
        torch.manual_seed(m * k)
        x = (torch.randn(m, k, device="cuda") * torch.logspace(-3, 3, k, device="cuda")).to(torch.bfloat16)
        q, s = ops.per_group_quant(x, B)
        qr, sr = ops.per_group_quant_ref(x, B)
        row = dict(M=m, K=k, codes_equal=bool(torch.equal(q.view(torch.uint8), qr.view(torch.uint8))),
                   scales_equal=bool(torch.equal(s, sr.t())))
        print("kernel", row, flush=True)
        rows.append(row)
    return rows


def measure(m: int, k: int, n: int, loop: bool) -> dict:
    o = operands(m, k, n, m + k + n)
    x, wq, grid, cols = o["x"], o["wq"], o["grid"], o["cols"]
    wb = o["w"]
    ref = exact(x, wq, grid).float()
    rows = -(-m // 4) * 4  # cuBLASLt takes M-major activation scales at a 16-byte aligned stride only
    xq, xs = ops.per_group_quant(x, B, rows)
    xs_t = xs.t()
    wc, sc = quantize_per_channel(wb)
    sc_row = sc.reshape(1, -1).float().contiguous()
    fns = {
        "bf16": lambda: F.linear(x, wb),
        "block": lambda: gemm.fp8_block_linear(x, wq, cols, B, None, grid),
        "mm_grid": lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs_t, scale_b=grid.t(), out_dtype=torch.bfloat16)[:m],
        "mm_cols": lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs_t, scale_b=cols, out_dtype=torch.bfloat16)[:m],
        "channel": lambda: gemm.fp8_linear(x, wc, sc_row, None, None, None, True),
    }
    if loop:
        fns["loop"] = lambda: gemm.block_loop_linear(x, wq, cols, B, None)
    row: dict = dict(K=k, N=n, M=m)
    loop_out = gemm.block_loop_linear(x, wq, cols, B, None).float()
    for name, fn in fns.items():
        out = fn()
        torch.cuda.synchronize()
        row[name + "_err"] = rel_err(out, ref if name not in ("bf16", "channel") else (x.double() @ wb.double().T).float())
        row[name + "_repeat_equal"] = bool(torch.equal(out, fn()))
        if name == "block":
            row["block_vs_loop"] = rel_err(out, loop_out)
        row[name] = graph_median_ms(fn, 5, 25)
    print(f"M={m} {k}x{n}: " + " | ".join(
        f"{nm} {row[nm] * 1e3:.1f}us ({row['bf16'] / row[nm]:.2f}x, err {row[nm + '_err']:.1e})" for nm in fns)
        + f" | block vs loop {row['block_vs_loop']:.1e}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=[1, 16, 32, 48, 64, 96, 128, 256, 1024, 4096])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loop-max-m", type=int, default=1024, help="time the per-block loop up to this M")
    ap.add_argument("--tag", default="", help="appended to the output files' names")
    ap.add_argument("--shapes", nargs="+", default=None, help="KxN shapes (default: the four DiT shapes)")
    args = ap.parse_args()
    shapes = DIT_SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    env = environment()
    result: dict = {"environment": env, "support": support(), "kernel": kernel_check(), "rows": []}
    for r in range(args.rounds):
        for m in args.ms:
            for k, n in shapes:
                result["rows"].append(dict(measure(m, k, n, r == 0 and m <= args.loop_max_m), round=r))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].lower().replace(" ", "-")
    stem = out / f"fp8-block-probe_{gpu}_{env['date']}{args.tag}"
    with open(stem.with_suffix(".json"), "w") as f:
        json.dump(result, f)
    stem.with_suffix(".md").write_text(table(result))


def table(result: dict) -> str:
    """Markdown: per point the fastest round's GPU time of each path (µs) and its ratio to bf16's in that round."""
    env = result["environment"]
    names = ("block", "mm_grid", "mm_cols", "channel", "loop")
    lines = [f"# fp8 block scales (128x128) on {env['gpu']} (torch {env['torch']}, CUDA {env['cuda']}, {env['date']})",
             "", "GPU time of CUDA-graph replays, µs (x bf16 in the same round; best of the rounds). `block`: the shipped",
             "route (quantization + one `_scaled_mm`); `mm_grid` / `mm_cols`: `_scaled_mm` alone with the 128x128 grid /",
             "per-row weight scales; `channel`: per-channel dynamic fp8 (the default format); `loop`: one product per",
             "K block (the reference). `vs loop`: rel err of `block` against `loop`.", "",
             "| K×N | M | bf16 | " + " | ".join(names) + " | vs loop |", "|---" * (len(names) + 4) + "|"]
    best = best_of_rounds(result["rows"], names)
    for r in result["rows"]:
        if "block_vs_loop" in r:
            b = best[(r["K"], r["N"], r["M"])]
            b["vs"] = max(b.get("vs", 0.0), r["block_vs_loop"])
    for (k, n, m), b in best.items():
        cells = [ratio_cell(b, x) for x in names]
        lines.append(f"| {k}×{n} | {m} | {b['bf16'][0] * 1e3:.1f} | " + " | ".join(cells) + f" | {b.get('vs', 0):.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
