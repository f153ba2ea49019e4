# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Where the time of a small-M AWQ call goes: kernel alone vs the method's ``apply`` (host overhead).

    python benchmarks/awq_launch_probe.py

For each shape at M=1 and 16 prints: do_bench of the kernel wrapper called directly, do_bench of
``apply`` (what the shared harness times), a CUDA-graph replay of ``apply`` (GPU work alone), and the
host time per eager ``apply`` call (perf_counter over 300 calls, no sync inside).
"""

from __future__ import annotations

import torch

from fastvideo_quant.bench import build_layer, graph_median_ms, host_us, median_ms
from fastvideo_quant.plugins import ensure_registered


def med(fn) -> float:
    """do_bench median in µs (short runs: this probe times many small calls)."""
    return median_ms(fn, 10, 50) * 1e3


def graph_us(fn) -> float:
    return graph_median_ms(fn, 10, 50) * 1e3


def main() -> None:
    ensure_registered("awq", "fvq_awq.hooks")
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
