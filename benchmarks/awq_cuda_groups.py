# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Groups of 64 and 32 on the CUDA C++ small-M AWQ kernel (``FVQ_GPB`` 2 / 4) against the Triton rule they ran
before, bf16 ``F.linear`` and the same layer at group 128, on the four DiT shapes at M = 1, 4, 8, 16.

    python benchmarks/awq_cuda_groups.py --out-dir $OUT [--budget-s 300] [--tag TAG] [--route-only]

Every configuration is checked against float32 math of the de-quantized weight on fresh random inputs (not zeros)
before it is timed (a CUDA-graph replay, do_bench median, L2 flushed). Per point: ``bf16``; ``triton`` (the rule a
group of 64 / 32 took before: ``dispatch._default_small``'s ``gemm_t``); ``dispatch`` (what the plugin runs);
``g128`` (the dispatch route of the same shape at group 128, the speed the groups are measured against); and, unless
``--route-only``, the CUDA tiles of ``dispatch.RULE_TILES``, ``CUDA_RULE`` (also at the register caps for ``--occ``
blocks an SM) and the table's group-128 pick. Writes ``awq-cuda-groups_<gpu>_<date>[_tag].json`` after every point.

The first run (``results/awq-cuda-groups_nvidia-h100-80gb-hbm3_2026-12-06.json``, at 8b96dbd) also compared two ways
of splitting a byte into its nibbles (tile names ``dqb0`` / ``dqb1``); the source keeps ``dqb1`` (``prmt`` of the
byte, a multiply by 0x1001), and its ``dispatch`` column is the group-128 table's tiles with ``dqb0``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from awq_sweep import make_layer
from fvq_awq.kernels import dispatch, small_m_cuda
from fvq_awq.kernels.dispatch import awq_linear_cuda
from fvq_awq.kernels.gemm import awq_gemm_t

from fastvideo_quant.bench import graph_median_ms, rel_err, write_json
from fastvideo_quant.kernels.cuda_rtc import supports_pdl
from fastvideo_quant.kernels.split_k import sm_count

SHAPES = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]
MS = (1, 16, 4, 8)


def tiles(M: int, K: int, N: int, sms: int, occs: list[int]) -> dict[str, dict]:
    """Name -> awq_small_m_cuda keywords for the candidate tiles at this point."""
    base = [dispatch.CUDA_RULE] + [t for t, _ in dispatch.RULE_TILES]
    pick = dispatch._choose(M, K, N, str(dispatch._DEFAULT_TABLE), 128, sms)
    if pick.get("kind") == "cuda":
        base.append(pick)
    base.append(dispatch.cuda_rule(M, K, N, sms, True))
    out = {}
    for t in base:
        kw = {k: v for k, v in t.items() if k != "kind"}
        # (other caps for CUDA_RULE alone: its 8 warps at 96-128 registers hold 2 blocks an SM where group 128's 78
        # held 3; the other tiles' caps are not what binds them)
        for occ in sorted({kw.get("occ", 1), *(occs if t == dispatch.CUDA_RULE else ())}):
            v = {**kw, "occ": occ}
            name = " ".join(f"{k}{int(x)}" for k, x in sorted(v.items()))
            out[name] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--groups", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--ms", type=int, nargs="+", default=list(MS))
    ap.add_argument("--occ", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--route-only", action="store_true", help="time bf16, triton, dispatch and g128 only")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    index = torch.cuda.current_device()
    sms = sm_count(index)
    pdl = supports_pdl(index)
    payload: dict = {"what": __doc__, "points": []}
    t0 = time.time()
    for K, N in SHAPES:
        g128 = make_layer(K, N, 128)
        for group in args.groups:
            wk, zk, sk, lay, W = make_layer(K, N, group)
            for M in args.ms:
                if time.time() - t0 > args.budget_s:
                    break
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ W.t()
                w16 = W.to(torch.bfloat16)
                rule = dispatch._default_small(M, K, N, group, sms, True)
                rule.pop("kind")
                row: dict = {"K": K, "N": N, "M": M, "group": group, "us": {}, "err": {}}
                cands = {"bf16": lambda: F.linear(x, w16),
                         "triton": lambda: awq_gemm_t(x, wk, zk, sk, lay, **rule),
                         "dispatch": lambda: awq_linear_cuda(x, wk, zk, sk, lay),
                         "g128": lambda: awq_linear_cuda(x, *g128[:4])}
                for name, fn in cands.items():
                    out = fn()
                    want = x.float() @ g128[4].t() if name == "g128" else ref
                    err = rel_err(out, want)
                    if name != "bf16" and not err < 5e-3:
                        raise RuntimeError(f"{name} K={K} N={N} M={M} group {group}: rel err {err:.3e}")
                    row["err"][name] = err
                    row["us"][name] = graph_median_ms(fn, 5, 30) * 1e3
                for name, kw in ({} if args.route_only else tiles(M, K, N, sms, args.occ)).items():
                    fn = lambda: small_m_cuda.run(x, wk, zk, sk, lay, None, kw.get("rowt", 1), kw.get("u", 1),
                                                  kw.get("split_k", 1), kw.get("kw", 1), kw.get("ft", 1),
                                                  bool(kw.get("cluster")), kw.get("occ", 1), pdl)
                    err = rel_err(fn(), ref)
                    if not err < 5e-3:
                        raise RuntimeError(f"{name} K={K} N={N} M={M} group {group}: rel err {err:.3e}")
                    row["err"][name] = err
                    row["us"][name] = graph_median_ms(fn, 5, 30) * 1e3
                bf = row["us"]["bf16"]
                best = min((k for k in row["us"] if k not in cands), key=row["us"].get, default=None)
                row["best"] = best
                print(f"{K}x{N} M={M} g{group}: bf16 {bf:.1f} triton {row['us']['triton']:.1f} "
                      f"dispatch {row['us']['dispatch']:.1f} ({bf / row['us']['dispatch']:.2f}x) "
                      f"g128 {row['us']['g128']:.1f} best {best} {row['us'].get(best, float('nan')):.1f}", flush=True)
                payload["points"].append(row)
                write_json(args.out_dir, "awq-cuda-groups", payload, args.tag)


if __name__ == "__main__":
    main()
