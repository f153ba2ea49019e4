// AWQ int4 x 16-bit activations for M <= 16: weights streamed from global memory straight into tensor-core
// fragments (no shared-memory staging), the exact integers q - z on the tensor cores, the group scale applied to each
// group's float32 partial sum (one a 128-input block; 2 or 4 with groups of 64 / 32, FVQ_GPB). Compiled at run time by NVRTC (fvq_awq/kernels/small_m_cuda.py), which
// defines:
//   FVQ_BF16  1: bfloat16 activations and output, 0: float16
//   FVQ_MT    8-column MMA tiles over M: 1 for M <= 8, 2 for M <= 16
//   FVQ_FT    16-feature tiles per warp (1, 2 or 4): the x fragments of a block are loaded once for all of them
//   FVQ_ROWT  warp columns per block (each FVQ_FT tiles wide): FVQ_ROWT * FVQ_FT * 16 features a block
//   FVQ_KW    warps per warp column (1, 2, 4 or 8): each takes a contiguous part of the block's K range; their sums
//             are added through shared memory in a fixed tree (deterministic) before the split-K step. The block has
//             FVQ_ROWT * FVQ_KW warps: warp w owns column w % FVQ_ROWT and K part w / FVQ_ROWT.
//   FVQ_U     128-input blocks a warp loads ahead (register double buffer of FVQ_U blocks)
//   FVQ_BPG1  1 when the group is 128 (bpg, the 128-input blocks per group, is 1)
//   FVQ_GPB   groups a 128-input block holds: 1 (groups of 128 or more), 2 (groups of 64) or 4 (groups of 32); with 2
//             or 4 the MMAs take their k-slots from one group each (block_mma_groups below)
//   FVQ_CS    1: split K (gridDim.y > 1) reduces through global memory (below); 2..8: the gridDim.y = FVQ_CS K parts
//             of a column are one thread-block cluster (sm_90) and the parts' sums go to rank 0's shared memory
//             (distributed shared memory: no global partials, counters or fences)
//   FVQ_OCC   blocks a multiprocessor should hold: registers are capped for it (__launch_bounds__' second argument)
//   FVQ_PDL   1: launched with programmatic dependent launch (sm_90; small_m_common.cuh's pdl_wait)
//
// Kernel layout (fvq_awq/layout.py, bk8 = 16): qweight_k int32 [N, K/8], one output feature's words contiguous; in
// the 128-input block b, word 16b + j holds input 128b + 16i + j in nibble i (bits 4i..4i+3). scales_k fp16
// [N, G], zeros_k uint8 [N, G], G = K / group, group 32, 64 or a multiple of 128 (block b: group b / bpg, or groups
// FVQ_GPB b .. FVQ_GPB b + FVQ_GPB - 1 — slab i in group FVQ_GPB b + i FVQ_GPB / 8).
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

// u32 / u16 / u8, MMA_TYPES, CVT_OUT, FEAT, the FVQ_KW / FVQ_FT / FVQ_CS defaults, ld_stream, f16_to_f32,
// f32_to_out, out_to_f32, mma16816, word_of, zero_acc, kw_tree_sum and cluster_sum come from
// fastvideo_quant/kernels/small_m_common.cuh, which the loader puts in front of this file.

#if FVQ_BF16
#define MAGIC 0x4300u  // bfloat16 128.0: 0x4300 | q is 128 + q exactly for q < 16
#define ONE2 0x3F803F80u
#else
#define MAGIC 0x6400u  // float16 1024.0: 0x6400 | q is 1024 + q
#define ONE2 0x3C003C00u
#endif
#define MAGIC2 ((MAGIC << 16) | MAGIC)
#ifndef FVQ_OCC
#define FVQ_OCC 1
#endif
#ifndef FVQ_GPB
#define FVQ_GPB 1
#endif
#if FVQ_GPB > 1
#define GRP(b) (b)  // groups of 64 / 32: the FVQ_GPB scales and zero points of block b, loaded as one vector each
#elif FVQ_BPG1
#define GRP(b) (b)  // group 128: one group a block
#else
#define GRP(b) ((b) / bpg)
#endif
// A row's scales and zero points of one 128-input block: one fp16 scale and one zero point byte, or (FVQ_GPB 2 / 4)
// the block's 2 / 4 of each in one load (scales_k rows hold G = FVQ_GPB * K / 128 scales: 4- / 8-byte aligned)
#if FVQ_GPB == 1
typedef u16 sc_t;
typedef u8 zp_t;
#elif FVQ_GPB == 2
typedef u32 sc_t;
typedef u16 zp_t;
#elif FVQ_GPB == 4
typedef uint2 sc_t;
typedef u32 zp_t;
#else
#error "FVQ_GPB must be 1, 2 or 4"
#endif

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

