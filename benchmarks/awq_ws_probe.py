# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""The warp-specialized AWQ small-M kernel (``benchmarks/awq_ws.cu``: one loader warp filling a shared-memory ring with
bulk copies, ``p`` consumer warps computing from it) against the shipped route and bf16, in the chain.

    timeout 400 python benchmarks/awq_ws_probe.py --out DIR [--check-only] [--ms 1 8 16] [--variants "p4 s4 cs1" ...]

First correctness on fresh random inputs against float32 math of the de-quantized weight (every variant; M 1, 5, 8,
9, 16; K with a partial last stage; groups of 128 and 256; bias; bf16 and fp16; CUDA-graph replays at K=5120, where
the ring wraps; each output finite, within 5e-3 relative error in norm and 1e-2 of the largest output element by
element). Then, per
DiT shape and M, each variant and the shipped dispatcher route timed in the chain (``fastvideo_quant.bench``: layers
of distinct weights, one pass >= 3x L2, back to back in one CUDA graph) with bf16 ``F.linear`` in the same process.
Prediction (``benchmarks/awq_notes.md``, twenty-second session): ~5.5 us a layer at 5120^2 M=1 (shipped 8.5, the
loads alone 5.0, bf16 15.7). Writes ``awq-ws-probe_<gpu>_<date>.json``.

