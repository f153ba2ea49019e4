"""Probe: block-scaled fp8 at small M through the W8A16 kernels (block scales applied inside the K loop).

    python benchmarks/fp8_block_small_m.py --out DIR [--ms 1 4 8 16 24 32 48 64] [--rounds 2]

Why: block-scaled checkpoints (``weight_block_size: [128, 128]``) ran, at every M, per-group activation quantization
and cuBLASLt's block-scaled ``_scaled_mm`` (H100: 1.40-1.61x bf16 at M=1), while per-channel fp8 layers at M <= 16 run
the one-launch W8A16 kernel (1.75-1.91x): the weight streamed once, widened exactly in registers, activations not
quantized. Both W8A16 kernels now take block scales (``[K/128, N]``, each K block's sums times its scales).

Each path is checked before it is timed, on fresh inputs: the W8A16 kernels against float64 math of the unquantized
activations and the de-quantized weight, the ``_scaled_mm`` route against float64 math of its own fp8 operands.

Timed (CUDA-graph replays, L2 emptied before each): bf16 ``F.linear``; ``route``: what the layer runs now
(``gemm.fp8_block_linear``); ``mm``: the block route the layer took so far (quantization + one ``_scaled_mm``, the
grid or per-row scales as the layer would pick);
``w8_cuda``: ``w8_small_m_cuda.linear`` with block scales (the CUDA C++ kernel where its rule picks a tile, else the
Triton kernel); ``w8_triton``: the Triton kernel alone; ``channel``: the per-channel dynamic fp8 layer's path.

Writes ``fp8-block-small-m_<gpu>_<date>.{json,md}``.
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
from fastvideo_quant.kernels import w8_small_m_cuda
from fastvideo_quant.kernels.small_m import small_m_linear

B = 128
NAMES = ("route", "mm", "w8_cuda", "w8_triton", "channel")


def _mm_route(x: torch.Tensor, wq: torch.Tensor, cols: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
    """The block route without its W8A16 step: per-group quantization and the block-scaled ``_scaled_mm``."""
    saved, gemm.BLOCK_W8A16_MAX_M = gemm.BLOCK_W8A16_MAX_M, 0
    try:
        return ops.block_scaled_mm(x, wq, cols, grid, None)
    finally:
        gemm.BLOCK_W8A16_MAX_M = saved


def measure(m: int, k: int, n: int, seed: int) -> dict:
    torch.manual_seed(seed)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    wq, grid = quantize_per_block(w, (B, B))
    cols = expand_block_scale(grid, (B, B), (n, -(-k // B) * B))[:, ::B].t().contiguous()  # [K/128, N]
    use_grid = grid.contiguous() if (k // B) % 4 == 0 and n % B == 0 else None  # as the layer's fp8_block_grid
    wc, sc = quantize_per_channel(w)
    sc_row = sc.reshape(1, -1).float().contiguous()
    wd = (wq.double() * expand_block_scale(grid.double(), (B, B), (n, k))).t()
    fns = {
        "bf16": lambda x: F.linear(x, w),
        "route": lambda x: gemm.fp8_block_linear(x, wq, cols, B, None, use_grid),
        "mm": lambda x: _mm_route(x, wq, cols, use_grid),
        "w8_cuda": lambda x: w8_small_m_cuda.linear(x, wq, cols, None, B),
        "w8_triton": lambda x: small_m_linear(x, wq, cols, None, block_k=B),
        "channel": lambda x: gemm.fp8_linear(x, wc, sc_row, None, None, None, True),
    }
    row: dict = dict(K=k, N=n, M=m)
    for name, fn in fns.items():
        errs = []
        for _ in range(2):  # fresh inputs each check
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            if name == "mm" or name == "route" and not (m <= gemm.BLOCK_W8A16_MAX_M
                                                        and w8_small_m_cuda.takes(x, wq, cols, B)):
                xq, xs = ops.per_group_quant_ref(x, B)
                ref = (xq.double() * xs.double().repeat_interleave(B, dim=1)[:, :k]) @ wd
            elif name in ("bf16", "channel"):
                ref = x.double() @ w.double().t()
            else:
                ref = x.double() @ wd
            errs.append(rel_err(fn(x), ref.float()))
        row[name + "_err"] = max(errs)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        row[name] = graph_median_ms(lambda fn=fn, x=x: fn(x), 5, 25)
    if m <= 16:  # the CUDA kernel's tile (its rule's) and registers a thread, block and per-channel scales
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for name, plan in (("block", w8_small_m_cuda._plan(x, wq, cols, B)), ("channel", w8_small_m_cuda._plan(x, wc, sc_row))):
            row[f"regs_{name}"] = None if plan is None else plan[0].kernel.registers
        row["tile"] = w8_small_m_cuda.rule(m, k, n, torch.cuda.get_device_properties(0).multi_processor_count)
    print(f"M={m} {k}x{n}: " + " | ".join(
        f"{nm} {row[nm] * 1e3:.1f}us ({row['bf16'] / row[nm]:.2f}x, err {row[nm + '_err']:.1e})" for nm in fns)
        + f" | tile {row.get('tile')} regs {row.get('regs_block')} / {row.get('regs_channel')}", flush=True)
    return row


#: Tiles timed by --tiles (the rule's candidates at M <= 8 and at M=9-16).
TILES = [dict(w8_small_m_cuda.RULE), {"rowt": 1, "kw": 4, "ft": 1, "u": 1}, dict(w8_small_m_cuda.RULE_M8_CLUSTER),
         *(dict(t) for t, _ in w8_small_m_cuda.RULE_TILES_M16), {"rowt": 1, "kw": 8, "ft": 2, "u": 1}]


def tiles(m: int, k: int, n: int, seed: int) -> list[dict]:
    """Every :data:`TILES` tile of the CUDA kernel with block and per-channel scales (each checked, then timed)."""
    torch.manual_seed(seed)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    wq, grid = quantize_per_block(w, (B, B))
    cols = expand_block_scale(grid, (B, B), (n, k))[:, ::B].t().contiguous()
    wd = (wq.double() * expand_block_scale(grid.double(), (B, B), (n, k))).t()
    wc, sc = quantize_per_channel(w)
    sc_row = sc.reshape(-1).float().contiguous()
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    rows = []
    for tile in TILES:
        out = {}
        for name, args, ref in (("block", (wq, cols, None), x.double() @ wd),
                                ("channel", (wc, sc_row, None), x.double() @ (wc.double() * sc_row.double()[:, None]).t())):
            bk = B if name == "block" else 0
            try:
                err = rel_err(w8_small_m_cuda.w8_small_m_cuda(x, *args, block_k=bk, **tile), ref.float())
            except ValueError as e:  # (a tile the kernel refuses at this shape)
                out[name] = str(e)[:80]
                continue
            out[name] = graph_median_ms(lambda a=args, b=bk, t=tile: w8_small_m_cuda.w8_small_m_cuda(x, *a, block_k=b, **t),
                                        5, 25)
            out[name + "_err"] = err
        rows.append(dict(K=k, N=n, M=m, tile=tile, **out))
        print("tile", rows[-1], flush=True)
    return rows


def table(result: dict) -> str:
    """Markdown: per point the fastest round's GPU time of each path (µs), its ratio to bf16's in that round, and the
    largest check error of the rounds."""
    env = result["environment"]
    lines = [f"# Block-scaled fp8 at small M on {env['gpu']} (torch {env['torch']}, CUDA {env['cuda']}, {env['date']})",
             "", "GPU time of CUDA-graph replays, µs (x bf16 in the same round; best of the rounds). `route`: the layer's",
             "path now; `mm`: quantization + block-scaled `_scaled_mm` (the route before); `w8_cuda` / `w8_triton`: the",
             "W8A16 kernels with block scales",
             "(activations not quantized); `channel`: per-channel dynamic fp8. `err`: largest rel err against float64",
             "math (W8A16: unquantized activations; `mm`: its fp8 operands).", "",
             "| K×N | M | bf16 | " + " | ".join(NAMES) + " | err w8 | err mm |", "|---" * (len(NAMES) + 5) + "|"]
    best = best_of_rounds(result["rows"], NAMES)
    for r in result["rows"]:
        b = best[(r["K"], r["N"], r["M"])]
        b["err_w8"] = max(b.get("err_w8", 0.0), r["w8_cuda_err"], r["w8_triton_err"])
        b["err_mm"] = max(b.get("err_mm", 0.0), r["mm_err"], r["route_err"])
    for (k, n, m), b in best.items():
        lines.append(f"| {k}×{n} | {m} | {b['bf16'][0] * 1e3:.1f} | " + " | ".join(ratio_cell(b, x) for x in NAMES)
                     + f" | {b['err_w8']:.1e} | {b['err_mm']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=[1, 4, 8, 16, 24, 32, 48, 64])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tag", default="", help="appended to the output files' names")
    ap.add_argument("--tiles", nargs="*", type=int, default=[], help="also time every TILES tile at these M")
    args = ap.parse_args()
    env = environment()
    result: dict = {"environment": env, "rows": [], "tiles": []}
    for m in args.tiles:
        for k, n in DIT_SHAPES:
            result["tiles"] += tiles(m, k, n, m + k + n)
    for r in range(args.rounds):
        for m in args.ms:
            for k, n in DIT_SHAPES:
                result["rows"].append(dict(measure(m, k, n, 1000 * r + m + k + n), round=r))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"fp8-block-small-m_{env['gpu'].lower().replace(' ', '-')}_{env['date']}{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result))
    stem.with_suffix(".md").write_text(table(result))


if __name__ == "__main__":
    main()
