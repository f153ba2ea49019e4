# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""Round 4 AWQ int4 GEMV designs at M=1 (and M<=4), timed against bf16 ``F.linear`` and the current GEMV.

    python benchmarks/awq_gemv_r4.py --out $OUT/awq_gemv_r4 --budget-s 280    # H100: one JSON + a printed table
    python benchmarks/awq_gemv_r4.py --interpret                               # CPU: correctness only, tiny shape

Every configuration is first checked against float32 math on the de-quantized weight with fresh random
inputs (rel err < 1e-2 or it is dropped and logged), then timed with ``fastvideo_quant.bench.median_ms``
(do_bench, L2 flushed); the best configuration of each design is re-timed eagerly and as a CUDA-graph
replay (``graph_median_ms``), next to bf16 ``F.linear`` and ``fvq_awq.kernels.gemv.awq_gemv`` in the same
run. Reported per (shape, M): µs, ratio vs bf16 (eager and graph), TB/s of weight bytes (int4 + fp16 scales
+ uint8 zeros), rel err. Group 128; every layout below is a one-time load-time transform of the kernel layout.

Designs (each a Triton kernel here; ``MODE`` picks how nibbles become numbers, shared by all designs):
  MODE 0  the current trick: ``((w >> 4i) & 0xF) | 0x4B000000`` read as float32 is ``2**23 + q``; subtract
          ``2**23 + z``; FFMA into fp32 (shift, lop3, fsub, ffma per weight).
  MODE 1  in-place masks: nibbles 0-4 are masked where they lie, ``(w & (0xF << 4p)) | 0x4B000000`` is
          ``2**23 + q * 16**p`` exactly; subtracting ``2**23 + z * 16**p`` gives ``(q - z) * 16**p`` and the
          activation is pre-scaled by ``16**-p`` (exact); nibbles 5-7 the same on ``w >> 20``. One shift per
          word instead of seven: lop3, fsub, ffma per weight.
  MODE 2  packed bf16 (inline PTX): ``lop3((w >> s), 0x000F000F, 0x43004300)`` is the bf16 pair
          ``(128 + q_a, 128 + q_b)``; ``fma.rn.bf16x2(p, 1, -(128 + z))`` gives ``q - z`` for both (exact, 4-bit
          codes), then each half becomes fp32 by one shift/and and is FFMA'd into fp32. Under ``--interpret``
          the PTX cannot run: the same pair structure is computed with integer ops instead (pure Triton).
  D1 ``n-major``   the current kernel layout ``[N, K/8]``, ``[BLOCK_N, R, BK8]`` tiles (round 2's structure).
  D2 ``k-packed``  gemlite-style: words ``[K/8, N]`` (words run along N, 8 nibbles along K per word, the same
          pack-block nibble order as the kernel layout), tiles ``[R, BK8, BLOCK_N]``: one activation value
          serves the 4 words of a 16-byte load; scale and zero packed in one int32 ``[K/GROUP, N]`` (fp16 bits |
          z << 16); fp32 ``acc`` of the tile's shape, reduced once at the end; K split
          across programs. Reduction ``RED``: 0 no split (direct store); 1 ``tl.atomic_add`` into a zero-filled
          fp32 buffer + cast (3 launches, the zero-fill and cast timed); 2 partials ``[SPLIT, M, N]`` + a reduce
          kernel (2 launches); 3 one launch: ``atomic_add`` into a persistent fp32 buffer, a per-column-block
          arrival counter, and the last program to arrive casts the sums out and re-zeros buffer and counter.
  D3 ``banded``    rows interleaved per 16-byte chunk within a band of ``BN`` rows (``[N/BN, K/32, BN, 4]``
          words): one program's words are one contiguous stream (the notes' DRAM-locality question), math as D1.
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
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from fvq_awq.format import pack_awq  # noqa: E402
from fvq_awq.kernels.gemv import awq_gemv  # noqa: E402
from fvq_awq.layout import dequantize_kernel, repack_to_kernel  # noqa: E402

from fastvideo_quant.bench import environment, graph_median_ms, median_ms  # noqa: E402

SHAPES = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]
GROUP = 128
MAGIC = tl.constexpr(0x4B000000)  # float32 bits of 2**23


