// A warp-specialized AWQ small-M kernel (probe, not shipped; benchmarks/awq_ws_probe.py compiles it with NVRTC behind
// fastvideo_quant/kernels/small_m_common.cuh and plugins/fvq_awq/kernels/awq_small_m.cu, whose dq_pair / x_pair /
// block_mma / ld_x8 it uses, so its arithmetic per 128-input block is the shipped kernel's).
//
// Why (benchmarks/awq_notes.md, twenty-second session): the shipped kernel's weight loads alone take 5.0 us a layer at
// 5120^2 in the chain, the kernel 8.8 — its warps load, wait and compute in one chain, so the de-quantization and MMAs
// do not overlap the loads. Here one loader warp a block keeps an FVQ_WS_S-stage shared-memory ring full with 1-D bulk
// copies (one per weight row and stage of FVQ_WS_P 128-input blocks, completion counted in bytes on the stage's full
// mbarrier) and FVQ_WS_P consumer warps each take one block of a stage, read their fragments from shared memory, load
// x, scales and zero points from global memory (L1/L2) as the shipped kernel does, and release the slot on its empty
// mbarrier. No consumer issues a weight load; the loader never computes.
//
// Block: 16 output features (rows n0..n0+15 of the kernel layout) over its part of K; gridDim.y = FVQ_CS parts of K,
// one thread-block cluster when FVQ_CS > 1 (sums added through rank 0's shared memory, cluster_sum). The consumers'
// sums are added in a fixed order (deterministic). Needs: M <= 16, K a multiple of 128, groups a multiple of 128,
// N a multiple of 16, x rows 8-byte aligned, compute capability 9.0.
//
// Macros: FVQ_BF16, FVQ_MT, FVQ_BPG1 (as awq_small_m.cu), FVQ_WS_P (consumer warps = blocks a stage), FVQ_WS_S
// (stages), FVQ_CS (K parts a column, a cluster). The loader must also define FVQ_ROWT=1, FVQ_FT=1, FVQ_KW=1, FVQ_U=1
// for the shipped kernel's source in front.

// Bytes a weight row takes in a stage: an odd multiple of 64, so rows g and g + 1 (one phase of a warp's 16-byte
// ld.shared: 8 lanes, 2 rows x 64 bytes) fall on the two halves of the 32 banks.
#define WS_ROWB (64 * (FVQ_WS_P | 1))

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(unsigned long long* bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_u32(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_u32(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_u32(bar)) : "memory");
}

// Waits for the phase of parity ``parity`` to complete; traps after 2^26 unsuccessful tries (each suspends the
// thread for up to a hardware time limit: seconds in all) so a protocol bug ends the launch with an error instead of
// hanging the device.
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, u32 parity) {
  u32 done = 0;
  for (u32 tries = 0; !done; ++tries) {
    if (tries == (1u << 26)) __trap();
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done) : "r"(smem_u32(bar)), "r"(parity) : "memory");
  }
}

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, unsigned long long* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)) : "memory");
}

__device__ __forceinline__ uint4 ld_shared16(const void* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(smem_u32(p)) : "memory");
  return v;
}