Status: ran on the H200 on 2026-12-05 (``results/awq-ws-probe_nvidia-h200_2026-12-05.log``): correct (180 checks, max
relative error 1.8e-3, the ring's wrap included) but slower than the shipped kernel at every DiT shape and M in 1, 8,
16 — its best variant takes 1.12-1.20x the shipped time at M=1 (9.5 us against 8.5 at 5120^2; the prediction was 5.5),
1.02-1.18x at M=8 and 1.32-1.44x at M=16. Not shipped; see ``awq_notes.md`` (twenty-fifth session). A wait that never
ends traps (``mbar_wait``'s spin limit) instead of hanging the device call; run the probe under ``timeout`` all the
same.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from awq_sweep import make_layer

from fastvideo_quant import bench
from fastvideo_quant.kernels.cuda_rtc import SMALL_M_COMMON, compile_kernel, source_with

HERE = Path(__file__).parent
AWQ_SOURCE = HERE.parent / "plugins" / "fvq_awq" / "kernels" / "awq_small_m.cu"
WS_SOURCE = HERE / "awq_ws.cu"
SIGNATURE = "pppppp" + "i" * 7  # x, qweight_k, scales_k, zeros_k, bias, out; M K N sx G bpg has_bias


def parse(variant: str) -> dict:
    """``"p4 s4 cs2"`` → {"p": 4, "s": 4, "cs": 2}."""
    return {w.rstrip("0123456789"): int(w.lstrip("abcdefghijklmnopqrstuvwxyz")) for w in variant.split()}


@functools.lru_cache(maxsize=64)
def launcher(index: int, bf16: bool, mt: int, bpg1: bool, p: int, s: int, cs: int):
    defines = {"FVQ_BF16": int(bf16), "FVQ_MT": mt, "FVQ_BPG1": int(bpg1), "FVQ_WS_P": p, "FVQ_WS_S": s,
               "FVQ_CS": cs, "FVQ_ROWT": 1, "FVQ_FT": 1, "FVQ_KW": 1, "FVQ_U": 1}
    source = source_with(SMALL_M_COMMON, AWQ_SOURCE, WS_SOURCE)
    return compile_kernel(source, "awq_ws", index, defines).launcher(SIGNATURE, (32 * (1 + p), 1, 1))


def awq_ws(x, wk, zk, sk, lay, bias=None, p=4, s=4, cs=1):
    M, K, N = x.shape[0], lay.in_features, lay.out_features
    if not (M <= 16 and K % 128 == 0 and lay.group % 128 == 0 and N % 16 == 0 and lay.bk8 == 16 and x.stride(1) == 1
            and x.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0):
        raise ValueError(f"awq_ws takes M <= 16, K and groups in 128s, N in 16s, 128-input pack blocks, x rows 8-byte "
                         f"aligned; found M={M} K={K} N={N} {lay} x strides {x.stride()}")
    launch = launcher(x.device.index, x.dtype == torch.bfloat16, 1 if M <= 8 else 2, lay.group == 128, p, s, cs)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    b = bias.to(x.dtype).contiguous() if bias is not None else out
    launch((N // 16, cs, 1), torch.cuda.current_stream().cuda_stream, x.data_ptr(), wk.data_ptr(), sk.data_ptr(),
           zk.data_ptr(), b.data_ptr(), out.data_ptr(), M, K, N, x.stride(0), K // lay.group, lay.group // 128,
           int(bias is not None))
    return out


def check(out: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    """``out`` against float32 ``ref``: finite, relative error in norm < 5e-3 and every element within 1e-2 of the
    largest reference element (a wrong tile or block of K is ~0.05 or more in norm); raises naming ``what``."""
    err = bench.rel_err(out, ref)
    worst = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    if not (torch.isfinite(out).all() and err < 5e-3 and worst < 1e-2):
        raise RuntimeError(f"awq_ws {what}: rel err {err:.3e}, worst element {worst:.3e} of the largest")
    return err


def correctness(variants: list[dict]) -> dict:
    errs = {}
    for K, N, group in ((1152, 528, 128), (2048, 1024, 256), (5120, 256, 128)):
        wk, zk, sk, lay, W = make_layer(K, N, group)
        bias = torch.randn(N, device="cuda")
        for v in variants:
            for M in (1, 5, 8, 9, 16):
                for dt in (torch.bfloat16, torch.float16):
                    x = torch.randn(M, K, device="cuda", dtype=dt)
                    out = awq_ws(x, wk, zk, sk, lay, bias, **v)
                    ref = x.float() @ W.t() + bias.to(dt).float()
                    what = f"{v} K={K} N={N} group={group} M={M} {dt}"
                    errs[f"{v} {K}x{N} g{group} M{M} {dt}"] = check(out, ref, what)
    wk, zk, sk, lay, W = make_layer(5120, 1024)  # (40 blocks of K: the ring wraps for every variant)
    for M in (1, 16):
        x = torch.randn(M, 5120, device="cuda", dtype=torch.bfloat16)
        for v in variants:
            awq_ws(x, wk, zk, sk, lay, **v)  # (compiled and loaded before capture)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                y = awq_ws(x, wk, zk, sk, lay, **v)
            for r in range(20):
                x.copy_(torch.randn_like(x))
                g.replay()
                torch.cuda.synchronize()
                check(y, x.float() @ W.t(), f"{v} M={M}: graph replay {r}")
    return errs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in bench.DIT_SHAPES])
    ap.add_argument("--variants", nargs="+", default=["p4 s4 cs1", "p4 s6 cs1", "p8 s3 cs1", "p2 s8 cs1",
                                                      "p4 s4 cs2", "p4 s3 cs3"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--check-only", action="store_true", help="the correctness checks alone, nothing timed")
    args = ap.parse_args()
    from fvq_awq.kernels.dispatch import awq_linear_cuda
    from fvq_awq.layout import KernelLayout, dequantize_kernel

    variants = [parse(v) for v in args.variants]
    errs = correctness(variants)
    print(f"correctness: {len(errs)} checks, max rel err {max(errs.values()):.2e}", flush=True)
    if args.check_only:
        return
    l2 = bench.l2_bytes()
    points = []
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        n = max(4, math.ceil(3 * l2 / (K * N // 2)))
        n_bf16 = max(4, math.ceil(3 * l2 / (2 * K * N)))
        gen = torch.Generator(device="cuda").manual_seed(0)
        lay = KernelLayout(K, N, 128, 16)  # (the kernel's layout: rows of K/2 bytes, one scale a 128-input block)
        layers = [(torch.randint(-2**31, 2**31 - 1, (N, K // 8), device="cuda", dtype=torch.int32, generator=gen),
                   torch.randint(0, 16, (N, K // 128), device="cuda", dtype=torch.uint8, generator=gen),
                   (torch.rand(N, K // 128, device="cuda", generator=gen) * 0.02 + 0.001).half()) for _ in range(n)]
        wb = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(n_bf16)]
        for M in args.ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ dequantize_kernel(*layers[0], lay).float().t()
            shipped = awq_linear_cuda(x, *layers[0], lay)
            check(shipped, ref, f"the shipped route {K}x{N} M={M}")
            calls = {"shipped": [lambda w=w, z=z, s=s: awq_linear_cuda(x, w, z, s, lay) for w, z, s in layers]}
            for v in variants:
                name = " ".join(f"{k}{val}" for k, val in v.items())
                check(awq_ws(x, *layers[0], lay, **v), ref, f"{name} {K}x{N} M={M}")
                calls[name] = [lambda w=w, z=z, s=s, v=v: awq_ws(x, w, z, s, lay, **v) for w, z, s in layers]
            graphs = {k: (bench.capture_chain(fns), n) for k, fns in calls.items()}
            graphs["bf16"] = (bench.capture_chain([lambda w=w: F.linear(x, w) for w in wb]), n_bf16)
            times = bench.chain_rounds_us(graphs, args.rounds, args.replays)
            med = {k: statistics.median(v) for k, v in times.items()}
            points.append({"K": K, "N": N, "M": M, "layers": n, "us": med, "rounds_us": times})
            print(f"{K}x{N} M={M}: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
                  + f" µs; best vs bf16 {med['bf16'] / min(v for k, v in med.items() if k != 'bf16'):.2f}×",
                  flush=True)
            del graphs
        del layers, wb
        torch.cuda.empty_cache()
    print("wrote", bench.write_json(args.out, "awq-ws-probe", {"l2_bytes": l2, "variants": args.variants,
                                                              "correctness": errs, "points": points}))


if __name__ == "__main__":
    main()