# ----------------------------------------------------------------------------------------------------------------
# Nibbles → fp32 dot with eight activation slabs: t = sum_i (q_i - z) * x_i (shape of w broadcast with z and x_i)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _inplace(w, z, p: tl.constexpr):
    """``(q - z) * 16**p`` for the nibble at bits ``4p .. 4p+3`` of ``w`` (p <= 4), exact, as float32."""
    c = ((w & (0xF << (4 * p))) | MAGIC).to(tl.float32, bitcast=True)
    zb = ((z << (4 * p)) | MAGIC).to(tl.float32, bitcast=True)
    return c - zb


@triton.jit
def _pair(w, z, nzz, s: tl.constexpr, INTERP: tl.constexpr):
    """Nibbles ``s/4`` (low half) and ``s/4 + 4`` (high half) of ``w`` as float32 ``(q - z)``, via bf16 pairs."""
    if INTERP:  # the PTX cannot run in the interpreter: the same pair, with integer ops
        p = (w >> s) & 0x000F000F
        return ((p & 0xF) - z).to(tl.float32), ((p >> 16) - z).to(tl.float32)
    else:
        d = tl.inline_asm_elementwise(
            "{ .reg .b32 t, m, c, one; mov.b32 m, 0x000F000F; mov.b32 c, 0x43004300; mov.b32 one, 0x3F803F80;"
            " lop3.b32 t, $1, m, c, 0xEA; fma.rn.bf16x2 $0, t, one, $2; }",
            "=r,r,r", [w >> s, nzz], dtype=tl.int32, is_pure=True, pack=1)
        return (d << 16).to(tl.float32, bitcast=True), (d & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _dot8(w, z, x0, x1, x2, x3, x4, x5, x6, x7, MODE: tl.constexpr, INTERP: tl.constexpr):
    """``sum_i (q_i - z) * x_i`` in fp32; ``w`` int32 words, ``z`` int32 zero codes, ``x_i`` fp32 slabs."""
    if MODE == 0:
        zb = (z | MAGIC).to(tl.float32, bitcast=True)
        t = (((w & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x0
        t += ((((w >> 4) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x1
        t += ((((w >> 8) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x2
        t += ((((w >> 12) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x3
        t += ((((w >> 16) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x4
        t += ((((w >> 20) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x5
        t += ((((w >> 24) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x6
        t += ((((w >> 28) & 0xF) | MAGIC).to(tl.float32, bitcast=True) - zb) * x7
    elif MODE == 1:
        w2 = w >> 20  # nibbles 5, 6, 7 at bits 0-11 (the sign fill above is masked off)
        t = _inplace(w, z, 0) * x0
        t += _inplace(w, z, 1) * (x1 * 0.0625)
        t += _inplace(w, z, 2) * (x2 * 0.00390625)
        t += _inplace(w, z, 3) * (x3 * 0.000244140625)
        t += _inplace(w, z, 4) * (x4 * 0.0000152587890625)
        t += _inplace(w2, z, 0) * x5
        t += _inplace(w2, z, 1) * (x6 * 0.0625)
        t += _inplace(w2, z, 2) * (x7 * 0.00390625)
    else:
        hz = z | 0xC300  # bf16 bits of -(128 + z)
        nzz = (hz << 16) | hz
        a0, a4 = _pair(w, z, nzz, 0, INTERP)
        a1, a5 = _pair(w, z, nzz, 4, INTERP)
        a2, a6 = _pair(w, z, nzz, 8, INTERP)
        a3, a7 = _pair(w, z, nzz, 12, INTERP)
        t = a0 * x0
        t += a1 * x1
        t += a2 * x2
        t += a3 * x3
        t += a4 * x4
        t += a5 * x5
        t += a6 * x6
        t += a7 * x7
    return t


@triton.jit
def _x8(ptrs, BK8: tl.constexpr):
    """The eight nibble slabs' activations (slab ``i`` at ``ptrs + i * BK8``) as float32."""
    return (tl.load(ptrs).to(tl.float32), tl.load(ptrs + BK8).to(tl.float32),
            tl.load(ptrs + 2 * BK8).to(tl.float32), tl.load(ptrs + 3 * BK8).to(tl.float32),
            tl.load(ptrs + 4 * BK8).to(tl.float32), tl.load(ptrs + 5 * BK8).to(tl.float32),
            tl.load(ptrs + 6 * BK8).to(tl.float32), tl.load(ptrs + 7 * BK8).to(tl.float32))


# ----------------------------------------------------------------------------------------------------------------
# D1: current kernel layout [N, K/8], tiles [BLOCK_N, R, BK8] (N % BLOCK_N == 0, pack block inside one group)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _d1_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, K, K8, G, stride_xm, stride_om,
               GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
               MODE: tl.constexpr, INTERP: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]
    r3 = tl.arange(0, R)[None, :, None]
    j3 = tl.arange(0, BK8)[None, None, :]
    qw_ptrs = qw_ptr + n3 * K8 + r3 * BK8 + j3
    x_ptrs = x_ptr + m * stride_xm + r3 * (8 * BK8) + j3
    acc = tl.zeros((BLOCK_N, R, BK8), dtype=tl.float32)
    for k0 in range(0, K, 8 * R * BK8):
        w = tl.load(qw_ptrs)
        idx = n3 * G + (k0 + r3 * (8 * BK8)) // GROUP
        s = tl.load(s_ptr + idx).to(tl.float32)
        z = tl.load(z_ptr + idx).to(tl.int32)
        x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, BK8)
        acc += _dot8(w, z, x0, x1, x2, x3, x4, x5, x6, x7, MODE, INTERP) * s
        qw_ptrs += R * BK8
        x_ptrs += 8 * R * BK8
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------------------------------------------
# D2: K-packed words [K/8, N], scales/zeros [K/GROUP, N]; tiles [R, BK8, BLOCK_N]; split-K over grid axis 1
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _d2_kernel(x_ptr, w_ptr, s_ptr, out_ptr, buf_ptr, cnt_ptr, N, KS, stride_xm, stride_om,
               GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
               MODE: tl.constexpr, RED: tl.constexpr, INTERP: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[None, None, :]
    r3 = tl.arange(0, R)[:, None, None]
    j3 = tl.arange(0, BK8)[None, :, None]
    k_start = pid_k * KS
    w_ptrs = w_ptr + (k_start // 8 + r3 * BK8 + j3) * N + n3
    x_ptrs = x_ptr + m * stride_xm + k_start + r3 * (8 * BK8) + j3  # [R, BK8, 1]
    acc = tl.zeros((R, BK8, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KS, 8 * R * BK8):
        w = tl.load(w_ptrs)
        # Scale and zero as one int32 (fp16 bits | z << 16), loaded in the w tile's shape [R, BK8, BLOCK_N] (rows of a
        # block repeat their group's word; L1 hits) so the load gets w's register layout. Separate fp16/uint8 loads
        # got layouts of their own and a shared-memory conversion of every nibble's products per step (offline SASS
        # for sm_90: STS.128/LDSM and 64 BAR.SYNC per loop).
        sz = tl.load(s_ptr + ((k_start + k0 + r3 * (8 * BK8)) // GROUP + 0 * j3) * N + n3)
        s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        z = sz >> 16
        x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, BK8)
        acc += _dot8(w, z, x0, x1, x2, x3, x4, x5, x6, x7, MODE, INTERP) * s
        w_ptrs += R * BK8 * N
        x_ptrs += 8 * R * BK8
    part = tl.sum(tl.sum(acc, axis=0), axis=0)  # [BLOCK_N]
    if RED == 0:
        tl.store(out_ptr + m * stride_om + offs_n, part.to(out_ptr.dtype.element_ty))
    elif RED == 1:
        tl.atomic_add(buf_ptr + m * N + offs_n, part, sem="relaxed")
    elif RED == 2:
        tl.store(buf_ptr + (pid_k * tl.num_programs(2) + m) * N + offs_n, part)
    else:
        tl.atomic_add(buf_ptr + m * N + offs_n, part, sem="relaxed")
        if not INTERP:  # every thread's atomics performed before the arrival (CUDA's __threadfence pattern)
            tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.b32 $0, $1;", "=r,r", [offs_n], dtype=tl.int32,
                                      is_pure=False, pack=1)
        tl.debug_barrier()
        cnt_idx = m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(cnt_ptr + cnt_idx, 1, sem="acq_rel")
        if arrived == tl.num_programs(1) - 1:  # the last program of this column block: cast out, re-zero
            tot = tl.load(buf_ptr + m * N + offs_n, volatile=True)
            tl.store(out_ptr + m * stride_om + offs_n, tot.to(out_ptr.dtype.element_ty))
            tl.store(buf_ptr + m * N + offs_n, tl.zeros((BLOCK_N,), dtype=tl.float32))
            tl.store(cnt_ptr + cnt_idx, 0)


@triton.jit
def _reduce_kernel(buf_ptr, out_ptr, SPLIT, MN, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, SPLIT):
        acc += tl.load(buf_ptr + i * MN + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# D3: band layout [N/BN, K/32, BN, 4] (16-byte chunks of BN rows interleaved), tiles [4R chunks, BN, 4]
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _d3_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, K, K8, G, stride_xm, stride_om,
               GROUP: tl.constexpr, BK8: tl.constexpr, R: tl.constexpr, BN: tl.constexpr,
               MODE: tl.constexpr, INTERP: tl.constexpr):
    CPB: tl.constexpr = BK8 // 4  # 16-byte chunks per pack block
    CH: tl.constexpr = R * CPB
    band = tl.program_id(0)
    m = tl.program_id(1)
    c3 = tl.arange(0, CH)[:, None, None]
    n3 = tl.arange(0, BN)[None, :, None]
    v3 = tl.arange(0, 4)[None, None, :]
    w_ptrs = w_ptr + band * (K8 * BN) + c3 * (BN * 4) + n3 * 4 + v3  # contiguous [CH, BN, 4] per step
    x_ptrs = x_ptr + m * stride_xm + (c3 // CPB) * (8 * BK8) + (c3 % CPB) * 4 + v3  # [CH, 1, 4]
    rows = band * BN + n3
    acc = tl.zeros((CH, BN, 4), dtype=tl.float32)
    for k0 in range(0, K, 8 * R * BK8):
        w = tl.load(w_ptrs)
        idx = rows * G + (k0 + (c3 // CPB) * (8 * BK8)) // GROUP  # [CH, BN, 1]
        s = tl.load(s_ptr + idx).to(tl.float32)
        z = tl.load(z_ptr + idx).to(tl.int32)
        x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptrs, BK8)
        acc += _dot8(w, z, x0, x1, x2, x3, x4, x5, x6, x7, MODE, INTERP) * s
        w_ptrs += CH * BN * 4
        x_ptrs += 8 * R * BK8
    out = tl.sum(tl.sum(acc, axis=2), axis=0)
    offs = band * BN + tl.arange(0, BN)
    tl.store(out_ptr + m * stride_om + offs, out.to(out_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------
class Layer:
    """One random AWQ layer in every layout (all made once, from the kernel layout)."""

    def __init__(self, K: int, N: int, device: str):
        q = torch.randint(0, 16, (K, N))
        z = torch.randint(0, 16, (K // GROUP, N))
        s = (torch.rand(K // GROUP, N) * 0.02 + 0.005).half()
        wk, zk, sk, lay = repack_to_kernel(pack_awq(q), pack_awq(z), s, GROUP)
        assert lay.bk8 * 8 <= GROUP and GROUP % (8 * lay.bk8) == 0, "designs need a pack block inside a group"
        self.K, self.N, self.lay = K, N, lay
        self.wk, self.zk, self.sk = wk.to(device), zk.to(device), sk.to(device)
        self.W = dequantize_kernel(self.wk, self.zk, self.sk, lay)  # float32 [N, K], the reference
        self.wkp = self.wk.t().contiguous()  # D2: [K/8, N]
        sbits = self.sk.t().contiguous().view(torch.int16).to(torch.int32) & 0xFFFF  # [K/GROUP, N]
        self.szp = (sbits | (self.zk.t().to(torch.int32) << 16)).contiguous()  # D2: fp16 scale bits | zero << 16
        self._bands: dict[int, torch.Tensor] = {}
        self._bufs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def band(self, bn: int) -> torch.Tensor:
        """D3 words: ``[N/bn, K/32, bn, 4]`` (rows of a band interleaved per 16-byte chunk)."""
        if bn not in self._bands:
            K8 = self.K // 8
            self._bands[bn] = self.wk.reshape(self.N // bn, bn, K8 // 4, 4).transpose(1, 2).contiguous()
        return self._bands[bn]

    def red3_buffers(self, M: int, nb: int):
        """Persistent zeroed fp32 sums and arrival counters for the one-launch reduction (kept zero by the kernel)."""
        key = (M, nb)
        if key not in self._bufs:
            dev = self.wk.device
            self._bufs[key] = (torch.zeros(M, self.N, device=dev), torch.zeros(M * nb, dtype=torch.int32, device=dev))
        return self._bufs[key]

    @property
    def weight_bytes(self) -> int:
        return self.K * self.N // 2 + (self.K // GROUP) * self.N * 3  # int4 + fp16 scales + uint8 zeros


def d1(L: Layer, bn: int, r: int, w: int, mode: int, s: int = 3):
    bk8 = L.lay.bk8
    assert L.N % bn == 0 and (L.K // (8 * bk8)) % r == 0

    def f(x):
        M = x.shape[0]
        out = torch.empty(M, L.N, dtype=x.dtype, device=x.device)
        _d1_kernel[(L.N // bn, M)](x, L.wk, L.sk, L.zk, out, L.K, L.K // 8, L.K // GROUP, x.stride(0), out.stride(0),
                                   GROUP=GROUP, BK8=bk8, R=r, BLOCK_N=bn, MODE=mode, INTERP=INTERPRET,
                                   num_warps=w, num_stages=s)
        return out
    return f


def pick_split(L: Layer, bn: int, r: int, programs: int) -> int:
    """Split count: a divisor of the step count whose grid (N/bn * split) comes closest to ``programs``."""
    steps = L.K // (8 * r * L.lay.bk8)
    divs = [d for d in range(1, steps + 1) if steps % d == 0]
    return min(divs, key=lambda d: (abs(L.N // bn * d - programs), d))


def d2(L: Layer, bn: int, r: int, w: int, mode: int, red: int, split: int, s: int = 3):
    bk8 = L.lay.bk8
    assert L.N % bn == 0 and (L.K // (8 * r * bk8)) % split == 0
    red = 0 if split == 1 else red
    nb, KS = L.N // bn, L.K // split
    meta = {"GROUP": GROUP, "BK8": bk8, "R": r, "BLOCK_N": bn, "MODE": mode, "RED": red, "INTERP": INTERPRET,
            "num_warps": w, "num_stages": s}

    def f(x):
        M = x.shape[0]
        out = torch.empty(M, L.N, dtype=x.dtype, device=x.device)
        if red == 0:
            buf = cnt = out
        elif red == 1:
            buf, cnt = torch.zeros(M, L.N, device=x.device), out
        elif red == 2:
            buf, cnt = torch.empty(split, M, L.N, device=x.device), out
        else:
            buf, cnt = L.red3_buffers(M, nb)
        _d2_kernel[(nb, split, M)](x, L.wkp, L.szp, out, buf, cnt, L.N, KS, x.stride(0), out.stride(0), **meta)
        if red == 1:
            out.copy_(buf)
        elif red == 2:
            _reduce_kernel[(triton.cdiv(M * L.N, 1024),)](buf, out, split, M * L.N, BLOCK=1024, num_warps=4)
        return out
    return f


def d3(L: Layer, bn: int, r: int, w: int, mode: int, s: int = 3):
    bk8 = L.lay.bk8
    assert L.N % bn == 0 and bk8 % 4 == 0 and (L.K // (8 * bk8)) % r == 0
    wb = L.band(bn)

    def f(x):
        M = x.shape[0]
        out = torch.empty(M, L.N, dtype=x.dtype, device=x.device)
        _d3_kernel[(L.N // bn, M)](x, wb, L.sk, L.zk, out, L.K, L.K // 8, L.K // GROUP, x.stride(0), out.stride(0),
                                   GROUP=GROUP, BK8=bk8, R=r, BN=bn, MODE=mode, INTERP=INTERPRET,
                                   num_warps=w, num_stages=s)
        return out
    return f


def configs(L: Layer, quick: bool) -> list[tuple[str, object]]:
    """``(name, f)`` for every configuration of the three designs (``quick``: one per design and mode)."""
    out = []
    modes = (0, 1, 2)
    if quick:
        bn2 = min(32, L.N)
        for mode in modes:
            out.append((f"d1 m{mode} bn8 r1 w2", d1(L, 8, 1, 2, mode)))
            sp = pick_split(L, bn2, 1, 10**6)  # the most programs: exercises the reductions
            for red in (1, 2, 3):
                out.append((f"d2 m{mode} bn{bn2} r1 w2 red{red} sk{sp}", d2(L, bn2, 1, 2, mode, red, sp)))
            out.append((f"d2 m{mode} bn{bn2} r1 w2 red0 sk1", d2(L, bn2, 1, 2, mode, 0, 1)))
            out.append((f"d3 m{mode} bn8 r1 w2", d3(L, 8, 1, 2, mode)))
        return out
    nblk = L.K // (8 * L.lay.bk8)
    for mode in modes:
        for bn, r, w in ((8, 4, 4), (8, 8, 4), (16, 4, 8), (4, 8, 4)):
            if nblk % r == 0:
                out.append((f"d1 m{mode} bn{bn} r{r} w{w}", d1(L, bn, r, w, mode)))
        for bn, r, w in ((128, 1, 4), (256, 1, 8), (64, 2, 4), (128, 2, 8)):
            if L.N % bn:
                continue
            for target in (264, 528):
                sp = pick_split(L, bn, r, target)
                out.append((f"d2 m{mode} bn{bn} r{r} w{w} red3 sk{sp}", d2(L, bn, r, w, mode, 3, sp)))
        for bn, r, w in ((8, 2, 4), (16, 1, 4), (16, 2, 8), (32, 1, 8)):
            if nblk % r == 0:
                out.append((f"d3 m{mode} bn{bn} r{r} w{w}", d3(L, bn, r, w, mode)))
    return out


def red_variants(L: Layer, name: str) -> list[tuple[str, object]]:
    """The best D2 tile with the other reductions (atomics + zero-fill + cast, two-stage, no split)."""
    words = name.split()
    mode, bn, r, w, sp = (int(words[i][len(p):]) for i, p in ((1, "m"), (2, "bn"), (3, "r"), (4, "w"), (6, "sk")))
    out = [(f"d2 m{mode} bn{bn} r{r} w{w} red{red} sk{sp}", d2(L, bn, r, w, mode, red, sp)) for red in (1, 2)]
    return out + [(f"d2 m{mode} bn{bn} r{r} w{w} red0 sk1", d2(L, bn, r, w, mode, 0, 1))]


def check(f, L: Layer, M: int, dtype: torch.dtype, reps: int = 2) -> float:
    """Rel err vs float32 math on fresh random inputs, twice (the second call also checks RED 3 left zeros)."""
    from awq_sweep import check as rel_err  # the round-3 sweep's check (run from benchmarks/, like this script)

    errs = []
    for _ in range(reps):
        x = torch.randn(M, L.K, device=L.wk.device, dtype=dtype)
        errs.append(rel_err(f(x), x, L.W))
    return max(errs)


def interpret_main() -> None:
    torch.manual_seed(0)
    n_ok = 0
    for K, N in ((512, 64), (256, 32)):
        L = Layer(K, N, "cpu")
        for M in (1, 3):
            cur = lambda x: awq_gemv(x, L.wk, L.zk, L.sk, L.lay)  # noqa: E731
            print(f"K={K} N={N} M={M}: current gemv err {check(cur, L, M, torch.float32, 1):.2e}", flush=True)
            for name, f in configs(L, quick=True):
                err = check(f, L, M, torch.float32)
                print(f"  {name}: err {err:.2e}", flush=True)
                n_ok += 1
    print(f"interpret: {n_ok} checks passed (MODE 2 ran its pure-Triton fallback, not the PTX)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="directory for awq-gemv-r4_<gpu>_<date>.json")
    ap.add_argument("--budget-s", type=float, default=280.0, help="stop sweeping new points after this many seconds")
    ap.add_argument("--ms", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in SHAPES])
    ap.add_argument("--interpret", action="store_true", help="CPU interpreter, tiny shapes, correctness only")
    args = ap.parse_args()
    if args.interpret:
        interpret_main()
        return
    t_end = time.time() + args.budget_s
    torch.manual_seed(0)
    env = environment()
    rows, summary = [], []
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    for K, N in shapes:
        L = Layer(K, N, "cuda")
        wbf = L.W.to(torch.bfloat16)
        for M in args.ms:
            if time.time() > t_end:
                print(f"budget spent: skipping K={K} N={N} M={M}", flush=True)
                continue
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            base = {"bf16": lambda x: F.linear(x, wbf),
                    "current": lambda x: awq_gemv(x, L.wk, L.zk, L.sk, L.lay)}
            cands = configs(L, quick=False)
            best: dict[str, tuple[float, str, object, float]] = {}
            for name, f in cands + [("current", base["current"])]:
                try:
                    err = check(f, L, M, torch.bfloat16)
                    t = median_ms(lambda: f(x), 5, 20)
                except Exception as exc:  # noqa: BLE001 - a failing config is logged and skipped
                    rows.append({"K": K, "N": N, "M": M, "cfg": name, "error": str(exc)[:300]})
                    print(f"  K={K} N={N} M={M} {name}: ERROR {str(exc)[:200]}", flush=True)
                    continue
                rows.append({"K": K, "N": N, "M": M, "cfg": name, "sweep_us": t * 1e3, "err": err})
                design = name.split()[0] + (" " + name.split()[1] if name.startswith("d") else "")
                if design not in best or t < best[design][0]:
                    best[design] = (t, name, f, err)
            d2_best = min((v for k, v in best.items() if k.startswith("d2")), default=None, key=lambda v: v[0])
            if d2_best is not None:  # the other reductions for the best D2 tile
                for name, f in red_variants(L, d2_best[1]):
                    try:
                        err = check(f, L, M, torch.bfloat16)
                        t = median_ms(lambda: f(x), 5, 20)
                    except Exception as exc:  # noqa: BLE001
                        rows.append({"K": K, "N": N, "M": M, "cfg": name, "error": str(exc)[:300]})
                        continue
                    rows.append({"K": K, "N": N, "M": M, "cfg": name, "sweep_us": t * 1e3, "err": err})
                    red = name.split()[5]
                    best[f"d2 {red}"] = (t, name, f, err)
            # Final timings: bf16, current and each design's best, eager (do_bench) and CUDA-graph replay.
            t_bf, g_bf = median_ms(lambda: base["bf16"](x)), graph_median_ms(lambda: base["bf16"](x))
            print(f"K={K} N={N} M={M}: bf16 {t_bf*1e3:.1f} us (graph {g_bf*1e3:.1f})", flush=True)
            for design, (_, name, f, err) in sorted(best.items(), key=lambda kv: kv[1][0]):
                te = median_ms(lambda: f(x))
                try:
                    tg = graph_median_ms(lambda: f(x))
                except Exception:  # noqa: BLE001 - not capturable: no graph time
                    tg = float("nan")
                tbps = L.weight_bytes / (te * 1e-3) / 1e12
                rec = {"K": K, "N": N, "M": M, "design": design, "cfg": name, "us": te * 1e3, "graph_us": tg * 1e3,
                       "bf16_us": t_bf * 1e3, "bf16_graph_us": g_bf * 1e3, "speedup": t_bf / te,
                       "speedup_graph": g_bf / tg, "weight_TBps": tbps, "err": err}
                summary.append(rec)
                print(f"  {design:10s} {name:38s} {te*1e3:6.1f} us ({t_bf/te:.2f}x) graph {tg*1e3:6.1f} us "
                      f"({g_bf/tg:.2f}x) {tbps:.2f} TB/s err {err:.1e}", flush=True)
            if args.out:
                write(args.out, env, rows, summary)
    n_err = sum("error" in r for r in rows)
    print(f"done: {len(rows)} configs checked, {n_err} errors", flush=True)
    if args.out:
        print("wrote", write(args.out, env, rows, summary))


def write(out_dir: str, env: dict, rows: list, summary: list) -> str:
    os.makedirs(out_dir, exist_ok=True)
    gpu = (env.get("gpu") or "cpu").lower().replace(" ", "-")
    path = os.path.join(out_dir, f"awq-gemv-r4_{gpu}_{env['date']}.json")
    with open(path, "w") as fh:
        json.dump({**env, "triton": triton.__version__, "summary": summary, "sweep": rows}, fh, indent=1)
    return path


if __name__ == "__main__":
    main()