// The codes in bits 0-3 and 16-19 of `bits` minus the zero point, as two exact 16-bit integers: lop3 puts each in the
// low mantissa bits of MAGIC, one packed FMA subtracts MAGIC + z.
__device__ __forceinline__ u32 minus_zero2(u32 bits, u32 negz2) {
  u32 v, r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(v) : "r"(bits), "r"(0x000F000Fu), "r"(MAGIC2));
#if FVQ_BF16
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(ONE2), "r"(negz2));
#else
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(ONE2), "r"(negz2));
#endif
  return r;
}

// (q_p, q_{p+4}) of a word minus the zero point: one shift puts nibbles p and p + 4 at bits 0-3 and 16-19.
__device__ __forceinline__ u32 dq_pair(u32 word, int p, u32 negz2) { return minus_zero2(word >> (4 * p), negz2); }

__device__ __forceinline__ u32 x_pair(const uint2& lo, const uint2& hi, int w) {
  // x at input 4t + w of two 16-input slabs, packed (lo slab in the low half)
  u32 a = (w < 2) ? lo.x : lo.y, b = (w < 2) ? hi.x : hi.y;
  return __byte_perm(a, b, (w & 1) ? 0x7632 : 0x5410);
}

__device__ __forceinline__ u32 neg_zero2(u8 z) {
  u32 h = 0x8000u | (MAGIC + z);
  return (h << 16) | h;
}

// acc += part * scale for one feature tile: rows g (sa) and g + 8 (sb) of its 16 features.
__device__ __forceinline__ void scale_into(float (&acc)[FVQ_MT][4], const float (&part)[FVQ_MT][4], float fa,
                                           float fb) {
#pragma unroll
  for (int mt = 0; mt < FVQ_MT; ++mt) {
    acc[mt][0] += part[mt][0] * fa;
    acc[mt][1] += part[mt][1] * fa;
    acc[mt][2] += part[mt][2] * fb;
    acc[mt][3] += part[mt][3] * fb;
  }
}

// One 128-input block of one warp: per feature tile and 8-column tile 8 MMAs on the exact integers q - z, then
// acc += part * scale. The x fragments (b) are built once and used by every feature tile.
__device__ __forceinline__ void block_mma(float (&acc)[FVQ_FT][FVQ_MT][4], const uint4 (&wa)[FVQ_FT],
                                          const uint4 (&wb)[FVQ_FT], const uint2 (&xv)[FVQ_MT][8],
                                          const u8 (&za)[FVQ_FT], const u8 (&zb)[FVQ_FT], const u16 (&sa)[FVQ_FT],
                                          const u16 (&sb)[FVQ_FT]) {
  u32 nza2[FVQ_FT], nzb2[FVQ_FT];
  float part[FVQ_FT][FVQ_MT][4];
#pragma unroll
  for (int f = 0; f < FVQ_FT; ++f) {
    nza2[f] = neg_zero2(za[f]);
    nzb2[f] = neg_zero2(zb[f]);
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) part[f][mt][0] = part[f][mt][1] = part[f][mt][2] = part[f][mt][3] = 0.f;
  }
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const int w = s >> 1, p = 2 * (s & 1);
    u32 b0r[FVQ_MT], b1r[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) {
      b0r[mt] = x_pair(xv[mt][p], xv[mt][p + 4], w);
      b1r[mt] = x_pair(xv[mt][p + 1], xv[mt][p + 5], w);
    }
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f) {
      const u32 worda = word_of(wa[f], w), wordb = word_of(wb[f], w);
      const u32 a0 = dq_pair(worda, p, nza2[f]), a1 = dq_pair(wordb, p, nzb2[f]);
      const u32 a2 = dq_pair(worda, p + 1, nza2[f]), a3 = dq_pair(wordb, p + 1, nzb2[f]);
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt) mma16816(part[f][mt], a0, a1, a2, a3, b0r[mt], b1r[mt]);
    }
  }
