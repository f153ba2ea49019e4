// AWQ int4 x 16-bit activations for M <= 16: weights streamed from global memory straight into tensor-core
// fragments (no shared-memory staging), the exact integers q - z on the tensor cores, the group scale applied to each
// 128-input block's float32 partial sum. Compiled at run time by NVRTC (fvq_awq/kernels/small_m_cuda.py), which
// defines:
//   FVQ_BF16  1: bfloat16 activations and output, 0: float16
//   FVQ_MT    8-column MMA tiles over M: 1 for M <= 8, 2 for M <= 16
//   FVQ_ROWT  warps per block; each warp owns 16 output features and every 128-input block of the block's K range
//   FVQ_U     128-input blocks a warp loads ahead (register double buffer of FVQ_U blocks)
//   FVQ_BPG1  1 when the group is 128 (bpg, the 128-input blocks per group, is 1)
//
// Kernel layout (fvq_awq/layout.py, bk8 = 16): qweight_k int32 [N, K/8], one output feature's words contiguous; in
// the 128-input block b, word 16b + j holds input 128b + 16i + j in nibble i (bits 4i..4i+3). scales_k fp16
// [N, G], zeros_k uint8 [N, G], G = K / group, group a multiple of 128 (one scale per block: block b, group b / bpg).
//
// Fragments (mma.m16n8k16, row.col): lane (g, t) = (lane / 4, lane % 4) holds A rows g and g + 8 at k-slots
// {2t, 2t+1} and {2t+8, 2t+9}, B column g at the same k-slots. Which input a k-slot stands for is free as long as A
// and B agree: lane t loads words 4t..4t+3 of both its rows (one 16-byte load each) and MMA s (s = 0..7) of a block
// takes word j = 4t + s/2, nibble pairs (p, p+4) and (p+1, p+5) with p = 2 (s % 2) — the pairs one shift and one
// lop3 make from a word (bits 4p and 4p+16). B holds x at the same inputs: 16p + j and 16(p+4) + j.
//
// Split K (gridDim.y > 1): float32 partials in ws, the block that arrives last at its tile's counter sums them in
// split order (deterministic), writes the output and resets the counter (fastvideo_quant/kernels/split_k.py has the
// same protocol for the Triton kernels).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#if FVQ_BF16
#define MAGIC 0x4300u  // bfloat16 128.0: 0x4300 | q is 128 + q exactly for q < 16
#define ONE2 0x3F803F80u
#define MMA_TYPES "bf16.bf16"
#define CVT_OUT "cvt.rn.bf16.f32"
#else
#define MAGIC 0x6400u  // float16 1024.0: 0x6400 | q is 1024 + q
#define ONE2 0x3C003C00u
#define MMA_TYPES "f16.f16"
#define CVT_OUT "cvt.rn.f16.f32"
#endif
#define MAGIC2 ((MAGIC << 16) | MAGIC)
#if FVQ_BPG1
#define GRP(b) (b)  // group 128: one group a block
#else
#define GRP(b) ((b) / bpg)
#endif

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 ld_x8(const u16* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ float ld_l2(const float* p) {  // past L1: other blocks wrote it
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ u16 f32_to_out(float f) {
  u16 h;
  asm(CVT_OUT " %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

__device__ __forceinline__ float out_to_f32(u16 h) {
#if FVQ_BF16
  return __uint_as_float(((u32)h) << 16);
#else
  return f16_to_f32(h);
#endif
}

// (q_p, q_{p+4}) of a word minus the zero point, as two exact 16-bit integers: lop3 puts each nibble in the low
// mantissa bits of MAGIC, one packed FMA subtracts MAGIC + z.
__device__ __forceinline__ u32 dq_pair(u32 word, int p, u32 negz2) {
  u32 v, r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(v) : "r"(word >> (4 * p)), "r"(0x000F000Fu), "r"(MAGIC2));
#if FVQ_BF16
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(ONE2), "r"(negz2));
#else
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(ONE2), "r"(negz2));
#endif
  return r;
}

__device__ __forceinline__ void mma16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_TYPES ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 word_of(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

__device__ __forceinline__ u32 x_pair(const uint2& lo, const uint2& hi, int w) {
  // x at input 4t + w of two 16-input slabs, packed (lo slab in the low half)
  u32 a = (w < 2) ? lo.x : lo.y, b = (w < 2) ? hi.x : hi.y;
  return __byte_perm(a, b, (w & 1) ? 0x7632 : 0x5410);
}

__device__ __forceinline__ u32 neg_zero2(u8 z) {
  u32 h = 0x8000u | (MAGIC + z);
  return (h << 16) | h;
}

// One 128-input block of one warp: 8 MMAs per 8-column tile on the exact integers q - z, then acc += part * scale.
__device__ __forceinline__ void block_mma(float (&acc)[FVQ_MT][4], const uint4& wa, const uint4& wb,
                                          const uint2 (&xv)[FVQ_MT][8], u8 za, u8 zb, u16 sa, u16 sb) {
  const u32 nza2 = neg_zero2(za), nzb2 = neg_zero2(zb);
  float part[FVQ_MT][4];
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt) part[mt][0] = part[mt][1] = part[mt][2] = part[mt][3] = 0.f;
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const int w = s >> 1, p = 2 * (s & 1);
    const u32 worda = word_of(wa, w), wordb = word_of(wb, w);
    const u32 a0 = dq_pair(worda, p, nza2), a1 = dq_pair(wordb, p, nzb2);
    const u32 a2 = dq_pair(worda, p + 1, nza2), a3 = dq_pair(wordb, p + 1, nzb2);
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) {
      const u32 b0r = x_pair(xv[mt][p], xv[mt][p + 4], w);
      const u32 b1r = x_pair(xv[mt][p + 1], xv[mt][p + 5], w);
      mma16816(part[mt], a0, a1, a2, a3, b0r, b1r);
    }
  }
  const float fa = f16_to_f32(sa), fb = f16_to_f32(sb);
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt) {
    acc[mt][0] += part[mt][0] * fa;
    acc[mt][1] += part[mt][1] * fa;
    acc[mt][2] += part[mt][2] * fb;
    acc[mt][3] += part[mt][3] * fb;
  }
}

