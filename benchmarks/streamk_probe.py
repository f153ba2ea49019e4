"""fp8 W8A8 above M=256: a persistent Triton GEMM with a split-K remainder wave, against row-wise ``_scaled_mm``.

    python benchmarks/streamk_probe.py --out DIR [--shapes 5120x5120 ...] [--ms 400 1024 4096] [--budget-s 420]

Why (``w8_notes.md``, sessions 3-12): above M=256 the fp8 layer is per-token quantization + cuBLASLt's row-wise
``_scaled_mm``, whose 128x128 tiles leave a partial last wave — 5120x5120 M=1024: 320 tiles on 132 SMs (2.42 waves
run as 3), M=385-448: 160 tiles (1.21 waves run as 2: 26.6 -> 37.3 µs from M=384 to 400, the layer at parity with
bf16 there). The M=1024 target (1.4x) is ~2 µs of GPU time away; the parity band is the "never slower" target.

Prediction: a persistent kernel (one program per SM) that runs the whole waves of tiles data-parallel and splits the
remaining ``tiles % programs`` tiles over K (``SPLIT`` = programs // remainder pieces, reduced in one launch by
``split_k.split_k_sum``) takes ~(2 + 1/SPLIT) tile-times instead of 3 at 5120x5120 M=1024 (~0.83x the GEMM) and
~1.25 instead of 2 at M=400 — if its tiles run at cuBLASLt's rate. The eleventh session's pointer GEMM ran 63 µs
against ``_scaled_mm``'s 46.5 at M=1024, so the mainloop is offered both as pointer loads (cp.async) and TMA
descriptor loads, and the outer tile loop flattened into the pipeline or not.

Every config is checked against float32 math of the same fp8 operands (rel err <= 1e-2) before it is timed as a
CUDA-graph replay (quantization included for every path, so the ratios compare with the harness's); bf16 ``F.linear``
and the shipped quantization + ``_scaled_mm`` in the same process. Writes ``streamk-probe_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import time

import torch
import triton
import triton.language as tl

from fastvideo_quant.kernels.split_k import split_k_sum


@triton.jit
def _mainloop(a_ptr, b_ptr, a_desc, b_desc, off_m, off_n, k_lo, k_hi, M, N, stride_am, stride_bn,
              USE_TMA: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, WS: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_TMA:
        for ki in tl.range(k_lo, k_hi, warp_specialize=WS):
            a = a_desc.load([off_m, ki * BLOCK_K])
            b = b_desc.load([off_n, ki * BLOCK_K])
            if FP32_DOT:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32).T, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b.T, acc)
    else:
        offs_m = tl.max_contiguous(tl.multiple_of((off_m + tl.arange(0, BLOCK_M)) % M, BLOCK_M), BLOCK_M)
        offs_n = tl.max_contiguous(tl.multiple_of((off_n + tl.arange(0, BLOCK_N)) % N, BLOCK_N), BLOCK_N)
        offs_k = k_lo * BLOCK_K + tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]
        for _ in range(k_lo, k_hi):
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            if FP32_DOT:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    return acc


@triton.jit
def _tile_of(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    group_size = GROUP_M * num_pid_n
    first_m = (tile // group_size) * GROUP_M
    rows_in_group = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % group_size) % rows_in_group
    pid_n = (tile % group_size) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _epilogue(acc, c_ptr, sa_ptr, sb_ptr, off_m, off_n, M, N, stride_cm, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc * sa[:, None] * sb[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["M"])
def sk_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, ws_ptr, lock_ptr, a_desc, b_desc, M, N, K,
                   stride_am, stride_bn, stride_cm,
                   NUM_PROGS: tl.constexpr, SPLIT: tl.constexpr, USE_TMA: tl.constexpr, FP32_DOT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                   WS: tl.constexpr, FLATTEN: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    k_tiles = K // BLOCK_K
    if SPLIT > 1:
        sk_tiles = tiles % NUM_PROGS
    else:
        sk_tiles = 0
    dp_tiles = tiles - sk_tiles
    # whole waves: one tile at a time over all of K
    for tile in tl.range(pid, dp_tiles, NUM_PROGS, flatten=FLATTEN):
        pid_m, pid_n = _tile_of(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = _mainloop(a_ptr, b_ptr, a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, 0, k_tiles, M, N,
                        stride_am, stride_bn, USE_TMA, FP32_DOT, BLOCK_M, BLOCK_N, BLOCK_K, WS)
        _epilogue(acc, c_ptr, sa_ptr, sb_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, M, N, stride_cm, BLOCK_M, BLOCK_N)
    if SPLIT > 1:
        # the remainder: sk_tiles tiles, each in SPLIT pieces of K, one piece per program
        if pid < sk_tiles * SPLIT:
            r = pid // SPLIT
            s = pid % SPLIT
            pid_m, pid_n = _tile_of(dp_tiles + r, num_pid_m, num_pid_n, GROUP_M)
            acc = _mainloop(a_ptr, b_ptr, a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N,
                            s * k_tiles // SPLIT, (s + 1) * k_tiles // SPLIT, M, N, stride_am, stride_bn,
                            USE_TMA, FP32_DOT, BLOCK_M, BLOCK_N, BLOCK_K, WS)
            local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            everywhere = local >= 0
            last, total = split_k_sum(acc, ws_ptr, lock_ptr, r, s, local, BLOCK_M * BLOCK_N, SPLIT, everywhere)
            if last:
                _epilogue(total, c_ptr, sa_ptr, sb_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, M, N, stride_cm,
                          BLOCK_M, BLOCK_N)


def plan(M: int, N: int, K: int, bm: int, bn: int, bk: int, programs: int, split: bool) -> tuple[int, int, int]:
    """``(programs, SPLIT, remainder tiles)``: ``programs`` capped at the tile count; SPLIT = programs // remainder
    (at most the K steps), 1 when there is no remainder, a split would be < 2, or ``split`` is off."""
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    programs = min(programs, tiles)
    rem = tiles % programs
    s = min(programs // rem, K // bk) if (split and rem) else 1
    return programs, (s if s >= 2 else 1), (rem if s >= 2 else 0)


_SCRATCH: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def sk_gemm(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype,
            cfg: dict) -> torch.Tensor:
    """``(xq @ w.T) * xs * ws`` with config ``cfg`` (block_m/n/k, group_m, warps, stages, programs, split, tma)."""
    (M, K), N = xq.shape, w.shape[0]
    bm, bn, bk = cfg["block_m"], cfg["block_n"], cfg["block_k"]
    if K % bk:
        raise ValueError(f"sk_gemm: K={K} must be a multiple of block_k={bk}")
    programs, split, rem = plan(M, N, K, bm, bn, bk, cfg["programs"], cfg["split"])
    out = torch.empty((M, N), dtype=out_dtype, device=xq.device)
    key = (xq.device, rem, split, bm, bn)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty(max(rem * split * bm * bn, 1), dtype=torch.float32, device=xq.device),
                         torch.zeros(max(rem, 1), dtype=torch.int32, device=xq.device))
    scratch, locks = _SCRATCH[key]
    if cfg["tma"]:
        from triton.tools.tensor_descriptor import TensorDescriptor
        a_desc = TensorDescriptor.from_tensor(xq, [bm, bk])
        b_desc = TensorDescriptor.from_tensor(w, [bn, bk])
    else:
        a_desc = b_desc = None
    fp32_dot = not xq.is_cuda
    sk_gemm_kernel[(programs,)](xq, w, out, xs, ws, scratch, locks, a_desc, b_desc, M, N, K, xq.stride(0),
                                w.stride(0), out.stride(0), NUM_PROGS=programs, SPLIT=split, USE_TMA=cfg["tma"],
                                FP32_DOT=fp32_dot, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["group_m"],
                                WS=cfg.get("ws", False), FLATTEN=cfg.get("flatten", False),
                                num_warps=cfg["warps"], num_stages=cfg["stages"])
    return out


def configs(sms: int, family: str = "base") -> list[dict]:
    """``base``: 8-warp tiles (two warpgroups) with the most pipeline stages (4 or 3) that fit in 200 KB of shared
    memory, pointer or TMA loads, persistent with or without the split remainder, or one program per tile.
    ``ws``: TMA tiles with Triton's automatic warp specialization of the K loop and / or the persistent tile loop
    flattened into the pipeline, 4 or 8 warps, 3-5 stages."""
    out = []
    if family == "base":
        for bm, bn, bk in ((128, 128, 128), (128, 256, 128), (256, 128, 128), (128, 128, 256)):
            stages = 4 if (bm + bn) * bk * 4 <= 200 * 1024 else 3
            for tma in (False, True):
                for programs, split in ((sms, True), (sms, False), (1 << 30, False)):
                    out.append(dict(block_m=bm, block_n=bn, block_k=bk, group_m=8, warps=8, stages=stages,
                                    programs=programs, split=split, tma=tma))
        return out
    for bm, bn, bk, warps, stages in ((128, 128, 128, 4, 4), (128, 128, 128, 8, 4), (128, 128, 128, 8, 5),
                                      (128, 256, 128, 8, 4), (128, 256, 128, 8, 3)):
        for ws, flatten in ((True, False), (False, True), (True, True)):
            for programs, split in ((sms, True), (1 << 30, False)):
                if flatten and programs > sms:
                    continue
                out.append(dict(block_m=bm, block_n=bn, block_k=bk, group_m=8, warps=warps, stages=stages,
                                programs=programs, split=split, tma=True, ws=ws, flatten=flatten))
    return out


def name(cfg: dict) -> str:
    kind = "plain" if cfg["programs"] >= 1 << 30 else ("persist+sk" if cfg["split"] else "persist")
    return (f"{cfg['block_m']}x{cfg['block_n']}x{cfg['block_k']} w{cfg['warps']} s{cfg['stages']} "
            f"{'tma' if cfg['tma'] else 'ptr'}{' ws' if cfg.get('ws') else ''}{' flat' if cfg.get('flatten') else ''}"
            f" {kind}")


def measure(K: int, N: int, M: int, w: torch.Tensor, s_row: torch.Tensor, wb: torch.Tensor, sms: int,
            family: str) -> dict:
    from fastvideo_quant.bench import graph_median_ms, rel_err
    from fastvideo_quant.kernels.per_token_quant import per_token_quant

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    xq, xs = per_token_quant(x, w.dtype)
    exact = (xq.float() * xs.view(-1, 1)) @ (w.float() * s_row.view(-1, 1)).T
    row = dict(K=K, N=N, M=M, bf16=graph_median_ms(lambda: torch.nn.functional.linear(x, wb), 5, 25))

    def cublas():
        q, s = per_token_quant(x, w.dtype)
        return torch._scaled_mm(q, w.t(), scale_a=s, scale_b=s_row.view(1, -1), out_dtype=x.dtype,
                                use_fast_accum=True)
    row["cublas_err"] = rel_err(cublas(), exact)
    row["cublas"] = graph_median_ms(cublas, 5, 25)
    row["sk"] = {}
    for cfg in configs(sms, family):
        def fn(cfg=cfg):
            q, s = per_token_quant(x, w.dtype)
            return sk_gemm(q, s, w, s_row, x.dtype, cfg)
        try:
            outs = [fn(), fn()]
            err = rel_err(outs[0], exact)
            same = torch.equal(outs[0], outs[1])
        except Exception as e:  # a config the compiler rejects (shared memory, descriptors)
            print(f"skip {name(cfg)}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        if err > 1e-2 or not same:
            print(f"WRONG M={M} {K}x{N} {name(cfg)}: rel err {err:.3e} repeat-equal {same}", flush=True)
            continue
        row["sk"][name(cfg)] = graph_median_ms(fn, 5, 25)
    return row


def main() -> None:
    from fastvideo_quant.bench import build_layer, write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=["5120x5120"])
    ap.add_argument("--ms", type=int, nargs="*", default=[400, 448, 1024, 4096])
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--tag", default="")
    ap.add_argument("--family", choices=["base", "ws"], default="base")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        wb = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
        layer = build_layer("fp8", wb)
        w, s_row = layer.weight, layer.weight_scale  # fp8 [N, K], float32 [1, N]
        for M in args.ms:
            if time.time() - t0 > args.budget_s:
                print("budget reached", flush=True)
                break
            row = measure(K, N, M, w, s_row, wb, sms, args.family)
            best = min(row["sk"].items(), key=lambda kv: kv[1]) if row["sk"] else ("-", float("nan"))
            print(f"{K}x{N} M={M}: bf16 {row['bf16']*1e3:.1f} µs, cublas {row['cublas']*1e3:.1f} "
                  f"({row['bf16']/row['cublas']:.2f}x), best {best[0]} {best[1]*1e3:.1f} "
                  f"({row['bf16']/best[1]:.2f}x)  [{time.time()-t0:.0f} s]", flush=True)
            for k, v in sorted(row["sk"].items(), key=lambda kv: kv[1])[:6]:
                print(f"    {k}: {v*1e3:.1f} µs ({row['bf16']/v:.2f}x)", flush=True)
            rows.append(row)
    print("wrote", write_json(args.out, "streamk-probe", dict(rows=rows), args.tag))


if __name__ == "__main__":
    main()
