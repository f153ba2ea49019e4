"""AWQ's opt-in fp8 route (``AWQConfig(fp8_compute=True)``, ``fvq_awq.fp8_compute``) against the exact path and bf16.

First, per shape, the GPU route is checked on fresh inputs against the CPU arithmetic on the same tensors (the
Triton conversion bit for bit against its torch reference; the product within 1e-2, the difference fast accumulation
makes) and against float64 math of the de-quantized weight (within the config's stated tolerance). Then the
harness (``fastvideo_quant.bench.bench_method``: L2 flushed, bf16 timed in the same round, eager and CUDA-graph
columns) runs the exact path and the fp8 route (``fp8_compute_min_m=1``: the route at every M listed) and writes
``awq_<gpu>_<date>_<run>[-<tag>].{json,md}`` for each (``run``: ``exact``, ``fp8-compute``), plus a side-by-side table
``awq-fp8-compute_<gpu>_<date>[_<tag>].md``. ``--host``: eager host time instead (``awq-fp8-compute-host_…json``).

    python benchmarks/awq_fp8_compute.py --m 64 128 256 512 1024 2048 4096 16384 --rounds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, result_stem, unused_stem, write_json, write_results
from fastvideo_quant.bench import bench_method as run_bench


def check(shapes, rows: int = 300) -> list[str]:
    from fvq_awq import fp8_compute
    from fvq_awq.kernels.gemm import awq_dequantize

    from fastvideo_quant.kernels import FP8_DTYPE

    lines = []
    gen = torch.Generator(device="cuda").manual_seed(1)
    for K, N in shapes:
        w = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
        layer = build_layer("awq", w, {"fp8_compute": True, "fp8_compute_min_m": 1})
        qw, z, s, lay, t = layer.qweight_k, layer.zeros_k, layer.scales_k, layer.awq_layout, layer.fp8_scale_k
        w8 = awq_dequantize(qw, z, s, lay, FP8_DTYPE, fp8_scale=t)
        ref8 = fp8_compute.fp8_weight_ref(qw.cpu(), z.cpu(), s.cpu(), lay, t.cpu())
        if not torch.equal(w8.cpu().view(torch.uint8), ref8.view(torch.uint8)):
            raise AssertionError(f"{K}x{N}: the Triton e4m3 weight differs from its torch reference")
        x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        out = layer.quant_method.apply(layer, x)
        cpu = fp8_compute.linear(x.cpu(), qw.cpu(), z.cpu(), s.cpu(), lay, t.cpu(), None)
        dq = layer.quant_method.dequantize_weight(layer).double()
        exact = x.double() @ dq.t()
        e_cpu = ((out.double().cpu() - cpu.double()).norm() / cpu.double().norm()).item()
        e_exact = ((out.double() - exact).norm() / exact.norm()).item()
        tol = layer.quant_method.quant_config.tolerance.for_dtype(x.dtype).max_rel_error
        if not (e_cpu < 1e-2 and e_exact < tol):
            raise AssertionError(f"{K}x{N}: GPU route vs CPU route {e_cpu:.2e}, vs float64 exact {e_exact:.2e}")
        lines.append(f"{K}x{N}: e4m3 weight bit-equal to the reference; M={rows} vs CPU route {e_cpu:.2e}, "
                     f"vs float64 of the de-quantized weight {e_exact:.2e}")
        print(lines[-1], flush=True)
        del layer, w, w8, dq
    return lines


def host(shapes, ms, out_dir: str, tag: str | None = None) -> None:
    """Eager host time: wall µs per back-to-back call (``bench.host_us``) of the route, the exact path and the route's
    three parts, beside the route's GPU time (graph replay)."""
    import json

    import fvq_awq
    from fvq_awq.kernels.gemm import FP8_TILE, awq_dequantize

    from fastvideo_quant.bench import graph_median_ms, host_us
    from fastvideo_quant.kernels import FP8_DTYPE
    from fastvideo_quant.kernels.per_token_quant import per_token_quant_planned, per_token_quant_scratch

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(2)
    for K, N in shapes:
        w = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
        fp8 = build_layer("awq", w, {"fp8_compute": True, "fp8_compute_min_m": 1})
        exact = build_layer("awq", w)
        a = (fp8.qweight_k, fp8.zeros_k, fp8.scales_k, fp8.awq_layout)
        t = fp8.fp8_scale_k
        w8 = awq_dequantize(*a, FP8_DTYPE, fp8_scale=t, **FP8_TILE)
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            xq, sx = per_token_quant_planned(x, FP8_DTYPE)
            parts = {
                "route": lambda x=x, layer=fp8: layer.quant_method.apply(layer, x),
                "exact": lambda x=x, layer=exact: layer.quant_method.apply(layer, x),
                "convert": lambda a=a, t=t: awq_dequantize(*a, FP8_DTYPE, fp8_scale=t, **FP8_TILE),
                "quant": lambda x=x: per_token_quant_planned(x, FP8_DTYPE),
                "quant_scratch": lambda x=x: per_token_quant_scratch(x, FP8_DTYPE),
                "empty_w8": lambda w8=w8: torch.empty(w8.shape, dtype=w8.dtype, device=w8.device),
                "scaled_mm": lambda xq=xq, sx=sx, w8=w8, t=t: torch._scaled_mm(
                    xq, w8.t(), scale_a=sx, scale_b=t.view(1, -1), out_dtype=torch.bfloat16, use_fast_accum=True),
            }
            row = {"K": K, "N": N, "M": M, "fvq_awq": fvq_awq.__file__,
                   **{f"host_{k}_us": host_us(fn) for k, fn in parts.items()},
                   "gpu_route_us": 1e3 * graph_median_ms(parts["route"])}
            rows.append(row)
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print(write_json(out_dir, "awq-fp8-compute-host", {"rows": rows}, tag))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", nargs="+", type=int, default=[128, 256, 512, 1024, 4096, 16384])
    p.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in DIT_SHAPES])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--host", action="store_true", help="eager host time of the route and its parts instead")
    p.add_argument("--tag", default=None, help="suffix of the result files' names")
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    if args.host:
        host(shapes, args.m, args.out, args.tag)
        return
    checks = check(shapes)
    runs = {"exact": None, "fp8-compute": {"fp8_compute": True, "fp8_compute_min_m": 1}}
    rows = {}
    for run, config in runs.items():
        rows[run] = run_bench("awq", shapes, args.m, config=config, rounds=args.rounds)
        write_results(rows[run], args.out, suffix=run if args.tag is None else f"{run}-{args.tag}")
    env = environment()
    lines = [f"# AWQ: exact path vs the fp8 route (`fp8_compute`), {env.get('gpu')} · torch {env.get('torch')} · "
             f"{env.get('date')}", "",
             "Harness `bench_method` (L2 flushed, bf16 in the same round), median of the rounds' ratios, graph (eager). "
             "Each run timed its own bf16. Checks first:", "", *[f"- {line}" for line in checks], "",
             "| K×N | M | bf16 µs (graph) | exact × bf16 | fp8 route × bf16 | rel err exact / fp8 (vs the original "
             "weight) | fp8 vs the de-quantized weight |",
             "|---|---|---|---|---|---|---|"]
    for a, b in zip(rows["exact"], rows["fp8-compute"], strict=True):
        lines.append(f"| {a.K}×{a.N} | {a.M} | {1e3 * b.bf16_graph_ms:.1f} | {a.speedup_graph:.2f}× ({a.speedup:.2f}×) | "
                     f"{b.speedup_graph:.2f}× ({b.speedup:.2f}×) | {a.rel_err_vs_fp32:.3f} / {b.rel_err_vs_fp32:.3f} | "
                     f"{b.rel_err_vs_dequant:.2e} |")
    path = f"{args.out}/{unused_stem(Path(args.out), result_stem('awq-fp8-compute', env, args.tag), ('.md',))}.md"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
