// 8-bit weights (float8 e4m3 or int8) x 16-bit activations for M <= 16 (W8A16): weights streamed from global memory
// straight into tensor-core fragments, converted exactly in registers, never written back. Compiled at run time by
// NVRTC (fastvideo_quant/kernels/w8_small_m_cuda.py) for compute capability 8.9+ with e4m3 weights (the e4m3x2 ->
// f16x2 conversion) or 8.0+ with int8 weights, which defines:
//   FVQ_BF16  1: bfloat16 activations and output, 0: float16
//   FVQ_INT8  1: int8 weights, 0: float8 e4m3
//   FVQ_MT    8-column MMA tiles over M: 1 for M <= 8, 2 for M <= 16
//   FVQ_FT    16-feature tiles per warp (1 or 2): the x fragments are loaded once for both
//   FVQ_ROWT  warp columns per block: FVQ_ROWT * FVQ_FT * 16 features a block
//   FVQ_KW    warps per column (1, 2, 4 or 8), each a contiguous part of K; their float32 sums are added through
//             shared memory in a fixed tree (deterministic). Warp w owns column w % FVQ_ROWT, K part w / FVQ_ROWT.
//   FVQ_U     128-input blocks a warp loads ahead (register double buffer)
//   FVQ_CS    1: no K split over blocks; 2..8: K in FVQ_CS parts, the gridDim.y = FVQ_CS blocks of a column one
//             thread-block cluster (sm_90), their sums added in rank 0's shared memory (cluster_sum)
//   FVQ_OCC   blocks a multiprocessor should hold: registers are capped for it (__launch_bounds__' second argument)
//   FVQ_PDL   1: launched with programmatic dependent launch (sm_90; small_m_common.cuh's pdl_wait)
//   FVQ_BLOCK 1: scale is float32 [K/128, N], one per output feature and 128-input block (block-scaled fp8, the
//             DeepSeek-V3 / Hugging Face FineGrainedFP8 format): each block's products are summed on their own and
//             added to the feature's sum times that block's scale. 0: scale is float32 [N], applied once at the end.
//
// Weight: e4m3 or int8 [N, K] row-major as the fp8 and int8 layers keep it (K a multiple of 128); scale: float32 [N]
// per output feature (a per-tensor scale repeated), or [K/128, N] (FVQ_BLOCK); out = (x @ (w * scale).T + bias) in
// x's dtype.
//
// Fragments (mma.m16n8k16, row.col): lane (g, t) = (lane / 4, lane % 4) holds A rows g and g + 8 at k-slots
// {2t, 2t+1} and {2t+8, 2t+9}, B column g at the same k-slots. The k order inside a 128-input block is chosen to
// match contiguous loads: lane t reads bytes 32t..32t+31 of both its rows (two 16-byte loads each), and MMA s
// (s = 0..7) takes its word s — inputs 32t + 4s + {0, 1} for k-slots {2t, 2t+1}, + {2, 3} for {2t+8, 2t+9}. B holds
// x at the same inputs: x words 2s and 2s + 1 of the lane's 32 activations (four 16-byte loads a row).
//
// Conversion: cvt.rn.f16x2.e4m3x2 is exact (every e4m3 value, subnormals included, is a normal float16). For
// float16 activations that is the A fragment. For bfloat16, the float16 bits shifted right by 3 with the sign kept
// are a bfloat16 of the same value times 2^-112 (exponent field e16 read with bias 127 instead of 15; the three
// low mantissa bits dropped are zero for e4m3 values; zero stays zero): exact, and the epilogue multiplies by 2^112.
// Products below float32's normal range (|x * w| < 2^-14 before the 2^-112) may flush: ~2^-20 of a typical term.
// int8: the byte v + 128 (v ^ 0x80) under float16's exponent of 1024 (0x64 as the high byte) is 1024 + v + 128
// exactly, and minus 1152 is v exactly (|v| <= 128 needs 8 of float16's 11 significant bits, so its three low
// mantissa bits are zero too and the same shift gives bfloat16 bits of v * 2^-112).

// u32 / u16, MMA_TYPES, CVT_OUT, FEAT, the FVQ_KW / FVQ_FT / FVQ_CS defaults, ld_stream, f32_to_out, out_to_f32,
// mma16816, word_of, zero_acc, kw_tree_sum and cluster_sum come from small_m_common.cuh, which the loader puts in
// front of this file.

#if defined(FVQ_OCC) && FVQ_OCC > 1
#define W8_BOUNDS __launch_bounds__(FVQ_ROWT * FVQ_KW * 32, FVQ_OCC)
#else  // (not (threads, 1): with that, ptxas gave the same tiles 12-16 more registers, e.g. 68 -> 80, 128 -> 144)
#define W8_BOUNDS __launch_bounds__(FVQ_ROWT * FVQ_KW * 32)
#endif

#if FVQ_BF16
#define W_UNSCALE 0x1p112f
#else
#define W_UNSCALE 1.0f
#endif

