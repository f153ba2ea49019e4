# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""The CUDA C++ small-M AWQ kernel (``fvq_awq/kernels/awq_small_m.cu``) against the shipped Triton route and bf16.

    python benchmarks/awq_cuda_probe.py --out-dir $OUT [--ms 1 16] [--budget-s 300]

First correctness, on fresh random inputs against float32 math of the de-quantized weight: every M from 1 to 16,
bf16 and fp16, bias, groups 128 / 256 / whole input, split K, a CUDA-graph replay with split K, and two runs bit for
bit (the split-K sum is in split order). Then, per DiT shape and M, every tile (warps a block x blocks loaded ahead x
split) checked and timed as a CUDA-graph replay (do_bench, L2 flushed), with bf16 ``F.linear`` and the shipped route
(``awq_linear_cuda``) timed in the same process. Writes ``awq-cuda-probe_<gpu>_<date>.json``.

Dropped variants this probe measured (code in git): the cp.async ring (``results/…_cpasync.json``, at 90f7370) and
the per-block zero point / x loaded ahead (``…_zfold-xpf.json``, at f8decd7); a weight ring in shared memory filled by
bulk asynchronous copies (``…_tma.json``, at 6e5dac4: ``tma``/``tc`` tile words); two accumulators a tile
(``…_accn.json``, at 668941e: ``accn2``); 16 K parts a column (``…_kw16.json``:
``kw`` 16 was only a wider check in ``awq_small_m_cuda``). ``--kw`` / ``--ft`` sweep the in-block K parts and the
feature tiles a warp (fifteenth session: ``…_kw.json``, ``…_kw-ft.json``, ``…_ft4-tree.json``). ``--tiles`` names
tiles one by one instead, e.g. ``"rowt2 u1 kw4 ft2 split_k3 cluster1 occ2"`` (sixteenth session: K split over a
thread-block cluster, ``…_cluster.json``, ``…_cluster2.json``; with ``--shapes``, the rules on untabled shapes,
``…_cluster-rules{,2}.json``). Each point also times the Triton rule (what a ``"cuda"`` pick falls back to).
"""

from __future__ import annotations

import argparse
import itertools
import re
import time

import torch
import torch.nn.functional as F
from awq_sweep import make_layer
from fvq_awq.kernels import dispatch
from fvq_awq.kernels.dispatch import awq_linear_cuda
from fvq_awq.kernels.gemm import awq_gemm_t
from fvq_awq.kernels.small_m_cuda import _launcher, awq_small_m_cuda

from fastvideo_quant.bench import graph_median_ms, host_us, rel_err, write_json
from fastvideo_quant.kernels.split_k import sm_count

SHAPES = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]


def checked(out: torch.Tensor, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None,
            tol: float = 1e-2) -> float:
    ref = x.float() @ W.t() + (0 if bias is None else bias.float())
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")
    err = rel_err(out, ref)
    if not err < tol:
        raise RuntimeError(f"wrong result: rel err {err:.3e}")
    return err


def correctness() -> dict:
    res = {}
    wk, zk, sk, lay, W = make_layer(1024, 512)
    for M in range(1, 17):
        for dt in (torch.bfloat16, torch.float16):
            x = torch.randn(M, 1024, device="cuda", dtype=dt)
            for split in (1, 3, 8):
                res[f"M{M} {dt} split{split}"] = checked(awq_small_m_cuda(x, wk, zk, sk, lay, split_k=split), x, W)
    for M in (1, 5, 9, 16):  # warps splitting a block's K range (kw), with and without split K; K=1024 has 8 blocks
        x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
        for kw, rowt, split, ft in ((2, 4, 1, 1), (4, 2, 3, 1), (4, 4, 1, 1), (2, 1, 8, 1), (8, 2, 1, 1),
                                    (1, 4, 1, 2), (4, 2, 3, 2), (8, 1, 2, 2), (8, 1, 1, 4), (2, 1, 2, 4)):
            res[f"M{M} kw{kw} rowt{rowt} split{split} ft{ft}"] = checked(
                awq_small_m_cuda(x, wk, zk, sk, lay, rowt=rowt, split_k=split, kw=kw, ft=ft), x, W)
    wk4, zk4, sk4, lay4, W4 = make_layer(1024, 528)  # 33 feature tiles: the last two-tile column is half outside
    bias4 = torch.randn(528, device="cuda")
    for M in (3, 12):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)
        for kw, rowt, split, ft in ((1, 1, 1, 2), (2, 4, 3, 2), (4, 1, 2, 2), (8, 1, 1, 4), (1, 1, 2, 4)):
            res[f"N528 M{M} ft{ft} kw{kw} rowt{rowt} split{split}"] = checked(
                awq_small_m_cuda(x, wk4, zk4, sk4, lay4, bias4, rowt=rowt, split_k=split, kw=kw, ft=ft), x, W4,
                bias4)
    # K split over a thread-block cluster (partial sums through the first block's shared memory)
    for M in (1, 7, 9, 16):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
        for kw, rowt, split, ft, occ in ((1, 4, 2, 1, 1), (4, 2, 3, 2, 2), (2, 1, 8, 1, 1), (8, 1, 4, 1, 1),
                                         (2, 2, 3, 4, 1), (4, 1, 5, 2, 2)):
            res[f"M{M} cluster{split} kw{kw} rowt{rowt} ft{ft} occ{occ}"] = checked(
                awq_small_m_cuda(x, wk, zk, sk, lay, rowt=rowt, split_k=split, kw=kw, ft=ft, cluster=True, occ=occ),
                x, W)
    for M in (3, 12):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)
        for kw, rowt, split, ft in ((2, 4, 3, 2), (4, 1, 2, 2)):
            res[f"N528 M{M} cluster{split} ft{ft} kw{kw} rowt{rowt}"] = checked(
                awq_small_m_cuda(x, wk4, zk4, sk4, lay4, bias4, rowt=rowt, split_k=split, kw=kw, ft=ft, cluster=True),
                x, W4, bias4)
    x = torch.randn(5, 1024, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(512, device="cuda")
    res["bias fp32"] = checked(awq_small_m_cuda(x, wk, zk, sk, lay, bias, split_k=2), x, W, bias)
    res["bias bf16"] = checked(awq_small_m_cuda(x, wk, zk, sk, lay, bias.bfloat16(), split_k=1), x, W,
                               bias.bfloat16())
    for group in (256, 1024):
        wk2, zk2, sk2, lay2, W2 = make_layer(1024, 512, group)
        for split in (1, 5):
            res[f"group{group} split{split}"] = checked(awq_small_m_cuda(x, wk2, zk2, sk2, lay2, split_k=split), x, W2)
        res[f"group{group} cluster3"] = checked(awq_small_m_cuda(x, wk2, zk2, sk2, lay2, split_k=3, cluster=True),
                                                x, W2)
    wk3, zk3, sk3, lay3, W3 = make_layer(5120, 5120)
    x = torch.randn(16, 5120, device="cuda", dtype=torch.bfloat16)
    for kw in (2, 4):
        a = awq_small_m_cuda(x, wk3, zk3, sk3, lay3, split_k=3, kw=kw)
        if not torch.equal(a, awq_small_m_cuda(x, wk3, zk3, sk3, lay3, split_k=3, kw=kw)):
            raise RuntimeError(f"kw={kw} result differs between two runs")
        res[f"5120 M16 split3 kw{kw}"] = checked(a, x, W3)
    a = awq_small_m_cuda(x, wk3, zk3, sk3, lay3, split_k=7)
    b = awq_small_m_cuda(x, wk3, zk3, sk3, lay3, split_k=7)
    res["bitwise repeat"] = float(torch.equal(a, b))
    if not torch.equal(a, b):
        raise RuntimeError("split-K result differs between two runs")
    res["5120 M16 split7"] = checked(a, x, W3)
    cl = {"rowt": 2, "kw": 4, "ft": 2, "split_k": 3, "cluster": True, "occ": 2}
    a = awq_small_m_cuda(x, wk3, zk3, sk3, lay3, **cl)
    if not torch.equal(a, awq_small_m_cuda(x, wk3, zk3, sk3, lay3, **cl)):
        raise RuntimeError("cluster result differs between two runs")
    res["5120 M16 cluster3"] = checked(a, x, W3)
    xs = x.clone()
    for name, kwa in (("graph replay", {"split_k": 7}), ("graph replay cluster", cl)):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = awq_small_m_cuda(xs, wk3, zk3, sk3, lay3, **kwa)
        for _ in range(3):
            xs.copy_(torch.randn_like(xs))
            g.replay()
            torch.cuda.synchronize()
            res[name] = checked(y, xs, W3)
    return res


def parse_tile(text: str) -> dict:
    """``"rowt2 u1 kw4 ft2 split_k3 cluster1 occ2"`` → keyword arguments of ``awq_small_m_cuda``."""
    out = {}
    for word in text.split():
        m = re.fullmatch(r"([a-z_]+?)(\d+)", word)
        if m is None:
            raise SystemExit(f"--tiles: cannot read {word!r} in {text!r} (expected e.g. rowt2, split_k3, cluster1)")
        key, val = m.group(1), int(m.group(2))
        out[key] = bool(val) if key == "cluster" else val
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--ms", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--rowt", type=int, nargs="*", default=[2, 4, 8])
    ap.add_argument("--u", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--splits", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--kw", type=int, nargs="*", default=[1])
    ap.add_argument("--ft", type=int, nargs="*", default=[1])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in SHAPES], help="KxN, e.g. 5120x5120")
    ap.add_argument("--tiles", nargs="*", help="explicit tiles instead of the --rowt/--u/--kw/--ft/--splits product")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--tag")
    args = ap.parse_args()
    t0 = time.time()
    payload: dict = {"correctness": correctness(), "points": [], "kernels": {}}
    print("correctness ok:", max(payload["correctness"].values()), flush=True)
    if args.tiles:
        explicit = [parse_tile(t) for t in args.tiles]
        for tile, mt in itertools.product(explicit, (1, 2)):
            cs = tile.get("split_k", 1) if tile.get("cluster") else 1
            k = _launcher(torch.cuda.current_device(), True, mt, tile.get("rowt", 4), tile.get("u", 2), True,
                          tile.get("kw", 1), tile.get("ft", 1), cs, tile.get("occ", 1)).kernel
            name = " ".join(f"{k_}{int(v)}" for k_, v in tile.items())
            payload["kernels"][f"{name} mt{mt}"] = k.registers
    else:
        for rowt, u, kw, ft, mt in itertools.product(args.rowt, args.u, args.kw, args.ft, (1, 2)):
            if rowt * kw > 16:
                continue
            k = _launcher(torch.cuda.current_device(), True, mt, rowt, u, True, kw, ft).kernel
            payload["kernels"][f"rowt{rowt} u{u} kw{kw} ft{ft} mt{mt}"] = k.registers
    print("registers:", payload["kernels"], flush=True)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes]
    for M, (K, N) in itertools.product(args.ms, shapes):
        if time.time() - t0 > args.budget_s:
            break
        wk, zk, sk, lay, W = make_layer(K, N)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wbf = W.to(torch.bfloat16)
        point = {"M": M, "K": K, "N": N, "bf16_ms": graph_median_ms(lambda: F.linear(x, wbf), 5, 30)}
        checked(awq_linear_cuda(x, wk, zk, sk, lay), x, W)
        point["shipped_ms"] = graph_median_ms(lambda: awq_linear_cuda(x, wk, zk, sk, lay), 5, 30)
        point["shipped_host_us"] = host_us(lambda: awq_linear_cuda(x, wk, zk, sk, lay))
        rule = dispatch._default_small(M, K, N, 128, sm_count(torch.cuda.current_device()), True)
        rule.pop("kind")  # (gemm_t's keywords: the Triton rule, what a "cuda" pick falls back to)
        checked(awq_gemm_t(x, wk, zk, sk, lay, **rule), x, W)
        point["triton_rule_ms"] = graph_median_ms(lambda: awq_gemm_t(x, wk, zk, sk, lay, **rule), 5, 30)
        cfgs = {}
        if args.tiles:
            runs = [parse_tile(t) for t in args.tiles]
        else:
            tiles = [{"rowt": r, "u": u, "kw": kw, "ft": ft}
                     for r, u, kw, ft in itertools.product(args.rowt, args.u, args.kw, args.ft)
                     if r * kw <= 16]
            runs = [{**tile, "split_k": split} for tile, split in itertools.product(tiles, args.splits)]
        kwargs = {}
        for kwa in runs:
            if kwa.get("split_k", 1) > K // 128:
                continue
            fn = lambda: awq_small_m_cuda(x, wk, zk, sk, lay, **kwa)
            x.copy_(torch.randn_like(x))
            err = checked(fn(), x, W)
            name = " ".join(f"{k}{int(v)}" for k, v in kwa.items())
            kwargs[name] = kwa
            cfgs[name] = {"ms": graph_median_ms(fn, 5, 30), "err": err}
        best = min(cfgs, key=lambda c: cfgs[c]["ms"])
        fn = lambda: awq_small_m_cuda(x, wk, zk, sk, lay, **kwargs[best])
        point.update(configs=cfgs, best=best, best_ms=cfgs[best]["ms"], best_host_us=host_us(fn))
        point["x_bf16_best"] = point["bf16_ms"] / point["best_ms"]
        point["x_bf16_shipped"] = point["bf16_ms"] / point["shipped_ms"]
        payload["points"].append(point)
        print(f"M={M} {K}x{N}: bf16 {point['bf16_ms']*1e3:.1f} us, triton rule {point['triton_rule_ms']*1e3:.1f}, "
              f"shipped {point['shipped_ms']*1e3:.1f} "
              f"({point['x_bf16_shipped']:.2f}x), cuda best {best} {point['best_ms']*1e3:.1f} "
              f"({point['x_bf16_best']:.2f}x); host us shipped {point['shipped_host_us']:.1f} cuda "
              f"{point['best_host_us']:.1f}", flush=True)
    print(write_json(args.out_dir, "awq-cuda-probe", payload, args.tag))


if __name__ == "__main__":
    main()
