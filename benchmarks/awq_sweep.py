# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""H100 sweep of the AWQ kernels' variants and block sizes (one device call; writes a table).

    python benchmarks/awq_sweep.py --out $OUT/awq_sweep.json --tuning $OUT/tuning.json --budget-s 360

Every configuration is checked against a float32 reference on fresh random inputs (not zeros)
before it is timed; bf16 ``F.linear`` is timed in the same run. The most important points run
first (M=1, then M=16) and results are written after each point, so a run cut short by
``--budget-s`` still leaves a usable table. The winners become ``fvq_awq/kernels/tuning.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from fvq_awq.format import pack_awq
from fvq_awq.kernels.gemm import awq_dequantize, awq_gemm, awq_gemm_t
from fvq_awq.kernels.gemv import awq_gemv
from fvq_awq.layout import dequantize_kernel, repack_to_kernel

from fastvideo_quant.bench import graph_median_ms, host_us, median_ms, rel_err

SHAPES = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]
MS = (1, 16, 4, 4096, 1024, 64, 256)  # M=4 after M=1 and 16: it tries their winners
KEYS = {"bm": "block_m", "bn": "block_n", "sk": "split_k", "r": "r", "w": "num_warps", "s": "num_stages",
        "pf": "prefetch", "pk": "packed", "ch": "chains", "si": "scale_in"}


def bench(fn) -> float:
    """Short do_bench median in ms (the sweep times hundreds of configs)."""
    return median_ms(fn, 5, 20)


