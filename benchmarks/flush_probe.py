# ruff: noqa: B023  (the timed lambdas run before the loop variables change)
"""How much of a small-M time is the harness's L2 flush: timings after a write flush, a read flush and none.

    python benchmarks/flush_probe.py [--ms 1 16 128] [--methods awq fp8] [--out FILE.json]

Why (seventh session, H200): ``triton.testing.do_bench`` (the harness's timer) empties L2 before each run by
*writing* 256 MB (``cache.zero_()``), which leaves L2 full of dirty lines; the timed kernel's reads then evict them,
so every timed call also writes back the dirty lines it evicts. A linear fit of bf16 ``F.linear`` at M=1 over the DiT
shapes' weight bytes then has an intercept of 7.4 µs (time not proportional to bytes; 4.2 µs after a read
flush) — large against a 4-bit weight's ~4 µs of streaming at 5120x5120. A decode-like step (M <= 128: small
activations) finds L2 holding mostly *clean* lines, the previous layers' weights; a read flush (``sum`` over the same
256 MB) leaves that state.

For each shape and M: the method's ``apply`` and bf16 ``F.linear``, each timed (median over ~100 ms of runs,
``bench.median_ms_after``) after

* ``write``: ``do_bench`` as the harness runs it;
* ``read``: the same loop with the buffer read instead of zeroed (L2 full of clean lines, weights not cached);
* ``none``: no flush (weights that fit in L2 stay there: an upper bound, not a claim);

plus a one-element kernel after each flush (what a call costs that streams nothing), and a least-squares fit of the
bf16 times against weight bytes per flush (intercept µs, slope → TB/s). Outputs are checked against float32 math of
the de-quantized weight before timing.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, median_ms, median_ms_after, rel_err

FLUSH_BYTES = 256 * 1024 * 1024


def all_flushes(fn, buf: torch.Tensor) -> dict[str, float]:
    return {"write": median_ms(fn), "read": median_ms_after(fn, buf.sum), "none": median_ms_after(fn, lambda: None)}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``ms = a + bytes / B``: returns (a in µs, B in TB/s)."""
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(t for _, t in points) / n
    slope = sum((b - mx) * (t - my) for b, t in points) / sum((b - mx) ** 2 for b, _ in points)
    return (my - slope * mx) * 1e3, 1e-9 / slope  # bytes/ms -> TB/s: 1 / (slope ms/byte) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ms", nargs="*", type=int, default=[1, 16, 128])
    ap.add_argument("--methods", nargs="*", default=["awq", "fp8"])
    ap.add_argument("--out")
    args = ap.parse_args()
    buf = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    one = torch.zeros(1, device="cuda")
    rows: list[dict] = [{"what": "one-element kernel", **all_flushes(lambda: one.add_(1), buf)}]
    print(f"one-element kernel: {rows[0]}", flush=True)
    bf16_points: dict[int, dict[str, list]] = {}
    for k, n in DIT_SHAPES:
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        layers = {m: build_layer(m, w) for m in args.methods}
        for m_rows in args.ms:
            x = torch.randn(m_rows, k, device="cuda", dtype=torch.bfloat16)
            times = {"bf16": all_flushes(lambda: F.linear(x, w), buf)}
            for name, layer in layers.items():
                ref = x.float() @ layer.quant_method.dequantize_weight(layer).T
                err = rel_err(layer.quant_method.apply(layer, x), ref)
                if err > 5e-2:
                    raise SystemExit(f"{name} {k}x{n} M={m_rows}: rel err {err:.2e} against its de-quantized weight")
                times[name] = all_flushes(lambda: layer.quant_method.apply(layer, x), buf)
            for flush, t in times["bf16"].items():
                bf16_points.setdefault(m_rows, {}).setdefault(flush, []).append((n * k * 2, t))
            row = {"k": k, "n": n, "m": m_rows, "ms": times}
            rows.append(row)
            print(f"{k}x{n} M={m_rows}: " + " | ".join(
                f"{name} " + " ".join(f"{f} {t * 1e3:.1f}us" + (f" ({times['bf16'][f] / t:.2f}x)" if name != "bf16"
                                                                else "") for f, t in ft.items())
                for name, ft in times.items()), flush=True)
        del layers
        torch.cuda.empty_cache()
    fits = {m: {f: fit(p) for f, p in per.items()} for m, per in bf16_points.items()}
    for m, per in fits.items():
        print(f"bf16 M={m} fit ms = a + bytes/B: " + ", ".join(f"{f}: a {a:.1f} us, B {b:.2f} TB/s"
                                                             for f, (a, b) in per.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "rows": rows, "bf16_fits": fits}, f, indent=1)


if __name__ == "__main__":
    main()
