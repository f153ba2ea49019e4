"""Host time per call of the small-M pieces on a GPU machine (the GPU is never the bottleneck).

    python benchmarks/host_probe.py [--m M] [--profile] [--out FILE.json]

Wall time of 300 back-to-back calls at M (default 1) on a 5120x5120 layer, per call, in µs: torch
allocations, bf16 ``F.linear``, ``torch._scaled_mm``, the small-M kernel and the fp8 per-token
quantization (the checked call, and the planned launch that the fp8 plugin uses: through the lean C-launcher call
and through ``CompiledKernel[grid]`` as before),
each plugin's ``apply``, AWQ's dispatcher checked vs planned, and AWQ's whole layer forward against a plain
``nn.Linear``'s. Explains eager timings where host time
exceeds GPU time. ``--profile`` adds
cProfile's top entries (by own time) for each plugin's ``apply``: where the host time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
from unittest import mock

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import build_layer, environment, host_us
from fastvideo_quant.kernels import SMALL_M_MAX as small_m_max
from fastvideo_quant.kernels import small_m, triton_launch
from fastvideo_quant.kernels.per_token_quant import per_token_quant


def main() -> None:
    from fvq_fp8.kernels import act_quant_triton

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    ap.add_argument("--m", type=int, default=1, help="tokens (M > 32 takes the W8A8 paths)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    K = N = 5120
    w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
    x = torch.randn(args.m, K, device="cuda", dtype=torch.bfloat16)
    fp8 = build_layer("fp8", w)
    int8 = build_layer("int8", w, {"fvq_backend": "triton"})
    xq, xs = act_quant_triton.per_token_quant(x)
    q8, s8 = fp8.weight, fp8.weight_scale
    out: dict[str, float] = {
        "torch_empty": host_us(lambda: torch.empty((args.m, K), dtype=torch.bfloat16, device="cuda")),
        "bf16_linear": host_us(lambda: F.linear(x, w)),
        "fp8_per_token_quant_checked": host_us(lambda: per_token_quant(x, torch.float8_e4m3fn)),
        "scaled_mm_rowwise": host_us(lambda: torch._scaled_mm(xq, q8.t(), scale_a=xs, scale_b=s8,
                                                              out_dtype=torch.bfloat16, use_fast_accum=True)),
    }
    if args.m > small_m_max:  # the W8A8 pieces: two checked wrappers vs the planned call (kernels/w8a8_linear)
        from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm_unchecked
        from fastvideo_quant.kernels.w8a8_linear import w8a8_linear

        for tag, layer, qdt, scale in (("fp8", fp8, torch.float8_e4m3fn, fp8.weight_scale),
                                       ("int8", int8, torch.int8, int8.weight_scale)):
            def two_calls(layer=layer, qdt=qdt, scale=scale):
                q, s = per_token_quant(x, qdt, flat_scale=True)
                return w8a8_gemm_unchecked(q, s, layer.weight, scale, None, torch.bfloat16)

            out[f"{tag}_quant_then_gemm"] = host_us(two_calls)
            out[f"{tag}_w8a8_linear_planned"] = host_us(
                lambda layer=layer, qdt=qdt, scale=scale: w8a8_linear(x, qdt, layer.weight, scale, None, torch.bfloat16))
    # AWQ (int4, group 128): the dispatcher's checked call against its planned gemm_t launch (M <= 128 on this shape)
    from fvq_awq.kernels import dispatch as awq_dispatch

    awq = build_layer("awq", w, {"group_size": 128})
    awq_args = (awq.qweight_k, awq.zeros_k, awq.scales_k, awq.awq_layout, None)
    out["awq_checked"] = host_us(lambda: awq_dispatch._checked_linear(x, *awq_args))
    out["awq_linear_planned"] = host_us(lambda: awq_dispatch.awq_linear_cuda(x, *awq_args))
    out["awq_apply"] = host_us(lambda: awq.quant_method.apply(awq, x))
    # the whole layer forward (LinearBase's checks, then apply) against a plain nn.Linear's: `fvq bench`'s "host
    # overhead" column is the eager forward minus its graph replay
    out["awq_layer_forward"] = host_us(lambda: awq(x))
    lin = torch.nn.Linear(K, N, bias=False, device="cuda", dtype=torch.bfloat16)
    out["nn_linear_forward"] = host_us(lambda: lin(x))
    for lean in (True, False):
        tag = "lean" if lean else "getitem"
        with mock.patch.object(triton_launch, "_no_launch_hooks", lambda lean=lean: lean):
            if args.m <= small_m_max:
                out[f"small_m_{tag}"] = host_us(lambda: small_m.small_m_linear(x, q8, s8, None))
            out[f"fp8_per_token_quant_{tag}"] = host_us(lambda: act_quant_triton.per_token_quant(x))
            out[f"fp8_apply_{tag}"] = host_us(lambda: fp8.quant_method.apply(fp8, x))
            out[f"int8_apply_{tag}"] = host_us(lambda: int8.quant_method.apply(int8, x))
    for k, v in out.items():
        print(f"{k:32s} {v:7.1f} us")
    if args.profile:
        for name, layer in (("fp8", fp8), ("int8", int8), ("awq", awq)):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(300):
                layer.quant_method.apply(layer, x)
            prof.disable()
            torch.cuda.synchronize()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            print(f"--- cProfile: {name} apply at M={args.m}, 300 calls ---")
            print(buf.getvalue())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), f"host_us_m{args.m}_5120x5120": out}, f, indent=1)


if __name__ == "__main__":
    main()