def make_layer(K: int, N: int, group: int = 128):
    q = torch.randint(0, 16, (K, N))
    z = torch.randint(0, 16, (K // group, N))
    s = (torch.rand(K // group, N) * 0.02 + 0.005).half()
    wk, zk, sk, lay = repack_to_kernel(pack_awq(q), pack_awq(z), s, group)
    wk, zk, sk = wk.cuda(), zk.cuda(), sk.cuda()
    return wk, zk, sk, lay, dequantize_kernel(wk, zk, sk, lay)


def entry(name: str) -> dict:
    """``"gemv bn8 r4 w4 s3"`` → the dispatch table entry (kind + kernel kwargs)."""
    words = name.replace("+cublas", "").split()
    out = {"kind": words[0]}
    for word in words[1:]:
        key = word.rstrip("0123456789")
        out[KEYS[key]] = int(word[len(key):])
    return out


def runner(name: str, wk, zk, sk, lay):
    """The callable ``f(x)`` for a configuration name."""
    if name == "dispatch":  # what the plugin runs: the shipped table, or the rules for shapes not in it
        from fvq_awq.kernels.dispatch import awq_linear_cuda

        return lambda x: awq_linear_cuda(x, wk, zk, sk, lay)
    e = entry(name)
    kind = e.pop("kind")
    if kind == "gemv":
        return lambda x: awq_gemv(x, wk, zk, sk, lay, None, **e)
    if kind == "gemm":
        return lambda x: awq_gemm(x, wk, zk, sk, lay, None, **e)
    if kind == "gemm_t":
        return lambda x: awq_gemm_t(x, wk, zk, sk, lay, None, **e)
    return lambda x: F.linear(x, awq_dequantize(wk, zk, sk, lay, x.dtype, **e))


# GEMV tiles (block_n, r, num_warps, num_stages, split_k): the round-2 grid around its winner (bn8 r4 w4 s3), and
# split-K (2026-12, H200: Nsight Compute showed the unsplit grid at 27% achieved occupancy; the sweep then found
# split-K slower for every tile of <= 8 rows, see awq_notes.md).
GEMV = [(bn, r, w, 3, sk) for bn, r, w in itertools.product((4, 8, 16), (1, 2, 4), (2, 4)) for sk in (1, 2, 4, 8)]
GEMV += [(bn, r, w, s, 1) for bn, r, w in ((8, 4, 4), (8, 8, 4), (4, 8, 8), (16, 2, 4)) for s in (1, 2, 4)]
# Round 3's fastest M=16 configurations (results/awq-sweep_*: the full grid), re-measured each run.
GEMM_T_BEST = ["bn64 sk8 r1 w4 s3", "bn64 sk4 r1 w4 s3", "bn32 sk4 r1 w2 s3", "bn128 sk8 r1 w4 s3",
               "bn64 sk1 r1 w4 s3", "bn64 sk1 r1 w2 s3", "bn128 sk1 r1 w4 s3", "bn64 sk4 r1 w4 s4",
               "bn64 sk4 r1 w2 s3", "bn32 sk4 r1 w2 s6", "bn64 sk2 r2 w4 s3", "bn128 sk4 r2 w4 s3",
               # since gemm_t's split-K reduces in the same launch (no zero fill, no cast kernel): more splits
               "bn32 sk8 r1 w2 s3", "bn32 sk8 r1 w4 s3", "bn64 sk2 r1 w4 s3", "bn128 sk2 r1 w4 s3"]


# M=1 on the tensor cores (x padded to 16 rows) since gemm_t de-quantizes in packed 16-bit math (2026-12-03: the
# loop body 541 -> 293 instructions): tiles by rows per program and split-K.
GEMM_T_M1 = [f"gemm_t bm16 bn{bn} sk{sk} r1 w{w} s3" for bn, w in ((32, 2), (64, 4), (128, 4)) for sk in (1, 2, 4, 8, 16)]


def candidates(M: int, best: dict) -> list[str]:
    gemv = [f"gemv bn{bn} r{r} w{w} s{s} sk{sk}" for bn, r, w, s, sk in GEMV]
    gemm_t = [f"gemm_t bm16 {c}{pf}" for c in GEMM_T_BEST for pf in ("", " pf1")]
    if M == 1:
        return gemv + GEMM_T_M1
    if M == 16:
        return gemm_t
    if M == 4:
        return best.get(1, [])[:6] + best.get(16, [])[:6]
    mid = [f"gemm_t bm{bm} bn{bn} sk{sk} r1 w4 s3" for bm, bn, sk in itertools.product((32, 64), (64, 128), (1, 2))]
    deq = [f"dequant bn{bn} r{r} w{w}+cublas" for bn, r, w in ((16, 4, 4), (32, 2, 4), (32, 4, 8), (64, 2, 8))]
    big = ["gemm_t bm128 bn128 sk1 r1 w8 s4"]  # fused at large M: 0.24-0.38x bf16 in round 3 (kept as a probe)
    if M == 64:
        return best.get(16, [])[:4] + mid + deq[:2]
    if M == 256:
        return mid + deq
    return deq + big


def check(out: torch.Tensor, x: torch.Tensor, W: torch.Tensor) -> float:
    ref = x.float() @ W.t()
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")
    err = rel_err(out, ref)
    if not err < 1e-2:
        raise RuntimeError(f"wrong result: rel err {err:.3e}")
    return err


def bench_bf16(x: torch.Tensor, W: torch.Tensor) -> float:
    wbf = W.to(torch.bfloat16)
    return bench(lambda: F.linear(x, wbf))


def copy_bandwidth() -> float:
    a = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))
    return 2 * a.numel() / (t * 1e-3) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="awq_sweep.json")
    ap.add_argument("--tuning", default="tuning.json", help="where to write the dispatch table")
    ap.add_argument("--budget-s", type=float, default=360.0)
    ap.add_argument("--ms", type=int, nargs="*", default=list(MS), help="M values to sweep, in this order")
    ap.add_argument("--base", help="a previous table whose entries stand where this run measured nothing")
    ap.add_argument("--cfgs", nargs="*", help="only these configurations (names as in the log), for every M")
    ap.add_argument("--no-dispatch-check", action="store_true", help="skip the dispatcher check at M=1/16 after it")
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in SHAPES],
                    help="KxN layers (in x out features) to sweep; default the four DiT shapes")
    ap.add_argument("--group", type=int, default=128, help="quantization group size of the swept layers")
    args = ap.parse_args()
    t_end = time.time() + args.budget_s
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes]
    table = json.loads(open(args.base).read()) if args.base else {}
    res, best_names = [], {}
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_TBps": copy_bandwidth(),
            "group": args.group}
    print(f"copy bandwidth {meta['copy_TBps']:.2f} TB/s (read+write)", flush=True)
    layers = {}
    for M in args.ms:
        ranked = []
        for K, N in shapes:
            if time.time() > t_end:
                break
            if (K, N) not in layers:
                layers[(K, N)] = make_layer(K, N, args.group)
            wk, zk, sk, lay, W = layers[(K, N)]
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            t_bf = bench_bf16(x, W)
            rows = []
            for name in args.cfgs or candidates(M, best_names):
                if time.time() > t_end:
                    break
                f = runner(name, wk, zk, sk, lay)
                try:
                    xc = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)  # fresh inputs per check
                    err = check(f(xc), xc, W)
                    t = bench(lambda: f(x))
                except Exception as exc:  # noqa: BLE001 - a config that fails is logged and skipped
                    res.append({"K": K, "N": N, "M": M, "cfg": name, "error": str(exc)[:300]})
                    continue
                row = {"K": K, "N": N, "M": M, "cfg": name, "us": t * 1e3, "bf16_us": t_bf * 1e3,
                       "speedup": t_bf / t, "err": err}
                res.append(row)
                rows.append(row)
            rows.sort(key=lambda r: r["us"])
            picks = [r for r in rows if r["cfg"] != "dispatch"]
            if picks:
                table[f"{K}x{N}x{M}"] = entry(picks[0]["cfg"])
            if rows:
                print(f"K={K} N={N} M={M}: bf16 {t_bf*1e3:.1f} us | " + " | ".join(
                    f"{r['cfg']} {r['us']:.1f} ({r['speedup']:.2f}x)" for r in rows[:3]), flush=True)
            ranked += [r["cfg"] for r in rows[:6]]
        best_names[M] = list(dict.fromkeys(ranked))
        with open(args.tuning, "w") as fh:
            json.dump(table, fh, indent=1, sort_keys=True)
        with open(args.out, "w") as fh:
            json.dump({**meta, "rows": res}, fh)
    print(f"done, {len(res)} rows, {sum('error' in r for r in res)} errors", flush=True)
    if not args.no_dispatch_check:
        dispatch_check(args.tuning, layers)


def graph_ms(fn) -> float:
    """Median CUDA-graph replay time of ``fn`` (GPU work alone, no host launch cost)."""
    return graph_median_ms(fn, 5, 20)


def dispatch_check(tuning: str, layers: dict) -> None:
    """The dispatcher with the new table: checked, then eager (do_bench) vs CUDA-graph replay vs host µs/call."""
    import os

    os.environ["FVQ_AWQ_TUNING"] = tuning
    from fvq_awq.kernels.dispatch import awq_linear_cuda

    for (K, N), (wk, zk, sk, lay, W) in layers.items():
        for M in (1, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            f = lambda: awq_linear_cuda(x, wk, zk, sk, lay)  # noqa: E731
            err = check(f(), x, W)
            t_bf = bench_bf16(x, W)
            t_e, t_g = bench(f), graph_ms(f)
            print(f"dispatch K={K} N={N} M={M}: bf16 {t_bf*1e3:.1f} us, eager {t_e*1e3:.1f} us ({t_bf/t_e:.2f}x), "
                  f"graph {t_g*1e3:.1f} us ({t_bf/t_g:.2f}x), host {host_us(f, calls=200):.1f} us/call, err {err:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