#pragma unroll
  for (int f = 0; f < FVQ_FT; ++f) scale_into(acc[f], part[f], f16_to_f32(sa[f]), f16_to_f32(sb[f]));
}

#if FVQ_GPB > 1
// Byte c of a word (nibbles 2c and 2c + 1) minus the zero point: prmt takes byte c alone, a multiply by 0x1001 puts
// a copy of it 12 bits up (nibble 2c + 1 at bits 16-19). (Measured against prmt of the word and the word shifted
// right by 4, which needs a shifted copy of each word: 2% faster over 234 tile points, H100,
// results/awq-cuda-groups_*.)
__device__ __forceinline__ u32 dq_byte(u32 word, int c, u32 negz2) {
  return minus_zero2(__byte_perm(word, 0, c | 0x4440) * 0x1001u, negz2);
}

__device__ __forceinline__ float scale_of(const sc_t& s, int i) {  // the block's scale i (i a constant)
#if FVQ_GPB == 2
  const u32 h = s;
#else
  const u32 h = i < 2 ? s.x : s.y;
#endif
  return f16_to_f32((u16)((i & 1) ? h >> 16 : h & 0xFFFFu));
}

// One 128-input block of one warp holding FVQ_GPB groups (of 64 or 32 inputs). Slabs 2c and 2c + 1 (16 inputs each)
// always lie in one group, so the k-slots of an MMA are chosen from one byte c of two words: MMA (c, h) takes A's
// k-slots {2t, 2t+1} from byte c of word 2h and {2t+8, 2t+9} from byte c of word 2h + 1 (inputs 32c + 4t + 2h
// (+1) and 32c + 16 + 4t + 2h (+1)), B the same inputs of x. The bytes of group i (c in i * 4 / FVQ_GPB ...) sum
// into one float32 partial, scaled into acc when the group ends: exact integers q - z on the tensor cores, as at
// FVQ_GPB 1.
__device__ __forceinline__ void block_mma_groups(float (&acc)[FVQ_FT][FVQ_MT][4], const uint4 (&wa)[FVQ_FT],
                                                 const uint4 (&wb)[FVQ_FT], const uint2 (&xv)[FVQ_MT][8],
                                                 const zp_t (&za)[FVQ_FT], const zp_t (&zb)[FVQ_FT],
                                                 const sc_t (&sa)[FVQ_FT], const sc_t (&sb)[FVQ_FT]) {
  constexpr int CPG = 4 / FVQ_GPB;  // bytes a group
  u32 nza2[FVQ_FT], nzb2[FVQ_FT];
  float part[FVQ_FT][FVQ_MT][4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int gi = c / CPG;
    if (c % CPG == 0) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f) {
        nza2[f] = neg_zero2((u8)(za[f] >> (8 * gi)));
        nzb2[f] = neg_zero2((u8)(zb[f] >> (8 * gi)));
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt) part[f][mt][0] = part[f][mt][1] = part[f][mt][2] = part[f][mt][3] = 0.f;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int w0 = 2 * h, w1 = 2 * h + 1;
      u32 b0r[FVQ_MT], b1r[FVQ_MT];
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt) {
        b0r[mt] = x_pair(xv[mt][2 * c], xv[mt][2 * c + 1], w0);
        b1r[mt] = x_pair(xv[mt][2 * c], xv[mt][2 * c + 1], w1);
      }
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f) {
        const u32 a0w = word_of(wa[f], w0), b0w = word_of(wb[f], w0);
        const u32 a1w = word_of(wa[f], w1), b1w = word_of(wb[f], w1);
        const u32 a0 = dq_byte(a0w, c, nza2[f]), a1 = dq_byte(b0w, c, nzb2[f]);
        const u32 a2 = dq_byte(a1w, c, nza2[f]), a3 = dq_byte(b1w, c, nzb2[f]);
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt) mma16816(part[f][mt], a0, a1, a2, a3, b0r[mt], b1r[mt]);
      }
    }
    if (c % CPG == CPG - 1) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f) scale_into(acc[f], part[f], scale_of(sa[f], gi), scale_of(sb[f], gi));
    }
  }
}
#endif

