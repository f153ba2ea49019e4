"""fp8 at 17 <= M <= 512: every W8A8 GEMM config, every W8A16 small-M config, and row-wise ``_scaled_mm``, per shape.

    python benchmarks/fp8_path_sweep.py --out DIR [--ms 20 24 32 ...] [--budget-s 420] [--modes harness chain]
        [--extra-picks 32,32,512,1,4,3 ...]

Why (``results/fp8-m-sweep_*``): across a fine M grid the fp8 layer was slower than bf16 on the GPU at 5120x5120
M=20-32 (W8A16 kernel 0.96-0.98x) and 3072x12288 M=288-352 (``_scaled_mm`` 0.72-0.90x), and the Triton W8A8 GEMM's
speed at one (shape, M) moved by up to 20% between two processes (5120x5120 M=160: 1.30x / 1.11x; M=24-32:
1.04x / 0.85x): its autotuner picks a config per power-of-two M bucket, at whichever M arrives first, from one
short timing. This sweep times every config the autotuner would consider (``w8a8_configs.prune`` for the M bucket)
at every M, so a table can pick per bucket the config that is best over the bucket's M (not at one M), and the
path (W8A16 / Triton W8A8 / ``_scaled_mm`` / ``_scaled_mm`` on a padded row count) per shape and M range from GPU
times measured side by side. Above M=256, ``cublas_pad`` times the plugin's padded path (``gemm.padded_scaled_mm``:
the quantization writes M rows of a P-row buffer, ``_scaled_mm`` runs on P rows) for each P in :func:`pad_rows`:
cuBLASLt's kernel choice for some M is slower than its choice for a larger row count (3072x12288: 37.4 µs at M=352,
34.0 µs at 512 rows, ``results/scaled-mm-pad-probe_*``).

Each candidate is checked against float32 math of the de-quantized weight (rel err <= 4e-2, W8A8 quantizes
activations; <= 1e-2 for W8A16) before it is timed as a CUDA-graph replay (GPU time; quantization included for
the W8A8 paths). bf16 ``F.linear`` in the same process. Writes ``fp8-path-sweep_<gpu>_<date>.json``.

Two measurements (``--modes``; each row says which in ``"mode"``, and rows without it are ``harness``):
``harness`` times one call as the benchmark harness does (a CUDA-graph replay, L2 emptied before it);
``chain`` times ``layer_chain.py``'s model-like measurement: ``L`` layers of distinct weights (one pass over their
fp8 weights >= 3x L2) called in one CUDA graph, replayed back to back, per-layer time (the median of
``--rounds``). They disagree where it matters: at 5120x5120 M=24-32 the shipped route ran 1.05-1.06x bf16 one call
at a time and 0.90-0.92x in the chain (``results/w8-cuda-probe_*_m16-32.json``). In chain mode every candidate
is checked on the first and the last layer, and ``shipped`` (the fp8 method's ``apply`` as it stands: the route
in use) is a column. ``--extra-picks`` adds Triton launch configs outside ``w8a8_configs.CONFIGS`` (applied at M
where ``BLOCK_M`` <= max(64, twice the M bucket): a 64-row tile at M <= 32 too, whose rows past M wrap onto real ones
and are not stored): a route table may name any pick. ``--skip-small`` leaves out the W8A16 Triton kernel's configs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fvq_fp8.kernels import gemm
from layer_chain import L2_BYTES, capture, chain_ms_per_layer

from fastvideo_quant.bench import DIT_SHAPES, build_layer, environment, graph_median_ms, rel_err, require_cuda
from fastvideo_quant.kernels import small_m, w8a8_gemm
from fastvideo_quant.kernels.per_token_quant import per_token_quant
from fastvideo_quant.kernels.w8a8_configs import CONFIGS, m_bucket, prune

DEFAULT_MS = [20, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 512]


def pad_rows(M: int) -> list[int]:
    """Padded row counts tried at M (> 256): the multiples of 64 above M, up to M + 256."""
    return list(range((M // 64 + 1) * 64, M + 257, 64))


def small_candidates(M: int) -> list[small_m.Config]:
    return [small_m.Config(bm, bn, bk, split, 4, 4) for bm in (16, 32) for bn in (32, 64) for bk in (128, 256)
            for split in (1, 2, 4)]


class Layers:
    """The fp8 layers a sweep point runs on: ``w[i]`` fp8 ``[N, K]``, ``s_row[i]`` float32 ``[1, N]``, ``wb[i]`` the
    de-quantized bf16 weight, ``dq[i]`` float32, ``layer[i]`` the method's layer (``shipped``)."""

    def __init__(self, K: int, N: int, count: int) -> None:
        self.layer, self.w, self.s_row, self.wb, self.dq = [], [], [], [], []
        for _ in range(count):
            layer = build_layer("fp8", torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5)
            self.layer.append(layer)
            self.w.append(layer.weight)
            self.s_row.append(layer.weight_scale)
            self.dq.append(layer.weight.float() * layer.weight_scale.reshape(-1, 1))
            self.wb.append(self.dq[-1].to(torch.bfloat16))

    def __len__(self) -> int:
        return len(self.w)


