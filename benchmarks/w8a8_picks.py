# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""Which W8A8 GEMM config the autotuner picks (``fastvideo_quant.kernels.w8a8_gemm``), and its time, per shape and M.

    python benchmarks/w8a8_picks.py [--m 64 128 256] [--out FILE.json]

For each DiT shape, M and operand dtype (int8, fp8): one planned call (``kernels.w8a8_linear``: the first call
autotunes over ``w8a8_configs.CONFIGS``), checked against float32 math of the quantized operands, then the pick
and do_bench medians (L2 flushed) of the planned call and of bf16 ``F.linear`` in the same process.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, environment, median_ms, rel_err
from fastvideo_quant.kernels import w8a8_gemm
from fastvideo_quant.kernels.per_token_quant import per_token_quant
from fastvideo_quant.kernels.w8a8_linear import w8a8_linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--m", nargs="*", type=int, default=[64, 128, 256])
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for k, n in DIT_SHAPES:
        w = torch.randn(n, k, device="cuda") * k**-0.5
        wb = w.bfloat16()
        for qdt, qmax in ((torch.int8, 127.0), (torch.float8_e4m3fn, 448.0)):
            ws = (w.abs().amax(1) / qmax).float()
            y = w / ws[:, None]
            wq = (y.round().clamp(-127, 127) if qdt == torch.int8 else y).to(qdt)
            for m in args.m:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                out = w8a8_linear(x, qdt, wq, ws, None, torch.bfloat16)
                xq, xs = per_token_quant(x, qdt, flat_scale=True)
                ref = (xq.float() * xs[:, None]) @ (wq.float() * ws[:, None]).T
                err = rel_err(out, ref)
                if err > 2e-2:
                    raise SystemExit(f"{qdt} {k}x{n} M={m}: rel err {err:.2e} against float32 math")
                picks = [(key, p) for key, p in w8a8_gemm._picked.items() if key[1:3] == (n, k) and key[5] == qdt
                         and key[0] == w8a8_gemm.m_bucket(m)]
                t = median_ms(lambda: w8a8_linear(x, qdt, wq, ws, None, torch.bfloat16))
                tb = median_ms(lambda: F.linear(x, wb))
                pick = picks[-1][1]._asdict() if picks else None
                rows.append({"k": k, "n": n, "m": m, "dtype": str(qdt), "pick": pick, "ms": t, "bf16_ms": tb,
                             "rel_err": err})
                print(f"{str(qdt):20s} {k}x{n} M={m}: {t * 1e3:6.1f} us vs bf16 {tb * 1e3:6.1f} us = {tb / t:.2f}x "
                      f"err {err:.1e} pick {pick}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