// The float32 sums to the output: directly, or (split K) through the partials and the last block to arrive, or (a
// cluster of FVQ_CS K parts) through rank 0's shared memory.
// Only the warps of K part 0 (warp < FVQ_ROWT) hold sums here; every thread of the block calls it (barriers).
// acc[f][mt][i]: feature n0 + 16 f + g (+ 8 for i >= 2), batch row m = 8 mt + 2t + (i & 1).
__device__ __forceinline__ void finish(float (&acc)[FVQ_FT][FVQ_MT][4], const u16* __restrict__ bias,
                                       u16* __restrict__ out, float* __restrict__ ws, int* __restrict__ locks, int M,
                                       int N, int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const bool mine = warp < FVQ_ROWT;  // K part 0
  const int n0 = (blockIdx.x * FVQ_ROWT + warp) * FEAT;
#if FVQ_CS > 1
  if (!cluster_sum(acc, mine, warp, lane)) return;
#else
  const int splits = gridDim.y, split = blockIdx.y;
  if (splits > 1) {
    const int TILE = FVQ_ROWT * FEAT * 16;  // float32 partials per block and split: its features x 16 rows
    float* part = ws + ((size_t)blockIdx.x * splits) * TILE;
    if (mine) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int m = 8 * mt + 2 * t + (i & 1), r = warp * FEAT + 16 * f + g + ((i >> 1) << 3);
            if (m < M && n0 + 16 * f < N) part[(size_t)split * TILE + r * 16 + m] = acc[f][mt][i];
          }
    }
    __threadfence();  // every partial visible device-wide before the counter says so
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) last = (atomicAdd(locks + blockIdx.x, 1) == splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (mine) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int m = 8 * mt + 2 * t + (i & 1), r = warp * FEAT + 16 * f + g + ((i >> 1) << 3);
            if (m < M && n0 + 16 * f < N) {
              float s = 0.f;
              for (int k = 0; k < splits; ++k) s += ld_l2(part + (size_t)k * TILE + r * 16 + m);  // split order
              acc[f][mt][i] = s;
            }
          }
    }
    if (threadIdx.x == 0) atomicExch(locks + blockIdx.x, 0);  // ready for the next launch on this stream
  }
#endif
  if (!mine) return;
#pragma unroll
  for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = 8 * mt + 2 * t + (i & 1), n = n0 + 16 * f + g + ((i >> 1) << 3);
        if (m < M && n0 + 16 * f < N) {
          float v = acc[f][mt][i];
          if (has_bias) v += out_to_f32(bias[n]);
          out[(size_t)m * N + n] = f32_to_out(v);
        }
      }
}