extern "C" __global__ void __launch_bounds__((1 + FVQ_WS_P) * 32)
#if FVQ_CS > 1
__cluster_dims__(1, FVQ_CS, 1)
#endif
awq_ws(const u16* __restrict__ x, const uint4* __restrict__ qw, const u16* __restrict__ scales,
       const u8* __restrict__ zeros, const u16* __restrict__ bias, u16* __restrict__ out, int M, int K, int N, int sx,
       int G, int bpg, int has_bias) {
  __shared__ __align__(128) unsigned char ring[FVQ_WS_S][16][WS_ROWB];
  __shared__ __align__(8) unsigned long long full[FVQ_WS_S], empty[FVQ_WS_S];
  __shared__ float red[FVQ_WS_P][FVQ_MT * 4][32];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const int nblk = K >> 7;
  const int s0 = (int)(((long long)blockIdx.y * nblk) / gridDim.y);
  const int s1 = (int)(((long long)(blockIdx.y + 1) * nblk) / gridDim.y);
  const int stages = (s1 - s0 + FVQ_WS_P - 1) / FVQ_WS_P;

  if (threadIdx.x == 0) {
    for (int s = 0; s < FVQ_WS_S; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], FVQ_WS_P);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  float acc[1][FVQ_MT][4];
  zero_acc(acc);

  if (warp == 0) {  // the loader: lane r < 16 copies weight row n0 + r of each stage
    const unsigned char* row = (const unsigned char*)(qw + (size_t)(n0 + (lane & 15)) * (K >> 5));
    for (int st = 0; st < stages; ++st) {
      const int slot = st % FVQ_WS_S, fill = st / FVQ_WS_S;
      if (fill > 0) mbar_wait(&empty[slot], (fill - 1) & 1);  // the consumers are done with its last fill
      const int b = s0 + st * FVQ_WS_P, nb = min(FVQ_WS_P, s1 - b);
      if (lane == 0) mbar_expect_tx(&full[slot], 16u * 64u * nb);
      __syncwarp();
      if (lane < 16) bulk_copy(&ring[slot][lane][0], row + 64 * (size_t)b, 64u * nb, &full[slot]);
    }
  } else {  // consumer c: block c of each stage
    const int c = warp - 1;
    const u16* xrow[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) xrow[mt] = x + (size_t)min(g + 8 * mt, M - 1) * sx + 4 * t;
    const u16* sa_p = scales + (size_t)(n0 + g) * G;
    const u16* sb_p = sa_p + (size_t)8 * G;
    const u8* za_p = zeros + (size_t)(n0 + g) * G;
    const u8* zb_p = za_p + (size_t)8 * G;
    for (int st = 0; st < stages; ++st) {
      const int slot = st % FVQ_WS_S, fill = st / FVQ_WS_S;
      const int b = s0 + st * FVQ_WS_P + c;
      uint2 xv[FVQ_MT][8];
      u16 sa[1], sb[1];
      u8 za[1], zb[1];
      if (b < s1) {  // x, scales and zero points before the wait: their loads overlap it
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int p = 0; p < 8; ++p) xv[mt][p] = ld_x8(xrow[mt] + b * 128 + 16 * p);
        sa[0] = sa_p[GRP(b)]; sb[0] = sb_p[GRP(b)];
        za[0] = za_p[GRP(b)]; zb[0] = zb_p[GRP(b)];
      }
      mbar_wait(&full[slot], fill & 1);
      if (b < s1) {
        uint4 wa[1], wb[1];
        wa[0] = ld_shared16(&ring[slot][g][64 * c + 16 * t]);
        wb[0] = ld_shared16(&ring[slot][g + 8][64 * c + 16 * t]);
        block_mma(acc, wa, wb, xv, za, zb, sa, sb);
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[slot]);
    }
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[c][mt * 4 + i][lane] = acc[0][mt][i];
  }
  __syncthreads();
  const bool mine = warp == 1;  // consumer 0 adds the consumers' sums in order and holds the block's totals
  if (mine) {
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float s = red[0][mt * 4 + i][lane];
#pragma unroll
        for (int c = 1; c < FVQ_WS_P; ++c) s += red[c][mt * 4 + i][lane];
        acc[0][mt][i] = s;
      }
  }
#if FVQ_CS > 1
  if (!cluster_sum(acc, mine, 0, lane)) return;
#endif
  if (!mine) return;
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = 8 * mt + 2 * t + (i & 1), n = n0 + g + ((i >> 1) << 3);
      if (m < M) {
        float v = acc[0][mt][i];
        if (has_bias) v += out_to_f32(bias[n]);
        out[(size_t)m * N + n] = f32_to_out(v);
      }
    }
}
