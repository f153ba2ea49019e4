"""A model-like measurement beside the harness: many different layers back to back in one CUDA graph.

The harness (``fastvideo_quant/bench.py``) times one call at a time with L2 emptied before each by writing 256 MB, so
every timed call also pays a graph launch and the write-back of the dirty lines it evicts: a fixed ~7 µs a call on
the H200 (``benchmarks/flush_probe.py``, seventh AWQ session), which caps small-M ratios below the bytes' ratio
(AWQ M=1: 2.00-2.68x at most). A decode step does not look like that: it runs layer after layer, each reading a
weight that is not in L2 (the model's weights are many times L2), with no flush and no launch gap beyond a graph's.

This script builds ``L`` distinct layers per shape (bf16 weights and the method's layers made from the same
weights), enough that one pass over the method's weights is at least ``--l2-multiple`` x 50 MB, captures one CUDA
graph that calls all ``L`` of them on the same ``x`` (independent calls, in order on one stream), and times graph
replays back to back (CUDA events around ``--replays`` replays; per layer = total / (replays x L)). bf16 and the
method alternate over ``--rounds`` rounds in one process; the table gives per-layer µs (medians) and the median ratio
with its range. Every method layer is checked first on fresh random inputs against float32 math of its own
de-quantized weight, within the method's stated tolerance (``QuantizationConfig.tolerance``); the error against the
bf16 weight (the quantization's own) is recorded too. A non-finite output or an error over the tolerance stops the
run.

    python benchmarks/layer_chain.py --methods awq fp8 --out benchmarks/results

Results: ``<out>/layer-chain_<gpu>_<date>[_tag].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvideo_quant.bench import (  # noqa: E402
    DIT_SHAPES,
    build_layer,
    environment,
    rel_err,
    result_stem,
    weight_bytes,
    write_json,
)
from fastvideo_quant.quantization import get_quantization_config  # noqa: E402

L2_BYTES = 50 * 1024 * 1024  # H100 / H200


def chain_ms_per_layer(graph: torch.cuda.CUDAGraph, layers: int, replays: int) -> float:
    """Per-layer time of ``graph`` (``layers`` calls) over ``replays`` back-to-back replays, after 3 warm-up ones."""
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (replays * layers)


def capture(fns: list) -> torch.cuda.CUDAGraph:
    """One graph calling every function in ``fns`` in order (warmed up on a side stream first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    return graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["awq", "fp8"])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in DIT_SHAPES], help="KxN")
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--l2-multiple", type=float, default=3.0,
                    help="one pass over the method's weights is at least this many times L2 (50 MB)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=".")
    ap.add_argument("--tag")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("layer_chain.py needs a CUDA GPU; none is visible")
    env = environment()
    gen = torch.Generator(device="cuda").manual_seed(0)
    points = []
    for method in args.methods:
        for shape in args.shapes:
            K, N = (int(v) for v in shape.split("x"))
            w0 = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
            layers = [build_layer(method, w0)]
            per_layer = weight_bytes(layers[0])
            L = max(4, math.ceil(args.l2_multiple * L2_BYTES / per_layer))
            weights = [w0] + [(torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
                              for _ in range(L - 1)]
            layers += [build_layer(method, w) for w in weights[1:]]
            deq = [layer.quant_method.dequantize_weight(layer) for layer in layers]
            tol = get_quantization_config(method).tolerance.max_rel_error
            for M in args.ms:
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
                errs, errs32 = [], []
                for layer, w, dq in zip(layers, weights, deq, strict=True):  # every layer, fresh inputs each
                    xc = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
                    out = layer.quant_method.apply(layer, xc)
                    if not torch.isfinite(out).all():
                        raise SystemExit(f"{method} {K}x{N} M={M}: non-finite output")
                    errs.append(rel_err(out, xc.float() @ dq.float().T))
                    errs32.append(rel_err(out, xc.float() @ w.float().T))
                if tol is not None and max(errs) > tol:
                    raise SystemExit(f"{method} {K}x{N} M={M}: relative error {max(errs):.3g} against its "
                                     f"de-quantized weight, over the method's tolerance {tol}")
                g_bf16 = capture([lambda w=w, x=x: F.linear(x, w) for w in weights])
                g_m = capture([lambda layer=layer, x=x: layer.quant_method.apply(layer, x) for layer in layers])
                rounds = [(chain_ms_per_layer(g_bf16, L, args.replays), chain_ms_per_layer(g_m, L, args.replays))
                          for _ in range(args.rounds)]
                ratios = [b / m for b, m in rounds]
                point = {"method": method, "K": K, "N": N, "M": M, "layers": L,
                         "weight_bytes_per_layer": per_layer, "rel_err_max": max(errs),
                         "rel_err_vs_bf16_weight_max": max(errs32),
                         "bf16_us": statistics.median(b for b, _ in rounds) * 1e3,
                         "method_us": statistics.median(m for _, m in rounds) * 1e3,
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "rounds_us": [[b * 1e3, m * 1e3] for b, m in rounds]}
                points.append(point)
                print(f"{method} {K}x{N} M={M} ({L} layers): bf16 {point['bf16_us']:.1f} us/layer, {method} "
                      f"{point['method_us']:.1f} -> {point['ratio']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}), "
                      f"rel err <= {max(errs):.2e} (vs bf16 weight {max(errs32):.2e})", flush=True)
                del g_bf16, g_m
            del layers, weights, w0, deq
            torch.cuda.empty_cache()
    path = write_json(args.out, "layer-chain", {"args": vars(args), "points": points}, args.tag)
    lines = [f"# Layer chain: {L2_BYTES >> 20} MB L2 x {args.l2_multiple} of distinct weights a pass, one CUDA graph",
             "", f"{env.get('gpu')}, torch {env.get('torch')}, {env.get('date')}; {args.rounds} rounds, "
             f"{args.replays} replays a timing; µs per layer (medians), ratio = bf16 / method (median, range)", "",
             "| method | K×N | M | layers | bf16 µs | method µs | × bf16 | range | max rel err (vs de-quantized) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['method']} | {p['K']}×{p['N']} | {p['M']} | {p['layers']} | {p['bf16_us']:.1f} | "
                     f"{p['method_us']:.1f} | {p['ratio']:.2f} | {p['ratio_min']:.2f}–{p['ratio_max']:.2f} | "
                     f"{p['rel_err_max']:.1e} |")
    md = Path(args.out) / f"{result_stem('layer-chain', env, args.tag)}.md"
    md.write_text("\n".join(lines) + "\n")
    print(path, md)


if __name__ == "__main__":
    main()