// The float32 sums to the output: directly, or (split K) through the partials and the last block to arrive.
__device__ __forceinline__ void finish(float (&acc)[FVQ_MT][4], const u16* __restrict__ bias, u16* __restrict__ out,
                                       float* __restrict__ ws, int* __restrict__ locks, int M, int N, int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * FVQ_ROWT + warp) * 16;
  const bool active = n0 < N;
  const int splits = gridDim.y, split = blockIdx.y;
  const int rowA = n0 + g, rowB = rowA + 8;
  // acc[mt][i]: feature rowA (i < 2) or rowB, batch row m = 8 mt + 2t + (i & 1)
  if (splits > 1) {
    const int TILE = FVQ_ROWT * 16 * 16;  // float32 partials per tile and split: FVQ_ROWT*16 features x 16 rows
    float* part = ws + ((size_t)blockIdx.x * splits) * TILE;
    if (active) {
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = 8 * mt + 2 * t + (i & 1), r = (warp * 16) + g + ((i >> 1) << 3);
          if (m < M) part[(size_t)split * TILE + r * 16 + m] = acc[mt][i];
        }
    }
    __threadfence();  // every partial visible device-wide before the counter says so
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) last = (atomicAdd(locks + blockIdx.x, 1) == splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (active) {
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = 8 * mt + 2 * t + (i & 1), r = (warp * 16) + g + ((i >> 1) << 3);
          if (m < M) {
            float s = 0.f;
            for (int k = 0; k < splits; ++k) s += ld_l2(part + (size_t)k * TILE + r * 16 + m);  // split order
            acc[mt][i] = s;
          }
        }
    }
    if (threadIdx.x == 0) atomicExch(locks + blockIdx.x, 0);  // ready for the next launch on this stream
  }
  if (!active) return;
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = 8 * mt + 2 * t + (i & 1), n = (i < 2) ? rowA : rowB;
      if (m < M) {
        float v = acc[mt][i];
        if (has_bias) v += out_to_f32(bias[n]);
        out[(size_t)m * N + n] = f32_to_out(v);
      }
    }
}

