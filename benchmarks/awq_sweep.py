# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""H100 sweep of the AWQ kernels' block sizes and M thresholds (one device call; prints a table).

    python benchmarks/awq_sweep.py --out $OUT/awq_sweep.json

Every configuration is checked against a float32 reference on fresh random inputs before it is
timed; bf16 ``F.linear`` is timed in the same run. Results pick ``fvq_awq.kernels.dispatch``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
import triton.testing
from fvq_awq.format import pack_awq
from fvq_awq.kernels.gemm import awq_dequantize, awq_gemm
from fvq_awq.kernels.gemv import awq_gemv
from fvq_awq.layout import dequantize_kernel, repack_to_kernel

SHAPES = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]


def bench(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=30, return_mode="median"))


def make_layer(K: int, N: int, group: int = 128):
    q = torch.randint(0, 16, (K, N))
    z = torch.randint(0, 16, (K // group, N))
    s = (torch.rand(K // group, N) * 0.02 + 0.005).half()
    wk, zk, sk, lay = repack_to_kernel(pack_awq(q), pack_awq(z), s, group)
    wk, zk, sk = wk.cuda(), zk.cuda(), sk.cuda()
    return wk, zk, sk, lay, dequantize_kernel(wk, zk, sk, lay)


def check(out, x, W) -> float:
    ref = x.float() @ W.t()
    err = ((out.float() - ref).norm() / ref.norm()).item()
    if not err < 2e-2:
        raise RuntimeError(f"wrong result: rel err {err}")
    return err


def entry(name: str) -> dict:
    """``"gemv bn8 r4 w4 s3"`` → the dispatch table entry (kind + kernel kwargs)."""
    words = name.replace("+cublas", "").split()
    keys = {"bm": "block_m", "bn": "block_n", "sk": "split_k", "r": "r", "w": "num_warps", "s": "num_stages"}
    out = {"kind": words[0]}
    for word in words[1:]:
        key = word.rstrip("0123456789")
        out[keys[key]] = int(word[len(key):])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="awq_sweep.json")
    ap.add_argument("--tuning", default="tuning.json", help="where to write the dispatch table")
    args = ap.parse_args()
    res = []
    table = {}
    for K, N in SHAPES:
        wk, zk, sk, lay, W = make_layer(K, N)
        wbf = W.to(torch.bfloat16)
        for M in (1, 4, 16, 64, 256, 1024, 4096):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            t_bf = bench(lambda: F.linear(x, wbf))
            cands = []
            gemv_grid = [(bn, r, nw, ns) for bn, r, (nw, ns) in itertools.product(
                (4, 8, 16, 32), (2, 4, 8), ((2, 3), (4, 2), (4, 3), (8, 3)))] if M == 1 else \
                [(8, 4, 4, 3), (16, 4, 4, 3), (16, 8, 4, 3)]
            if M <= 4:
                for bn, r, nw, ns in gemv_grid:
                    f = lambda bn=bn, r=r, nw=nw, ns=ns: awq_gemv(x, wk, zk, sk, lay, None, bn, nw, ns, r)
                    cands.append((f"gemv bn{bn} r{r} w{nw} s{ns}", f))
            grid = []
            if 4 <= M <= 16:
                grid = itertools.product((16,), (32, 64, 128), (1, 2, 4), (2, 4), (4,), (2, 3))
            elif M <= 256:
                grid = itertools.product((64,), (64, 128), (1,), (1, 2), (4, 8), (3,))
            else:
                grid = [(128, 128, 1, 1, 8, 3), (128, 128, 1, 2, 8, 3), (64, 128, 1, 1, 4, 3)]
            for bm, bn, spk, r, nw, ns in grid:
                f = lambda bm=bm, bn=bn, spk=spk, r=r, nw=nw, ns=ns: awq_gemm(x, wk, zk, sk, lay, None, bm, bn, spk,
                                                                              nw, ns, r)
                cands.append((f"gemm bm{bm} bn{bn} sk{spk} r{r} w{nw} s{ns}", f))
            if M >= 64:
                for dbn, dr in ((32, 2), (16, 4), (64, 1), (32, 4)):
                    f = lambda dbn=dbn, dr=dr: F.linear(x, awq_dequantize(wk, zk, sk, lay, x.dtype, dbn, dr))
                    cands.append((f"dequant bn{dbn} r{dr}+cublas", f))
            best = None
            for name, f in cands:
                try:
                    check(f(), x, W)
                    t = bench(f)
                except Exception as exc:  # noqa: BLE001 - a config that fails to compile is skipped, logged
                    res.append({"K": K, "N": N, "M": M, "cfg": name, "error": str(exc)[:200]})
                    continue
                res.append({"K": K, "N": N, "M": M, "cfg": name, "ms": t, "bf16_ms": t_bf, "speedup": t_bf / t})
                if best is None or t < best[1]:
                    best = (name, t)
            if best:
                table[f"{K}x{N}x{M}"] = entry(best[0])
                top = sorted((r for r in res if r.get("M") == M and r["K"] == K and r["N"] == N and "ms" in r),
                             key=lambda r: r["ms"])[:3]
                print("   top:", [(r["cfg"], round(r["ms"] * 1e3, 1)) for r in top])
                print(f"K={K} N={N} M={M}: bf16 {t_bf*1e3:.1f} us, best {best[0]} {best[1]*1e3:.1f} us, "
                      f"{t_bf / best[1]:.2f}x", flush=True)
        for dbn, dr in ((32, 2), (16, 4), (64, 1), (32, 4)):
            try:
                t_dq = bench(lambda dbn=dbn, dr=dr: awq_dequantize(wk, zk, sk, lay, torch.bfloat16, dbn, dr))
            except Exception as exc:  # noqa: BLE001 - logged, the sweep goes on
                print(f"dequant bn{dbn} r{dr} failed: {exc}"[:300])
                continue
            print(f"K={K} N={N}: dequant kernel bn{dbn} r{dr} {t_dq*1e3:.1f} us", flush=True)
            res.append({"K": K, "N": N, "cfg": f"dequant_only bn{dbn} r{dr}", "ms": t_dq})
        with open(args.tuning, "w") as fh:
            json.dump(table, fh, indent=1, sort_keys=True)
        with open(args.out, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": res}, fh)


if __name__ == "__main__":
    main()
