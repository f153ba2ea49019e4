# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Host time per call (µs, back-to-back calls) of the fp8 layer at small M against its two kernels and bf16.

    python benchmarks/w8_host_probe.py

The harness's eager column turns host-bound where this exceeds the GPU time (plus what the L2 flush hides).
"""

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import build_layer, host_us
from fastvideo_quant.kernels import w8_small_m_cuda as w8
from fastvideo_quant.kernels.small_m import small_m_linear

for K, N in ((5120, 5120), (13824, 5120)):
    w = (torch.randn(N, K, device="cuda") * K**-0.5).bfloat16()
    layer = build_layer("fp8", w)
    for M in (1, 16):
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        times = {"bf16": host_us(lambda: F.linear(x, w)),
                 "layer": host_us(lambda: layer.quant_method.apply(layer, x)),
                 "w8.linear": host_us(lambda: w8.linear(x, layer.weight, layer.weight_scale, None)),
                 "triton": host_us(lambda: small_m_linear(x, layer.weight, layer.weight_scale, None))}
        print(f"{K}x{N} M={M}: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()), flush=True)