extern "C" __global__ void __launch_bounds__(FVQ_ROWT * 32)
awq_small_m(const u16* __restrict__ x, const uint4* __restrict__ qw, const u16* __restrict__ scales,
            const u8* __restrict__ zeros, const u16* __restrict__ bias, u16* __restrict__ out,
            float* __restrict__ ws, int* __restrict__ locks, int M, int K, int N, int sx, int G, int bpg,
            int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * FVQ_ROWT + warp) * 16;
  const bool active = n0 < N;  // N % 16 == 0: a warp's 16 features are all in or all out
  const int splits = gridDim.y, split = blockIdx.y;
  const int nblk = K >> 7;
  const int b0 = (int)(((long long)split * nblk) / splits);
  const int b1 = (int)(((long long)(split + 1) * nblk) / splits);
  const int rowA = n0 + g, rowB = rowA + 8;

  float acc[FVQ_MT][4];
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;

  if (active && b0 < b1) {
    const size_t K32 = (size_t)(K >> 5);  // 16-byte vectors per feature
    const uint4* qa = qw + (size_t)rowA * K32 + t;
    const uint4* qb = qw + (size_t)rowB * K32 + t;
    const u16* sa_p = scales + (size_t)rowA * G;
    const u16* sb_p = scales + (size_t)rowB * G;
    const u8* za_p = zeros + (size_t)rowA * G;
    const u8* zb_p = zeros + (size_t)rowB * G;
    // x rows of this lane's B column (g + 8 mt): rows past M read row M - 1 instead — they fill output columns that
    // are never stored, so no predicate is needed on the loads
    const u16* xrow[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) xrow[mt] = x + (size_t)min(g + 8 * mt, M - 1) * sx + 4 * t;

    uint4 wa[FVQ_U], wb[FVQ_U];
    u16 sa[FVQ_U], sb[FVQ_U];
    u8 za[FVQ_U], zb[FVQ_U];
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u) {
      const int b = b0 + u;
      if (b < b1) {
        wa[u] = ld_stream(qa + 4 * b);
        wb[u] = ld_stream(qb + 4 * b);
        sa[u] = sa_p[GRP(b)]; sb[u] = sb_p[GRP(b)];
        za[u] = za_p[GRP(b)]; zb[u] = zb_p[GRP(b)];
      }
    }
    for (int bb = b0; bb < b1; bb += FVQ_U) {
      uint4 na[FVQ_U], nb[FVQ_U];
      u16 nsa[FVQ_U], nsb[FVQ_U];
      u8 nza[FVQ_U], nzb[FVQ_U];
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u) {  // the next FVQ_U blocks' words, scales and zeros, in flight while these compute
        const int b = bb + FVQ_U + u;
        if (b < b1) {
          na[u] = ld_stream(qa + 4 * b);
          nb[u] = ld_stream(qb + 4 * b);
          nsa[u] = sa_p[GRP(b)]; nsb[u] = sb_p[GRP(b)];
          nza[u] = za_p[GRP(b)]; nzb[u] = zb_p[GRP(b)];
        }
      }
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u) {
        const int b = bb + u;
        if (b < b1) {
          uint2 xv[FVQ_MT][8];
#pragma unroll
          for (int mt = 0; mt < FVQ_MT; ++mt) {
            const u16* xr = xrow[mt] + b * 128;
#pragma unroll
            for (int p = 0; p < 8; ++p) xv[mt][p] = ld_x8(xr + 16 * p);
          }
          block_mma(acc, wa[u], wb[u], xv, za[u], zb[u], sa[u], sb[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u) {
        wa[u] = na[u]; wb[u] = nb[u];
        sa[u] = nsa[u]; sb[u] = nsb[u];
        za[u] = nza[u]; zb[u] = nzb[u];
      }
    }
  }

  finish(acc, bias, out, ws, locks, M, N, has_bias);
}