__device__ __forceinline__ uint4 ld_x16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

#if FVQ_BF16
__device__ __forceinline__ u32 f16x2_as_bf16x2(u32 h) { return ((h & 0x7FFF7FFFu) >> 3) | (h & 0x80008000u); }
#else
__device__ __forceinline__ u32 f16x2_as_bf16x2(u32 h) { return h; }  // (float16 activations: used as is)
#endif

// The four 8-bit values of `word` as two packed 16-bit pairs in the MMA's type (see the header): bytes 0-1 in lo,
// bytes 2-3 in hi, the lower byte in the lower half.
__device__ __forceinline__ void w8_pairs(u32 word, u32& lo, u32& hi) {
#if FVQ_INT8
  const u32 u = word ^ 0x80808080u;  // v + 128 in each byte
  lo = __byte_perm(u, 0x64646464u, 0x4140);  // (0x64 << 8 | u0, 0x64 << 8 | u1): float16 1024 + u
  hi = __byte_perm(u, 0x64646464u, 0x4342);
  asm("sub.rn.f16x2 %0, %0, %1;" : "+r"(lo) : "r"(0x64806480u));  // minus float16 1152 (exact)
  asm("sub.rn.f16x2 %0, %0, %1;" : "+r"(hi) : "r"(0x64806480u));
#else
  asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
      : "=r"(lo), "=r"(hi) : "r"(word));
#endif
  lo = f16x2_as_bf16x2(lo);
  hi = f16x2_as_bf16x2(hi);
}

#ifndef FVQ_BLOCK
#define FVQ_BLOCK 0
#endif

// One 128-input block: wa/wb[f][0..1] the lane's 32 bytes of rows A (g) and B (g + 8) of feature tile f; xv[mt]
// the lane's 32 activations of batch row g + 8 mt.
__device__ __forceinline__ void block_mma(float (&acc)[FVQ_FT][FVQ_MT][4], const uint4 (&wa)[FVQ_FT][2],
                                          const uint4 (&wb)[FVQ_FT][2], const uint4 (&xv)[FVQ_MT][4]) {
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    u32 b0[FVQ_MT], b1[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) {
      b0[mt] = word_of(xv[mt][s >> 1], 2 * (s & 1));
      b1[mt] = word_of(xv[mt][s >> 1], 2 * (s & 1) + 1);
    }
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f) {
      const u32 worda = word_of(wa[f][s >> 2], s & 3), wordb = word_of(wb[f][s >> 2], s & 3);
      u32 a0, a1, a2, a3;
      w8_pairs(worda, a0, a2);
      w8_pairs(wordb, a1, a3);
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt) mma16816(acc[f][mt], a0, a1, a2, a3, b0[mt], b1[mt]);
    }
  }
}

extern "C" __global__ void W8_BOUNDS
#if FVQ_CS > 1
__cluster_dims__(1, FVQ_CS, 1)
#endif
w8_small_m(const u16* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ scale,
           const u16* __restrict__ bias, u16* __restrict__ out, int M, int K, int N, int sx, int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int col = warp % FVQ_ROWT, kpart = warp / FVQ_ROWT;
  const int n0 = (blockIdx.x * FVQ_ROWT + col) * FEAT;
  const bool active = n0 < N;  // N % 16 == 0: a feature tile is all in or all out
  const int nblk = K >> 7;
#if FVQ_CS > 1  // this block's part of K (FVQ_CS parts: the cluster rank is blockIdx.y), then this warp's part of it
  const int s0 = (int)(((long long)blockIdx.y * nblk) / FVQ_CS);
  const int s1 = (int)(((long long)(blockIdx.y + 1) * nblk) / FVQ_CS);
  const int b0 = s0 + (int)(((long long)kpart * (s1 - s0)) / FVQ_KW);
  const int b1 = s0 + (int)(((long long)(kpart + 1) * (s1 - s0)) / FVQ_KW);
#else
  const int b0 = (int)(((long long)kpart * nblk) / FVQ_KW), b1 = (int)(((long long)(kpart + 1) * nblk) / FVQ_KW);
#endif

  float acc[FVQ_FT][FVQ_MT][4];
  zero_acc(acc);

  pdl_wait();  // (FVQ_PDL: the previous kernel has completed)

  if (active && b0 < b1) {
    const unsigned char* wa_p[FVQ_FT];
    const unsigned char* wb_p[FVQ_FT];
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f) {
      // a tile past N (the last column when N is not a multiple of FEAT) reads the last tile again; never stored
      const int rowA = min(n0 + 16 * f, N - 16) + g;
      wa_p[f] = w + (size_t)rowA * K + 32 * t;
      wb_p[f] = wa_p[f] + (size_t)8 * K;
    }
    // rows past M read row M - 1: they fill output columns that are never stored
    const u16* xrow[FVQ_MT];
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) xrow[mt] = x + (size_t)min(g + 8 * mt, M - 1) * sx + 32 * t;

    uint4 wa[FVQ_U][FVQ_FT][2], wb[FVQ_U][FVQ_FT][2];
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u)
      if (b0 + u < b1)
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            wa[u][f][h] = ld_stream(wa_p[f] + 128 * (b0 + u) + 16 * h);
            wb[u][f][h] = ld_stream(wb_p[f] + 128 * (b0 + u) + 16 * h);
          }
