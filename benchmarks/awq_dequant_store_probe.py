# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""AWQ at large M: how far is the de-quantize pass from the card's write bandwidth, and does the order or cache
policy of its stores move it?

    python benchmarks/awq_dequant_store_probe.py [--ms 4096] [--rounds 2] [--out FILE.json]

Why (thirty-sixth session, H100): above M=256 AWQ de-quantizes the whole weight to bf16 and runs ``F.linear``. At
5120² the pass took 28.4-30.8 µs (13 MB read, 52 MB written: ~2.2 TB/s) in front of a ~300 µs GEMM at M=4096, where
the path reads 0.94-0.96x bf16 against the issue's 0.95x. A pass at the card's write rate would be ~8 µs shorter
(~2.5% at M=4096). Variants of the shipped kernel (its tile — 32 output rows, two pack blocks, 8 warps — unless
named; the same math, so each is checked **bit-equal** to ``awq_dequantize`` on the layer's random weights first,
and the whole path bit-equal to the shipped ``apply``):

* ``kfast``: programs along K vary fastest, so neighbouring programs write neighbouring 512-byte runs of the same
  rows (the shipped grid walks the rows first: each program's runs land 10 KB apart from its neighbours');
* ``cs`` / ``cg``: the stores streaming (``.cs``) or cached in L2 only (``.cg``); ``ef``: the word loads
  ``evict_first``; ``el``: the stores ``evict_last`` (the GEMM reads the weight next);
* ``r4`` / ``n64``: four pack blocks a program (the same rows), or 64 rows (16 warps);
* ceilings: ``fill`` (``w.fill_``: 52 MB written, nothing read) and ``copy`` (a bf16 copy, 52 MB each way).

Times: do_bench medians (L2 flushed) as CUDA graphs, ``--rounds`` alternating rounds; then at each ``--ms`` the
whole path (variant + ``F.linear``) against bf16 ``F.linear`` in the same process, both as graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fvq_awq.kernels.common import code_as_float, group_params_3d
from fvq_awq.kernels.gemm import awq_dequantize

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms


@triton.jit
def _deq_variant(qw_ptr, s_ptr, z_ptr, w_ptr, N, K, K8, G, NPROG_N, GROUP: tl.constexpr, BK8: tl.constexpr,
                 R: tl.constexpr, BLOCK_N: tl.constexpr, K_FAST: tl.constexpr, STORE_CM: tl.constexpr,
                 STORE_EV: tl.constexpr, LOAD_EV: tl.constexpr):
    """The shipped ``_awq_dequant_kernel`` (bf16 output) with the grid order and cache policies as constexprs."""
    if K_FAST:
        pid = tl.program_id(0)
        nk = K8 // (R * BK8)
        pid_n = pid // nk
        pid_k = pid % nk
    else:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    k0 = pid_k * (8 * R * BK8)
    w = tl.load(qw_ptr + n3 * K8 + pid_k * (R * BK8) + r3 * BK8 + j3, mask=mask_n[:, None, None], other=0,
                eviction_policy=LOAD_EV)
    out_ptrs = w_ptr + n3 * K + k0 + r3 * (8 * BK8) + j3
    if 8 * BK8 <= GROUP:
        s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8), n3, mask_n, G, GROUP)
    for i in tl.static_range(8):
        if 8 * BK8 > GROUP:
            s, zb = group_params_3d(s_ptr, z_ptr, k0 + r3 * (8 * BK8) + i * BK8, n3, mask_n, G, GROUP)
        v = (code_as_float(w, i) - zb) * s
        tl.store(out_ptrs + i * BK8, v.to(w_ptr.dtype.element_ty), mask=mask_n[:, None, None],
                 cache_modifier=STORE_CM, eviction_policy=STORE_EV)


VARIANTS = {  # name: (block_n, r, warps, k_fast, store cache modifier, store eviction, load eviction)
    "same": (32, 2, 8, False, "", "", ""),
    "kfast": (32, 2, 8, True, "", "", ""),
    "cs": (32, 2, 8, False, ".cs", "", ""),
    "cg": (32, 2, 8, False, ".cg", "", ""),
    "ef": (32, 2, 8, False, "", "", "evict_first"),
    "el": (32, 2, 8, False, "", "evict_last", ""),
    "kfast_cs": (32, 2, 8, True, ".cs", "", ""),
    "r4": (32, 4, 8, False, "", "", ""),
    "r4_kfast": (32, 4, 8, True, "", "", ""),
    "n64": (64, 2, 16, False, "", "", ""),
    "n16_r4": (16, 4, 4, False, "", "", ""),
}


