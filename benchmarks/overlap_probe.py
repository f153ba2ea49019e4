# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""fp8 at large M: can the per-token quantization of one half of the rows hide behind the GEMM of the other half?

    python benchmarks/overlap_probe.py [--ms 1024 4096] [--parts 2 4] [--out FILE.json]

Why (seventh session, H200): fp8 5120x5120 reads 1.34-1.36x bf16 at M=1024 (target 1.4x) and 1.54-1.58x at M=4096
(1.6x); the quantization kernel (9.6 / 22 µs) runs before row-wise ``torch._scaled_mm`` with nothing beside it. Split
the rows in ``P`` parts: part i's GEMM runs on the current stream while part i+1 is quantized on a side stream (each
GEMM waits for its own part's quantization only; outputs written in place through ``_scaled_mm``'s ``out=``). It can
only gain if the GEMM leaves room on the multiprocessors for the quantization kernel: the profiler's kernel list
(grid sizes) is printed to show whether torch's row-wise kernel is persistent.

Checked against the unsplit path on fresh inputs (rel err < 1e-3: the parts may run other GEMM tiles) before timing;
eager and CUDA-graph medians (do_bench, L2 flushed) next to bf16 ``F.linear`` in the same process.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, graph_median_ms, median_ms, rel_err
from fastvideo_quant.kernels.per_token_quant import per_token_quant

FP8 = torch.float8_e4m3fn


def unsplit(x, wq, ws):
    xq, xs = per_token_quant(x, FP8)
    return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True)


def split(x, wq, ws, parts: int, side: torch.cuda.Stream):
    m = x.shape[0]
    out = torch.empty((m, wq.shape[0]), dtype=torch.bfloat16, device=x.device)
    rows = [(i * m // parts, (i + 1) * m // parts) for i in range(parts)]
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    quantized, events = [], []
    with torch.cuda.stream(side):
        for a, b in rows:
            quantized.append(per_token_quant(x[a:b], FP8))
            ev = torch.cuda.Event()
            ev.record(side)
            events.append(ev)
    for (a, b), (xq, xs), ev in zip(rows, quantized, events, strict=True):
        main.wait_event(ev)
        torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True,
                         out=out[a:b])
    if not torch.cuda.is_current_stream_capturing():
        for xq, xs in quantized:  # the side stream's buffers are read on the main stream
            xq.record_stream(main)
            xs.record_stream(main)
    return out


def kernels(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA], record_shapes=False) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name[:160] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ms", nargs="*", type=int, default=[1024, 4096])
    ap.add_argument("--parts", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--out")
    args = ap.parse_args()
    side = torch.cuda.Stream()
    rows = []
    for k, n in DIT_SHAPES:
        w = torch.randn(n, k, device="cuda") * k**-0.5
        ws = (w.abs().amax(1) / 448.0).float()
        wq = (w / ws[:, None]).to(FP8)
        ws = ws[None, :].contiguous()
        wb = w.bfloat16()
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            if not rows:
                print("\n".join(kernels(lambda: unsplit(x, wq, ws))), flush=True)
            row = {"k": k, "n": n, "m": m, "bf16": (median_ms(lambda: F.linear(x, wb)),
                                                     graph_median_ms(lambda: F.linear(x, wb))),
                   "unsplit": (median_ms(lambda: unsplit(x, wq, ws)), graph_median_ms(lambda: unsplit(x, wq, ws)))}
            for p in args.parts:
                for _ in range(2):
                    x.copy_(torch.randn_like(x))
                    err = rel_err(split(x, wq, ws, p, side), unsplit(x, wq, ws).float())
                    if err > 1e-3:
                        raise SystemExit(f"{k}x{n} M={m} parts {p}: rel err {err:.2e} against the unsplit path")
                row[f"split{p}"] = (median_ms(lambda: split(x, wq, ws, p, side)),
                                    graph_median_ms(lambda: split(x, wq, ws, p, side)))
            rows.append(row)
            be, bg = row["bf16"]
            print(f"{k}x{n} M={m}: bf16 {be * 1e3:.1f}/{bg * 1e3:.1f}us | " + " | ".join(
                f"{name} {t[0] * 1e3:.1f}/{t[1] * 1e3:.1f}us ({be / t[0]:.2f}x/{bg / t[1]:.2f}x)"
                for name, t in row.items() if name.startswith(("unsplit", "split"))), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
