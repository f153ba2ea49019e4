"""Programmatic dependent launch in the two CUDA small-M kernels (AWQ int4, W8A16 e4m3): where the trigger goes and
whether the weight prefetch before the wait pays, timed in the chain (layers of distinct weights, one pass >= 3x L2,
back to back in one CUDA graph — the only setting where one kernel of ours follows another).

Variants (``small_m_common.cuh``): plain (no attribute), and with the attribute ``FVQ_PDL_TRIGGER`` 0 (before the
prefetch), 1 (after the wait), 2 (after the main loop), 3 (never: each block's exit), each with (``pf1``) or without
(``pf0``) the L2 prefetch of the warp's weight rows before the wait. Each variant's layers are checked bit for bit
against the plain launch on the same inputs before timing (same arithmetic), the plain launch against float32 math.

    python benchmarks/pdl_small_m_probe.py --out DIR [--ms 1 8 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from fastvideo_quant import bench
from fastvideo_quant.kernels import w8_small_m_cuda as w8
from fastvideo_quant.kernels.split_k import sm_count

VARIANTS = [("plain", None)] + [(f"t{t}-pf{pf}", (("FVQ_PDL_TRIGGER", t), ("FVQ_PDL_PF", pf)))
                                for t in (0, 1, 2, 3) for pf in (1, 0) if (t, pf) != (0, 0)]


def _with_extra(module, extra):
    """``module._launcher`` with ``extra`` macros appended (restored by the caller)."""
    orig = module._launcher

    def launcher(*a):
        return orig(*a, extra=extra)

    return orig, launcher


def _awq_layers(K, N, n, seed):
    from fvq_awq.layout import KernelLayout

    gen = torch.Generator(device="cuda").manual_seed(seed)
    G = K // 128
    out = []
    for _ in range(n):
        wk = torch.randint(-2**31, 2**31 - 1, (N, K // 8), device="cuda", dtype=torch.int32, generator=gen)
        zk = torch.randint(0, 16, (N, G), device="cuda", dtype=torch.uint8, generator=gen)
        sk = (torch.rand(N, G, device="cuda", generator=gen) * 0.02 + 0.001).half()
        out.append((wk, zk, sk, KernelLayout(K, N, 128, 16)))
    return out


def _w8_layers(K, N, n, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [((torch.randn(N, K, device="cuda", generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn),
             torch.rand(N, device="cuda", generator=gen) * 1e-3 + 1e-4) for _ in range(n)]


def _awq_calls(layers, x, M, pdl):
    from fvq_awq.kernels import dispatch, small_m_cuda

    fn, cfg = dispatch._route(M, layers[0][3], False, dispatch._TABLE_PATH)
    if fn is not dispatch._cuda_small_m:
        return None, None
    tile = {k: v for k, v in cfg.items() if k not in ("fallback", "pdl")}
    args = (tile["rowt"], tile["u"], tile["split_k"], tile.get("kw", 1), tile.get("ft", 1), tile.get("cluster", False),
            tile.get("occ", 1), pdl)
    return [lambda lay=lay: small_m_cuda.run(x, *lay, None, *args) for lay in layers], tile


def _w8_calls(layers, x, M, pdl):
    K, N = x.shape[1], layers[0][0].shape[0]
    tile = w8.rule(M, K, N, sm_count(x.device.index), w8.clusters_available(x.device.index))
    if tile is None:
        return None, None
    return [lambda w=w, s=s: w8.run(x, w, s, None, **tile, pdl=pdl) for w, s in layers], tile


def _ref(kind, layer, x):
    if kind == "awq":
        from fvq_awq.layout import dequantize_kernel

        return x.float() @ dequantize_kernel(*layer).t()
    w, s = layer
    return x.float() @ (w.float() * s[:, None]).t()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in bench.DIT_SHAPES])
    ap.add_argument("--kinds", nargs="+", default=["awq", "w8"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    from fvq_awq.kernels import small_m_cuda

    l2 = bench.l2_bytes()
    results = {"l2_bytes": l2, "variants": [v for v, _ in VARIANTS], "points": []}
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        n_bf16 = max(4, math.ceil(3 * l2 / (2 * K * N)))
        wb = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(n_bf16)]
        for kind in args.kinds:
            per_layer = K * N // 2 + K * N // 128 * 3 if kind == "awq" else K * N + 4 * N
            n = max(4, math.ceil(3 * l2 / per_layer))
            layers = (_awq_layers if kind == "awq" else _w8_layers)(K, N, n, 0)
            module = small_m_cuda if kind == "awq" else w8
            make = _awq_calls if kind == "awq" else _w8_calls
            for M in args.ms:
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                plain_calls, tile = make(layers, x, M, False)
                if plain_calls is None:
                    print(f"{kind} {K}x{N} M={M}: not the CUDA kernel here, skipped", flush=True)
                    continue
                plain = [f() for f in plain_calls]
                err = ((plain[0].float() - _ref(kind, layers[0], x)).norm() / _ref(kind, layers[0], x).norm()).item()
                assert err < 1e-2, f"{kind} {K}x{N} M={M}: plain launch rel err {err:.2e}"
                graphs = {}
                for name, extra in VARIANTS:
                    orig, patched = _with_extra(module, extra or ())
                    module._launcher = patched
                    try:
                        calls = plain_calls if extra is None else make(layers, x, M, True)[0]
                        outs = [f() for f in calls]
                        bad = [i for i, (a, b) in enumerate(zip(outs, plain, strict=True)) if not torch.equal(a, b)]
                        assert not bad, f"{kind} {K}x{N} M={M} {name}: layers {bad} differ from the plain launch"
                        graphs[name] = bench.capture_chain(calls)
                    finally:
                        module._launcher = orig
                bf16_graph = bench.capture_chain([lambda w=w, x=x: F.linear(x, w) for w in wb])
                times = {name: [] for name in graphs} | {"bf16": []}
                for _ in range(args.rounds):
                    times["bf16"].append(bench.chain_ms_per_layer(bf16_graph, n_bf16, args.replays) * 1e3)
                    for name, g in graphs.items():
                        times[name].append(bench.chain_ms_per_layer(g, n, args.replays) * 1e3)
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {"kind": kind, "K": K, "N": N, "M": M, "layers": n, "tile": tile, "plain_rel_err": err,
                       "us": med, "rounds_us": times}
                results["points"].append(row)
                best = min((v for v in med if v != "bf16"), key=med.get)
                print(f"{kind} {K}x{N} M={M} ({n} layers, tile {tile}): bf16 {med['bf16']:.1f} µs; "
                      + ", ".join(f"{k} {v:.1f}" for k, v in med.items() if k != "bf16") + f"; best {best}",
                      flush=True)
                del graphs, bf16_graph
        del wb
        torch.cuda.empty_cache()
    print("wrote", bench.write_json(args.out, "pdl-small-m-probe", results))


if __name__ == "__main__":
    main()