def run_variant(layer, name: str, out: torch.Tensor) -> torch.Tensor:
    block_n, r, warps, k_fast, cm, sev, lev = VARIANTS[name]
    lay = layer.awq_layout
    n, k = lay.out_features, lay.in_features
    rr = r if (k // lay.pack_block) % r == 0 else 1
    nprog_n, nprog_k = triton.cdiv(n, block_n), k // (lay.pack_block * rr)
    grid = (nprog_n * nprog_k,) if k_fast else (nprog_n, nprog_k)
    _deq_variant[grid](layer.qweight_k, layer.scales_k, layer.zeros_k, out, n, k, k // 8, k // lay.group, nprog_n,
                       GROUP=lay.group, BK8=lay.bk8, R=rr, BLOCK_N=block_n, K_FAST=k_fast, STORE_CM=cm,
                       STORE_EV=sev, LOAD_EV=lev, num_warps=warps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ms", nargs="*", type=int, default=[4096])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in DIT_SHAPES])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--path-variants", nargs="*", default=None, help="variants timed in the whole path (default: all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        k, n = (int(v) for v in shape.split("x"))
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        layer = build_layer("awq", w)
        lay = layer.awq_layout
        shipped = lambda: awq_dequantize(layer.qweight_k, layer.zeros_k, layer.scales_k, lay, torch.bfloat16)
        bufs = {name: torch.empty(n, k, dtype=torch.bfloat16, device="cuda") for name in args.variants}
        ref = shipped()
        for name in args.variants:  # bit-equal to the shipped pass (the same math)
            if not torch.equal(run_variant(layer, name, bufs[name]), ref):
                raise SystemExit(f"{shape} {name}: not bit-equal to awq_dequantize")
        src = torch.empty_like(ref)
        timed = {"shipped": shipped, "fill": lambda: bufs[args.variants[0]].fill_(1.0),
                 "copy": lambda: bufs[args.variants[0]].copy_(src)}
        timed |= {name: (lambda name=name: run_variant(layer, name, bufs[name])) for name in args.variants}
        rounds = [{name: graph_median_ms(fn) * 1e3 for name, fn in timed.items()} for _ in range(args.rounds)]
        med = {name: statistics.median(r[name] for r in rounds) for name in timed}
        gbytes = (n * k * 2 + n * k // 2 + 3 * n * (k // lay.group)) / 1e9
        print(f"{shape} de-quantize (µs, graph, median of {args.rounds}): " +
              " | ".join(f"{name} {t:.1f} ({gbytes / t * 1e6 / 1e3:.2f} TB/s)" for name, t in med.items()), flush=True)
        path_rows = []
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            names = args.path_variants if args.path_variants is not None else args.variants
            paths = {"bf16": lambda: F.linear(x, w),
                     "shipped": lambda: layer.quant_method.apply(layer, x)}
            paths |= {name: (lambda name=name: F.linear(x, run_variant(layer, name, bufs[name]))) for name in names}
            want = layer.quant_method.apply(layer, x)
            for name in names:
                if not torch.equal(paths[name](), want):
                    raise SystemExit(f"{shape} M={m} path {name}: not bit-equal to the shipped apply")
            prounds = [{name: graph_median_ms(fn) * 1e3 for name, fn in paths.items()} for _ in range(args.rounds)]
            ratios = {name: [r["bf16"] / r[name] for r in prounds] for name in paths if name != "bf16"}
            print(f"{shape} M={m}: bf16 " + "/".join(f"{r['bf16']:.1f}" for r in prounds) + " µs | " +
                  " | ".join(f"{name} {statistics.median(r[name] for r in prounds):.1f} µs "
                             f"{min(v):.3f}-{max(v):.3f}x" for name, v in ratios.items()), flush=True)
            path_rows.append({"m": m, "rounds": prounds})
        rows.append({"k": k, "n": n, "dequant_rounds": rounds, "paths": path_rows})
        layer = bufs = ref = src = None
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "variants": VARIANTS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
