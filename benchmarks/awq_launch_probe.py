# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Where the time of a small-M AWQ call goes: kernel alone vs the method's ``apply`` (host overhead).

    python benchmarks/awq_launch_probe.py

For each shape at M=1 and 16 prints: do_bench of the kernel wrapper called directly, do_bench of
``apply`` (what the shared harness times), a CUDA-graph replay of ``apply`` (GPU work alone), and the
host time per eager ``apply`` call (perf_counter over 300 calls, no sync inside).
"""

from __future__ import annotations

import time

import torch
import triton.testing

from fastvideo_quant.bench import build_layer
from fastvideo_quant.plugins import register_plugin
from fastvideo_quant.quantization.selection import QUANTIZATION_METHODS


def med(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")) * 1e3


def graph_us(fn) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return med(g.replay)


def host_us(fn, n: int = 300) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def main() -> None:
    if "awq" not in list(QUANTIZATION_METHODS):
        import fvq_awq.hooks

        register_plugin(fvq_awq.hooks, "awq")
    from fvq_awq.kernels.dispatch import awq_linear_cuda

    for K, N in [(5120, 5120), (3072, 12288), (5120, 13824)]:
        w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
        layer = build_layer("awq", w, {"group_size": 128})
        args = (layer.qweight_k, layer.zeros_k, layer.scales_k, layer.awq_layout)
        for M in (1, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            apply = lambda x=x: layer.quant_method.apply(layer, x)  # noqa: E731
            direct = lambda x=x: awq_linear_cuda(x, *args)  # noqa: E731
            print(f"K={K} N={N} M={M}: do_bench apply {med(apply):.1f} us, dispatch {med(direct):.1f} us, "
                  f"graph {graph_us(apply):.1f} us, host/call apply {host_us(apply):.1f} us, "
                  f"dispatch {host_us(direct):.1f} us", flush=True)
    cache = torch.empty(int(256e6 // 4), dtype=torch.int, device="cuda")
    print(f"L2 flush (256 MB zero_) {med(cache.zero_):.1f} us")


if __name__ == "__main__":
    main()
