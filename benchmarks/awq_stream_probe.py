# ruff: noqa: B023  (lambdas are called before the loop variables change)
"""How fast can the AWQ small-M kernel's warps *read* its weights? Loads alone, in its access pattern and in a
contiguous one, against the kernel itself and bf16 ``F.linear`` — all timed in the chain (layers of distinct weights,
one pass >= 3x L2, back to back in one CUDA graph).

The kernel (``awq_small_m.cu``, the rule's tile: one block of ``kw`` warps per 16 output features, each warp a
``1/kw`` part of K) has lane (g, t) load 16 bytes of rows g and g + 8 per 128-input block: a warp instruction reads
8 rows x 64 bytes. The probe's ``stream`` kernel issues exactly those loads (``rows``), or the same number of bytes a
warp from one contiguous slice (``contig``: the 16 x 64-byte block tile of a column stored as 1 KB, a column's blocks
one after another), ``u`` blocks in flight a warp in the kernel's register double buffer, and only XORs the words
(no de-quantization, no MMA). If ``rows`` streams near bf16's bytes per second, the access pattern is not what
bounds the kernel; if ``contig`` is much faster than ``rows``, a re-tiled weight layout is the next kernel.

    python benchmarks/awq_stream_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from fastvideo_quant import bench
from fastvideo_quant.kernels.cuda_rtc import compile_kernel

SOURCE = r"""
typedef unsigned int u32;
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
// FVQ_PATTERN 0: the kernel's (rows g and g + 8, lane t's 16 bytes of each 64-byte block row); 1: the same bytes a warp
// from a contiguous slice (block tile (col, b) = 1 KB at (col * nblk + b) * 64 uint4).
__device__ __forceinline__ void ld_block(const uint4* w, int col, int b, int K32, int nblk, int lane, uint4& a,
                                         uint4& c) {
#if FVQ_PATTERN == 0
  const int g = lane >> 2, t = lane & 3;
  a = ld_stream(w + (size_t)(16 * col + g) * K32 + 4 * b + t);
  c = ld_stream(w + (size_t)(16 * col + g + 8) * K32 + 4 * b + t);
#else
  const uint4* tile = w + ((size_t)col * nblk + b) * 64;
  a = ld_stream(tile + lane);
  c = ld_stream(tile + 32 + lane);
#endif
}

extern "C" __global__ void __launch_bounds__(FVQ_KW * 32) stream(const uint4* __restrict__ w, u32* __restrict__ out,
                                                            int K32, int nblk) {
  const int lane = threadIdx.x & 31, kpart = threadIdx.x >> 5, col = blockIdx.x;
  const int b0 = (int)(((long long)kpart * nblk) / FVQ_KW), b1 = (int)(((long long)(kpart + 1) * nblk) / FVQ_KW);
  u32 acc = 0;
  uint4 a[FVQ_U], c[FVQ_U];
#pragma unroll
  for (int u = 0; u < FVQ_U; ++u)
    if (b0 + u < b1) ld_block(w, col, b0 + u, K32, nblk, lane, a[u], c[u]);
  for (int bb = b0; bb < b1; bb += FVQ_U) {
    uint4 na[FVQ_U], nc[FVQ_U];
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u)
      if (bb + FVQ_U + u < b1) ld_block(w, col, bb + FVQ_U + u, K32, nblk, lane, na[u], nc[u]);
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u)
      if (bb + u < b1) acc ^= a[u].x ^ a[u].y ^ a[u].z ^ a[u].w ^ c[u].x ^ c[u].y ^ c[u].z ^ c[u].w;
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u) { a[u] = na[u]; c[u] = nc[u]; }
  }
  if (acc == 0x9E3779B9u) out[blockIdx.x * blockDim.x + threadIdx.x] = acc;  // (keeps the loads; ~never stores)
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="+", default=["5120x5120", "13824x5120", "3072x12288"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    from fvq_awq.kernels import small_m_cuda
    from fvq_awq.layout import KernelLayout

    index = torch.cuda.current_device()
    l2 = bench.l2_bytes()
    points = []
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        nblk, K32 = K // 128, K // 32
        words = N * K // 8
        n = max(4, math.ceil(3 * l2 / (words * 4)))
        n_bf16 = max(4, math.ceil(3 * l2 / (2 * K * N)))
        gen = torch.Generator(device="cuda").manual_seed(0)
        ws = [torch.randint(-2**31, 2**31 - 1, (N, K // 8), device="cuda", dtype=torch.int32, generator=gen)
              for _ in range(n)]
        zs = [torch.randint(0, 16, (N, K // 128), device="cuda", dtype=torch.uint8, generator=gen) for _ in range(n)]
        ss = [(torch.rand(N, K // 128, device="cuda", generator=gen) * 0.02 + 0.001).half() for _ in range(n)]
        sink = torch.zeros(N // 16 * 256, device="cuda", dtype=torch.int32)
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        lay = KernelLayout(K, N, 128, 16)
        calls = {}
        for kw in (8, 4):
            calls[f"kernel kw{kw}"] = [lambda w=w, z=z, s=s, kw=kw: small_m_cuda.run(x, w, z, s, lay, None, 1, 1, 1, kw)
                                       for w, z, s in zip(ws, zs, ss, strict=True)]
            for pattern, name in ((0, "rows"), (1, "contig")):
                for u in (1, 2, 4, 8):
                    launch = compile_kernel(SOURCE, "stream", index, {"FVQ_PATTERN": pattern, "FVQ_U": u, "FVQ_KW": kw}).launcher(
                        "ppii", (32 * kw, 1, 1))
                    calls[f"{name} kw{kw} u{u}"] = [
                        lambda w=w, launch=launch: launch((N // 16, 1, 1), torch.cuda.current_stream().cuda_stream,
                                                          w.data_ptr(), sink.data_ptr(), K32, nblk) for w in ws]
        wb = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(n_bf16)]
        graphs = {name: (bench.capture_chain(fns), n) for name, fns in calls.items()}
        graphs["bf16"] = (bench.capture_chain([lambda w=w: F.linear(x, w) for w in wb]), n_bf16)
        times = bench.chain_rounds_us(graphs, args.rounds, args.replays)
        med = {k: statistics.median(v) for k, v in times.items()}
        tbs = {k: (2 * K * N if k == "bf16" else words * 4) / (v * 1e-6) / 1e12 for k, v in med.items()}
        points.append({"K": K, "N": N, "layers": n, "us": med, "TB_per_s": tbs, "rounds_us": times})
        print(f"{K}x{N} ({n} layers): " + ", ".join(f"{k} {v:.1f} µs ({tbs[k]:.2f} TB/s)" for k, v in med.items()),
              flush=True)
        del graphs, ws, zs, ss, wb
        torch.cuda.empty_cache()
    print("wrote", bench.write_json(args.out, "awq-stream-probe", {"l2_bytes": l2, "points": points}))


if __name__ == "__main__":
    main()