#if FVQ_BLOCK
    // the block scales of rows A and B (as the weight's rows), loaded with the weights they scale, a step ahead: a
    // load at the point of use stalls every block on its latency (H100: 5120x13824 M=1 41.0 against 34.6 us)
    const float* s_p[FVQ_FT];
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f) s_p[f] = scale + min(n0 + 16 * f, N - 16) + g;
    float sc[FVQ_U][FVQ_FT][2];
#pragma unroll
    for (int u = 0; u < FVQ_U; ++u)
      if (b0 + u < b1)
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f) {
          sc[u][f][0] = __ldg(s_p[f] + (size_t)(b0 + u) * N);
          sc[u][f][1] = __ldg(s_p[f] + (size_t)(b0 + u) * N + 8);
        }
#endif
    for (int bb = b0; bb < b1; bb += FVQ_U) {
      uint4 na[FVQ_U][FVQ_FT][2], nb[FVQ_U][FVQ_FT][2];
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u)  // the next FVQ_U blocks' words, in flight while these compute
        if (bb + FVQ_U + u < b1)
#pragma unroll
          for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              na[u][f][h] = ld_stream(wa_p[f] + 128 * (bb + FVQ_U + u) + 16 * h);
              nb[u][f][h] = ld_stream(wb_p[f] + 128 * (bb + FVQ_U + u) + 16 * h);
            }
#if FVQ_BLOCK
      float ns[FVQ_U][FVQ_FT][2];
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u)
        if (bb + FVQ_U + u < b1)
#pragma unroll
          for (int f = 0; f < FVQ_FT; ++f) {
            ns[u][f][0] = __ldg(s_p[f] + (size_t)(bb + FVQ_U + u) * N);
            ns[u][f][1] = __ldg(s_p[f] + (size_t)(bb + FVQ_U + u) * N + 8);
          }
#endif
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u) {
        const int b = bb + u;
        if (b < b1) {
          uint4 xv[FVQ_MT][4];
#pragma unroll
          for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
            for (int j = 0; j < 4; ++j) xv[mt][j] = ld_x16(xrow[mt] + 128 * b + 8 * j);
#if FVQ_BLOCK
          // this block's sums, then added times its scales (2^112 first, as in the epilogue: the bf16 sums are the
          // values times 2^-112, which a scale < 1 would push below float32's normal range)
          float part[FVQ_FT][FVQ_MT][4];
          zero_acc(part);
          block_mma(part, wa[u], wb[u], xv);
#pragma unroll
          for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
            for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
              for (int i = 0; i < 4; ++i) acc[f][mt][i] += part[f][mt][i] * W_UNSCALE * sc[u][f][i >> 1];
#else
          block_mma(acc, wa[u], wb[u], xv);
#endif
        }
      }
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u)
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            wa[u][f][h] = na[u][f][h];
            wb[u][f][h] = nb[u][f][h];
          }
#if FVQ_BLOCK
#pragma unroll
      for (int u = 0; u < FVQ_U; ++u)
#pragma unroll
        for (int f = 0; f < FVQ_FT; ++f) {
          sc[u][f][0] = ns[u][f][0];
          sc[u][f][1] = ns[u][f][1];
        }
#endif
    }
  }

#if FVQ_KW > 1
  kw_tree_sum(acc, kpart, col, lane);
#endif
#if FVQ_CS > 1
  if (!cluster_sum(acc, kpart == 0, col, lane)) return;
#endif
  if (kpart != 0 || !active) return;
  // acc[f][mt][i]: feature n0 + 16 f + g (+ 8 for i >= 2), batch row 8 mt + 2t + (i & 1)
#pragma unroll
  for (int f = 0; f < FVQ_FT; ++f) {
    if (n0 + 16 * f >= N) continue;
    const int na = n0 + 16 * f + g;
#if !FVQ_BLOCK
    const float sa = scale[na], sb = scale[na + 8];
#endif
    const float ba = has_bias ? out_to_f32(bias[na]) : 0.f, bbias = has_bias ? out_to_f32(bias[na + 8]) : 0.f;
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = 8 * mt + 2 * t + (i & 1);
        if (m < M) {
          const bool hi = i >= 2;
#if FVQ_BLOCK
          const float v = acc[f][mt][i];  // (scaled block by block, 2^112 included)
#else
          const float v = acc[f][mt][i] * W_UNSCALE * (hi ? sb : sa);  // (2^112 first: no overflow of the scale)
#endif
          out[(size_t)m * N + na + (hi ? 8 : 0)] = f32_to_out(v + (hi ? bbias : ba));
        }
      }
  }
}
