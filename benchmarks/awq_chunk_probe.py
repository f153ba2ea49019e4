# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""AWQ at large M: can the de-quantize pass hide behind cuBLAS if the weight is handled in chunks of output rows?

    python benchmarks/awq_chunk_probe.py [--ms 1024 4096] [--chunks 2 4 8] [--rounds 2] [--out FILE.json]

Why (eighth session, H200): above M=256 AWQ de-quantizes the whole weight to bf16 (52 MB written at 5120²) and then
runs ``F.linear``; at M=1024 that reads 0.76-0.81x bf16 and at M=4096 0.84-0.98x (graphs, alternating rounds) — the
pass costs ~20 µs in front of a GEMM that needs all of it. Split the output rows in ``C`` chunks:

* ``seq{C}``: one reused ``[N/C, K]`` buffer; for each chunk, de-quantize into it, then ``torch.mm`` into the column
  view ``out[:, chunk]`` (row-major with leading dimension N: cuBLAS takes it as it is). The buffer is rewritten
  while its lines may still sit in L2 — does the pass stop costing DRAM writes?
* ``ovl{C}``: two chunk buffers; chunk i+1 is de-quantized on a side stream while chunk i's GEMM runs on the current
  stream (each GEMM waits for its own chunk; a buffer is rewritten only after the GEMM that read it).

Each variant is checked against the shipped path on fresh inputs first (rel err < 1e-3: the chunk GEMMs may run
other cuBLAS kernels). Times: do_bench medians (L2 flushed), eager and as CUDA graphs, next to bf16 ``F.linear`` in
the same process, ``--rounds`` alternating rounds per point. The profiler's kernel list of one ``seq2`` call is printed
to show there is no copy kernel behind the column views.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch
import torch.nn.functional as F
from fvq_awq.kernels.gemm import awq_dequantize

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms, median_ms, rel_err


def chunks_of(n: int, c: int) -> list[tuple[int, int]]:
    step = n // c
    return [(i * step, (i + 1) * step if i < c - 1 else n) for i in range(c)]


class Chunked:
    def __init__(self, layer, c: int, overlap: bool, m: int, dtype: torch.dtype):
        self.wk, self.zk, self.sk = layer.qweight_k, layer.zeros_k, layer.scales_k
        self.lay = layer.awq_layout
        n, k = self.lay.out_features, self.lay.in_features
        self.parts = chunks_of(n, c)
        rows = max(b - a for a, b in self.parts)
        self.bufs = [torch.empty(rows * k, dtype=dtype, device="cuda") for _ in range(2 if overlap else 1)]
        self.overlap = overlap
        self.side = torch.cuda.Stream()
        self.m, self.n, self.k, self.dtype = m, n, k, dtype

    def deq(self, i: int, buf: torch.Tensor) -> torch.Tensor:
        a, b = self.parts[i]
        w = buf[: (b - a) * self.k].view(b - a, self.k)
        return awq_dequantize(self.wk[a:b], self.zk[a:b], self.sk[a:b],
                              dataclasses.replace(self.lay, out_features=b - a), self.dtype, out=w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], self.n), dtype=self.dtype, device=x.device)
        if not self.overlap:
            for i, (a, b) in enumerate(self.parts):
                torch.mm(x, self.deq(i, self.bufs[0]).t(), out=out[:, a:b])
            return out
        main, side = torch.cuda.current_stream(), self.side
        side.wait_stream(main)  # x and out exist; the previous call's GEMMs have read the buffers
        ready = [torch.cuda.Event() for _ in self.parts]
        used = [torch.cuda.Event() for _ in self.parts]
        ws = [None] * len(self.parts)
        with torch.cuda.stream(side):
            ws[0] = self.deq(0, self.bufs[0])
            ready[0].record(side)
        for i, (a, b) in enumerate(self.parts):
            if i + 1 < len(self.parts):
                with torch.cuda.stream(side):
                    if i >= 1:
                        side.wait_event(used[i - 1])  # buffer (i+1) % 2 was read by GEMM i-1
                    ws[i + 1] = self.deq(i + 1, self.bufs[(i + 1) % 2])
                    ready[i + 1].record(side)
            main.wait_event(ready[i])
            torch.mm(x, ws[i].t(), out=out[:, a:b])
            used[i].record(main)
        main.wait_stream(side)
        return out


def kernels(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name[:120] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ms", nargs="*", type=int, default=[1024, 4096])
    ap.add_argument("--chunks", nargs="*", type=int, default=[2, 4, 8])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in DIT_SHAPES])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        k, n = (int(v) for v in shape.split("x"))
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        layer = build_layer("awq", w)
        shipped = lambda x: layer.quant_method.apply(layer, x)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            variants = {f"{kind}{c}": Chunked(layer, c, kind == "ovl", m, torch.bfloat16)
                        for c in args.chunks for kind in ("seq", "ovl")}
            if not rows:
                print("seq2 kernels:", *kernels(lambda: Chunked(layer, 2, False, m, torch.bfloat16)(x)), sep="\n  ")
            for name, fn in variants.items():
                for _ in range(2):
                    x.copy_(torch.randn_like(x))
                    err = rel_err(fn(x), shipped(x).float())
                    if err > 1e-3:
                        raise SystemExit(f"{k}x{n} M={m} {name}: rel err {err:.2e} against the shipped path")
            timed = {"bf16": lambda: F.linear(x, w), "shipped": lambda: shipped(x)}
            timed |= {name: (lambda fn=fn: fn(x)) for name, fn in variants.items()}
            rounds = []
            for _ in range(args.rounds):
                rounds.append({name: (median_ms(fn), graph_median_ms(fn)) for name, fn in timed.items()})
            row = {"k": k, "n": n, "m": m, "rounds": rounds}
            rows.append(row)
            ratio = {name: [(r["bf16"][0] / r[name][0], r["bf16"][1] / r[name][1]) for r in rounds] for name in timed}
            print(f"{k}x{n} M={m}: bf16 " + "/".join(f"{r['bf16'][0] * 1e3:.0f}" for r in rounds) + " us | " +
                  " | ".join(f"{name} {statistics.median(r[name][1] for r in rounds) * 1e3:.1f}us graph "
                             f"{min(g for _, g in ratio[name]):.2f}-{max(g for _, g in ratio[name]):.2f}x eager "
                             f"{min(e for e, _ in ratio[name]):.2f}-{max(e for e, _ in ratio[name]):.2f}x"
                             for name in timed if name != "bf16"), flush=True)
        layer = variants = None  # (free the weights and chunk buffers before the next shape)
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
