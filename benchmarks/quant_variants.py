"""Per-token quantization kernel variants against the core kernel, at the M where fp8 W8A8 misses its targets.

    python benchmarks/quant_variants.py [--out FILE.json] [--budget-s 120]
    python benchmarks/quant_variants.py --interpret           # CPU, TRITON_INTERPRET=1: correctness only, tiny shapes

Why: on the H200 the fp8 5120x5120 layer runs 1.35x bf16 at M=1024 (target 1.4x) and 1.55x at M=4096 (1.6x), and the
per-token quantization pass is a fixed cost in both (H100: 10.6 us at M=1024, 27.6 us at M=4096 for 16 / 63 MB, i.e.
1.5 / 2.3 TB/s, `results/quant-sweep_*`). Variants of the one-row-per-program, one-pass kernel
(``fastvideo_quant.kernels.per_token_quant``), all with its arithmetic (codes must equal the torch reference bit for
bit or the variant is dropped):

* ``native``: the row stays in the input dtype in registers (bf16: half the registers of the float32 copy the core
  kernel holds), the amax is taken on it (exact) and each element is widened only to be scaled and stored — more
  programs resident per SM, more loads in flight.
* ``persist P S``: ``P`` programs per SM loop over rows (``tl.range`` with ``num_stages=S``, so Triton may issue the
  next row's load before this row's reduction finishes), native registers.

Each point is timed with ``bench.median_ms`` (do_bench, L2 flushed), next to the core kernel's default config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

INTERPRET = "--interpret" in sys.argv
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastvideo_quant.bench import environment, median_ms  # noqa: E402
from fastvideo_quant.kernels import FP8_AMAX_EPS  # noqa: E402
from fastvideo_quant.kernels.per_token_quant import FP8_DTYPE, div_ieee, per_token_quant, quantize_codes  # noqa: E402
from fastvideo_quant.kernels.triton_launch import next_pow2  # noqa: E402


@triton.jit
def _rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, FP8: tl.constexpr, EPS: tl.constexpr,
                 BLOCK_K: tl.constexpr, NATIVE: tl.constexpr, STAGES: tl.constexpr, INTERP: tl.constexpr):
    offs = tl.arange(0, BLOCK_K)[None, :]
    kmask = offs < K
    for row in tl.range(tl.program_id(0), M, tl.num_programs(0), num_stages=STAGES):
        r64 = tl.zeros([1], tl.int64) + row  # [1]: 64-bit offsets
        xn = tl.load(x_ptr + r64[:, None] * stride_xm + offs, mask=kmask, other=0.0)
        if NATIVE:
            amax = tl.max(tl.abs(xn), axis=1).to(tl.float32)  # exact: |x| and max stay in the input dtype
        else:
            amax = tl.max(tl.abs(xn.to(tl.float32)), axis=1)
        if FP8:
            scale = div_ieee(tl.maximum(amax, EPS), tl.full([1], 448.0, tl.float32), INTERP)
            inv = div_ieee(tl.full([1], 1.0, tl.float32), scale, INTERP)
        else:
            scale = div_ieee(amax, tl.full([1], 127.0, tl.float32), INTERP)
            safe = tl.where(amax > 0, amax, 1.0)
            inv = tl.where(amax > 0, div_ieee(tl.full([1], 127.0, tl.float32), safe, INTERP), 0.0)
        q = quantize_codes(xn.to(tl.float32), inv[:, None], FP8, INTERP)
        tl.store(q_ptr + r64[:, None] * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=kmask)
        tl.store(s_ptr + r64, scale)


def variant(x: torch.Tensor, qdtype: torch.dtype, native: bool, programs: int, stages: int, warps: int):
    m, k = x.shape
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    _rows_kernel[(min(m, programs),)](x, q, s, m, k, x.stride(0), k, FP8=qdtype == FP8_DTYPE, EPS=FP8_AMAX_EPS,
                                     BLOCK_K=next_pow2(k), NATIVE=native, STAGES=stages, INTERP=INTERPRET,
                                     num_warps=warps)
    return q, s


def candidates(m: int, sms: int) -> list[tuple[str, bool, int, int, int]]:
    out = [(f"native w{w}", True, m, 1, w) for w in (4, 8, 16)]
    out += [("float32 w8 (core, plain launch)", False, m, 1, 8)]
    out += [(f"persist {p} s{s} w{w}", True, p * sms, s, w) for p in (4, 8, 16) for s in (1, 2, 3) for w in (4, 8)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--interpret", action="store_true", help="CPU, correctness only (read before triton loads)")
    args = ap.parse_args()
    dev = "cpu" if INTERPRET else "cuda"
    sms = 2 if INTERPRET else torch.cuda.get_device_properties(0).multi_processor_count
    points = [(5, 40), (3, 200)] if INTERPRET else [(1024, 5120), (4096, 5120), (1024, 13824), (4096, 13824),
                                                    (4096, 3072)]
    print(environment() if not INTERPRET else "interpreter", flush=True)
    rows, t0 = [], time.time()
    for qdtype in (FP8_DTYPE, torch.int8):
        name = "fp8" if qdtype == FP8_DTYPE else "int8"
        for m, k in points:
            if time.time() - t0 > args.budget_s:
                print(f"budget spent, stopping before {name} M={m} K={k}")
                break
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16) * 3
            x[m // 2] = 0  # an all-zero row (int8: scale 0, codes 0)
            ref_q, ref_s = per_token_quant(x, qdtype, flat_scale=True)
            nbytes = m * k * 3 + m * 4
            res = []
            core_us = None if INTERPRET else median_ms(lambda x=x, qd=qdtype: per_token_quant(x, qd), 10, 40) * 1e3
            for label, native, programs, stages, warps in candidates(m, sms):
                try:
                    q, s = variant(x, qdtype, native, programs, stages, warps)
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
                    print(f"  ERROR {name} M={m} K={k} {label}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                if not (torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s)):
                    bad = (q.view(torch.uint8) != ref_q.view(torch.uint8)).sum().item()
                    print(f"  FAILED {name} M={m} K={k} {label}: {bad} codes differ")
                    continue
                if INTERPRET:
                    res.append((0.0, label))
                    continue
                us = median_ms(lambda x=x, a=(qdtype, native, programs, stages, warps): variant(x, *a), 10, 40) * 1e3
                res.append((us, label))
            res.sort()
            if INTERPRET:
                print(f"{name} M={m} K={k}: {len(res)} variants equal the core kernel bit for bit")
                continue
            print(f"{name} M={m} K={k}: core {core_us:.1f}us ({nbytes / core_us / 1e6:.2f} TB/s); best: "
                  + "; ".join(f"{lab} {us:.1f}us ({nbytes / us / 1e6:.2f} TB/s)" for us, lab in res[:4]), flush=True)
            rows.append({"qdtype": name, "M": m, "K": k, "core_us": core_us,
                         "results": [{"us": us, "variant": lab} for us, lab in res]})
    print(f"done in {time.time() - t0:.0f}s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