def timer(mode: str, n_layers: int, rounds: int):
    """``time(make)`` -> ms per call: ``make(i)`` is the candidate's function on layer ``i``."""
    if mode == "harness":
        return lambda make: graph_median_ms(make(0), 5, 25)

    def chain(make) -> float:
        graph = capture([make(i) for i in range(n_layers)])
        t = statistics.median(chain_ms_per_layer(graph, n_layers, 20) for _ in range(rounds))
        del graph
        return t
    return chain


def triton_make(x, ls: Layers, pick: w8a8_gemm.Pick):
    """Per-token quantization + the core GEMM launched with ``pick``, on layer ``i``."""
    def make(i):
        def fn():
            xq, xs = per_token_quant(x, ls.w[i].dtype)
            return w8a8_gemm.w8a8_gemm_unchecked(xq, xs, ls.w[i], ls.s_row[i], None, x.dtype, pick)
        return fn
    return make


def measure(M: int, K: int, N: int, ls: Layers, mode: str, rounds: int, extra: list[w8a8_gemm.Pick],
            skip_small: bool, t0: float) -> dict:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    checked = (0, len(ls) - 1) if mode == "chain" else (0,)
    time_ms = timer(mode, len(ls), rounds)

    def error(make) -> float:
        """Max relative error over the checked layers, fresh inputs each (``x`` is refilled in place)."""
        e = 0.0
        for i in checked:
            x.copy_(torch.randn_like(x))
            e = max(e, rel_err(make(i)(), x.float() @ ls.dq[i].T))
        return e

    row: dict = dict(K=K, N=N, M=M, mode=mode, layers=len(ls) if mode == "chain" else 1, triton={}, small={})
    row["bf16_graph"] = time_ms(lambda i: lambda: F.linear(x, ls.wb[i]))

    def cublas(i):
        def fn():
            xq, xs = per_token_quant(x, ls.w[i].dtype)
            return torch._scaled_mm(xq, ls.w[i].t(), scale_a=xs, scale_b=ls.s_row[i], out_dtype=x.dtype,
                                    use_fast_accum=True)
        return fn
    row["quant"] = time_ms(lambda i: lambda: per_token_quant(x, ls.w[i].dtype))  # (the W8A8 paths' first launch)
    row["cublas_err"] = error(cublas)
    row["cublas_graph"] = time_ms(cublas)

    def shipped(i):
        return lambda: ls.layer[i].quant_method.apply(ls.layer[i], x)
    row["shipped_err"] = error(shipped)
    if row["shipped_err"] > 4e-2:
        raise SystemExit(f"{K}x{N} M={M}: the shipped fp8 path's relative error {row['shipped_err']:.3e} > 4e-2")
    row["shipped"] = time_ms(shipped)
    if M > 256:
        row["cublas_pad"] = {}
        for P in pad_rows(M):
            def padded(i, P=P):
                return lambda: gemm.padded_scaled_mm(x, ls.w[i], ls.s_row[i], None, P)
            err = error(padded)
            if err > 4e-2 or padded(0)().shape != (M, N):
                print(f"WRONG M={M} {K}x{N} cublas padded to {P}: rel err {err:.3e}", flush=True)
                continue
            row["cublas_pad"][str(P)] = time_ms(padded)
    picks = [w8a8_gemm.Pick.of(cfg) for cfg in prune(CONFIGS, {"M_BUCKET": m_bucket(M)})]
    picks += [p for p in extra if p not in picks and p.block_m <= max(64, 2 * m_bucket(M))]
    for pick in picks:
        make = triton_make(x, ls, pick)
        try:
            err = error(make)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is data
            print(f"skip M={M} {K}x{N} {tuple(pick)}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            continue
        if err > 4e-2:
            print(f"WRONG M={M} {K}x{N} triton {tuple(pick)}: rel err {err:.3e}", flush=True)
            continue
        row["triton"][",".join(map(str, pick))] = time_ms(make)
    if M <= 32 and not skip_small:
        for cfg in small_candidates(M):
            def small(i, cfg=cfg):
                return lambda: small_m.small_m_linear(x, ls.w[i], ls.s_row[i], None, config=cfg)
            try:
                err = error(small)
            except Exception as exc:  # noqa: BLE001
                print(f"skip M={M} {K}x{N} small {tuple(cfg)}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            if err > 1e-2 or (cfg.split_k > 1 and not torch.equal(small(0)(), small(0)())):
                print(f"WRONG/NONDETERMINISTIC M={M} {K}x{N} small {tuple(cfg)}: rel err {err:.3e}", flush=True)
                continue
            row["small"][",".join(map(str, cfg))] = time_ms(small)
    bt = min(row["triton"].items(), key=lambda kv: kv[1]) if row["triton"] else ("-", float("inf"))
    bs = min(row["small"].items(), key=lambda kv: kv[1]) if row["small"] else ("-", float("inf"))
    b = row["bf16_graph"]
    pads = " ".join(f"{P}: {b / t:.2f}" for P, t in row.get("cublas_pad", {}).items())
    print(f"[{mode}] {K}x{N} M={M}: bf16 {b * 1e3:.1f}us, quant {row['quant'] * 1e3:.1f}us | shipped "
          f"{b / row['shipped']:.2f} | cublas "
          f"{b / row['cublas_graph']:.2f} [padded {pads or '-'}] | triton best {b / bt[1]:.2f} [{bt[0]}] | small "
          f"best {b / bs[1]:.2f} [{bs[0]}] [{time.time() - t0:.0f}s]", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", nargs="+", type=int, default=DEFAULT_MS)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--shapes", nargs="+", default=None, help="KxN shapes (default: the four DiT shapes)")
    ap.add_argument("--modes", nargs="+", choices=("harness", "chain"), default=["harness"])
    ap.add_argument("--rounds", type=int, default=3, help="chain: timings a candidate (median)")
    ap.add_argument("--l2-multiple", type=float, default=3.0, help="chain: one pass over the fp8 weights >= this x L2")
    ap.add_argument("--extra-picks", nargs="*", default=[],
                    help="Triton launch configs beyond w8a8_configs.CONFIGS: BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,warps,stages")
    ap.add_argument("--skip-small", action="store_true", help="leave out the W8A16 Triton kernel's configs")
    ap.add_argument("--tag")
    args = ap.parse_args()
    require_cuda("fp8_path_sweep.py")
    extra = [w8a8_gemm.as_pick(int(v) for v in p.split(",")) for p in args.extra_picks]
    t0 = time.time()
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_" + args.tag if args.tag else ("_" + "-".join(args.shapes) if args.shapes else "")
    path = out / f"fp8-path-sweep_{env['gpu'].lower().replace(' ', '-')}_{env['date']}{tag}.json"
    rows = []
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes] if args.shapes else DIT_SHAPES
    for K, N in shapes:
        torch.manual_seed(K + N)
        count = max(4, math.ceil(args.l2_multiple * L2_BYTES / (N * K))) if "chain" in args.modes else 1
        ls = Layers(K, N, count)
        for M in args.ms:
            if time.time() - t0 > args.budget_s:
                print(f"budget spent: skipped {K}x{N} M={M} and after", flush=True)
                break
            for mode in args.modes:
                rows.append(measure(M, K, N, ls, mode, args.rounds, extra, args.skip_small, t0))
            with open(path, "w") as f:  # after every point: a run cut short keeps what it measured
                json.dump({"environment": env, "args": vars(args), "rows": rows}, f)
        del ls
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