extern "C" __global__ void __launch_bounds__(FVQ_ROWT * FVQ_KW * 32, FVQ_OCC)
#if FVQ_CS > 1
__cluster_dims__(1, FVQ_CS, 1)
#endif
awq_small_m(const u16* __restrict__ x, const uint4* __restrict__ qw, const u16* __restrict__ scales,
            const u8* __restrict__ zeros, const u16* __restrict__ bias, u16* __restrict__ out,
            float* __restrict__ ws, int* __restrict__ locks, int M, int K, int N, int sx, int G, int bpg,
            int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int col = FVQ_KW == 1 ? warp : warp % FVQ_ROWT, kpart = FVQ_KW == 1 ? 0 : warp / FVQ_ROWT;
  const int n0 = (blockIdx.x * FVQ_ROWT + col) * FEAT;
  const bool active = n0 < N;  // N % 16 == 0: a feature tile is all in or all out
  const int splits = gridDim.y, split = blockIdx.y;
  const int nblk = K >> 7;
  const int s0 = (int)(((long long)split * nblk) / splits);
  const int s1 = (int)(((long long)(split + 1) * nblk) / splits);
  const int b0 = s0 + (int)(((long long)kpart * (s1 - s0)) / FVQ_KW);
  const int b1 = s0 + (int)(((long long)(kpart + 1) * (s1 - s0)) / FVQ_KW);

  float acc[FVQ_FT][FVQ_MT][4];
  zero_acc(acc);

  pdl_wait();  // (FVQ_PDL: the previous kernel has completed)

  if (active && b0 < b1) {
    const size_t K32 = (size_t)(K >> 5);  // 16-byte vectors per feature
    const uint4* qa[FVQ_FT];
    const uint4* qb[FVQ_FT];
    const sc_t* sa_p[FVQ_FT];
    const sc_t* sb_p[FVQ_FT];
    const zp_t* za_p[FVQ_FT];
    const zp_t* zb_p[FVQ_FT];
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f) {
      // a tile past N (the last column when N is not a multiple of FEAT) reads the last tile again; never stored
      const int rowA = min(n0 + 16 * f, N - 16) + g, rowB = rowA + 8;
      qa[f] = qw + (size_t)rowA * K32 + t;
      qb[f] = qw + (size_t)rowB * K32 + t;
      sa_p[f] = reinterpret_cast<const sc_t*>(scales + (size_t)rowA * G);
      sb_p[f] = reinterpret_cast<const sc_t*>(scales + (size_t)rowB * G);
      za_p[f] = reinterpret_cast<const zp_t*>(zeros + (size_t)rowA * G);
      zb_p[f] = reinterpret_cast<const zp_t*>(zeros + (size_t)rowB * G);
    }
    // x rows of this lane's B column (g + 8 mt): rows past M read row M - 1 instead — they fill output columns that
    // are never stored, so no predicate is needed on the loads
    const u16* xrow[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) xrow[mt] = x + (size_t)min(g + 8 * mt, M - 1) * sx + 4 * t;

    uint4 wa[FVQ_U][FVQ_FT], wb[FVQ_U][FVQ_FT];
    sc_t sa[FVQ_U][FVQ_FT], sb[FVQ_U][FVQ_FT];
    zp_t za[FVQ_U][FVQ_FT], zb[FVQ_U][FVQ_FT];
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u) {
      const int b = b0 + u;
      if (b < b1) {
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f) {
          wa[u][f] = ld_stream(qa[f] + 4 * b);
          wb[u][f] = ld_stream(qb[f] + 4 * b);
          sa[u][f] = sa_p[f][GRP(b)]; sb[u][f] = sb_p[f][GRP(b)];
          za[u][f] = za_p[f][GRP(b)]; zb[u][f] = zb_p[f][GRP(b)];
        }
      }
    }
    for (int bb = b0; bb < b1; bb += FVQ_U) {
      uint4 na[FVQ_U][FVQ_FT], nb[FVQ_U][FVQ_FT];
      sc_t nsa[FVQ_U][FVQ_FT], nsb[FVQ_U][FVQ_FT];
      zp_t nza[FVQ_U][FVQ_FT], nzb[FVQ_U][FVQ_FT];
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u) {  // the next FVQ_U blocks' words, scales and zeros, in flight while these compute
        const int b = bb + FVQ_U + u;
        if (b < b1) {
#pragma unroll
          for (int f = 0; f < FVQ_FT; ++f) {
            na[u][f] = ld_stream(qa[f] + 4 * b);
            nb[u][f] = ld_stream(qb[f] + 4 * b);
            nsa[u][f] = sa_p[f][GRP(b)]; nsb[u][f] = sb_p[f][GRP(b)];
            nza[u][f] = za_p[f][GRP(b)]; nzb[u][f] = zb_p[f][GRP(b)];
          }
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
#if FVQ_GPB > 1
          block_mma_groups(acc, wa[u], wb[u], xv, za[u], zb[u], sa[u], sb[u]);
#else
          block_mma(acc, wa[u], wb[u], xv, za[u], zb[u], sa[u], sb[u]);
#endif
        }
      }
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u)
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f) {
          wa[u][f] = na[u][f]; wb[u][f] = nb[u][f];
          sa[u][f] = nsa[u][f]; sb[u][f] = nsb[u][f];
          za[u][f] = nza[u][f]; zb[u][f] = nzb[u][f];
        }
    }
  }

#if FVQ_KW > 1
  kw_tree_sum(acc, kpart, col, lane);
#endif
  finish(acc, bias, out, ws, locks, M, N, has_bias);
}
