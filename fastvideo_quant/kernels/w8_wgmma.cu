// float8 e4m3 weights x 16-bit activations on Hopper's warpgroup tensor cores (wgmma), for M above the small-M kernels'
// 16 rows (W8A16): no activation quantization launch, the weight converted in registers as wgmma's A operand, never
// written back in 16 bits. Compiled at run time by NVRTC for sm_90a (fastvideo_quant/kernels/w8_wgmma_cuda.py), which
// defines:
//   FVQ_BF16  1: bfloat16 activations and output, 0: float16
//   FVQ_MN    activation rows a block (the wgmma N): 32, 64 or 128; M > FVQ_MN takes gridDim.z row tiles
//   FVQ_WG    consumer warpgroups a block, each 64 output features (the wgmma M)
//   FVQ_CS    K parts (1..8): gridDim.y == FVQ_CS blocks of one output tile form a thread-block cluster; parts 1..
//             send their float32 sums to part 0's shared memory, which adds them in part order (deterministic)
//   FVQ_S     pipeline stages (2..7), each one 128-input block: the weight rows of the block (64 FVQ_WG x 128 bytes)
//             and the activation tile (FVQ_MN x 128 x 2 bytes); FVQ_S - 1 in flight while the warpgroups use one
//
// Weight: e4m3 [N, K] row-major (K a multiple of 128); scale: float32 [N]; out = x @ (w * scale).T + bias in x's dtype.
//
// out^T = W x^T. Warps: FVQ_WG consumer warpgroups and one producer warp. The producer copies each stage with cp.async
// (16 bytes a copy, no registers, so a deep pipeline costs none) and hands it over through named barriers: full when
// its copies have landed (cp.async.wait_group, then bar.arrive), empty when the consumers are done with it. The
// producer fences (fence.proxy.async) each stage's cp.async-written activations for wgmma before handing it over.
//
// Shared memory layout of a stage, both 128-byte swizzled (16-byte chunk q of a 128-byte row r stored at chunk
// q ^ (r % 8)): the weight rows (row r: inputs 0..127 of the block, one byte each) — a warp's fragment reads below meet
// no bank conflicts — and the activation tile as two 64-input subtiles [FVQ_MN rows][128 bytes] (K-major, wgmma's
// 128-byte swizzle mode: step s of the block is the 32 bytes at chunk 2 (s % 4) of subtile s / 4).
//
// A fragment (wgmma m64nNk16, A in registers; per warp q of the group rows 16q..16q+15, as mma.m16n8k16): lane
// (g, t) = (lane / 4, lane % 4) holds rows g and g + 8 at k {2t, 2t+1} and {2t+8, 2t+9} of the step: two bytes each,
// one 16-bit shared load per pair, converted by cvt.rn.f16x2.e4m3x2 (exact; for bfloat16 the float16 bits shifted
// into bfloat16 bits of value x 2^-112, undone in the epilogue: f16x2_as_bf16x2 and W_UNSCALE, small_m_common.cuh,
// which also gives u32 / u16 / u8, MMA_TYPES, f32_to_out, out_to_f32 and cluster_sync).

#define NACC (FVQ_MN / 2)             // float32 accumulators a thread: 64 features x FVQ_MN rows / 128 threads
#define NT (128 * FVQ_WG)             // consumer threads
#define NTB (NT + 32)                 // threads a block: the consumers and the producer warp
#define WBYTES (FVQ_WG * 64 * 128)    // weight bytes of a stage
#define SUBTILE (FVQ_MN * 128)        // bytes of one 64-input activation subtile
#define STAGE (WBYTES + 2 * SUBTILE)  // bytes of a stage (a multiple of 1024)
#ifndef FVQ_WAIT
#define FVQ_WAIT 1  // 1: blocks in overlapped pairs (below), 0: one at a time
#endif
#define BAR_FULL 1                    // named barriers: stage full (1..FVQ_S), stage empty (FVQ_S + 1..2 FVQ_S)
#define BAR_EMPTY (1 + FVQ_S)
#if FVQ_S < 2 || 1 + 2 * FVQ_S > 16
#error "FVQ_S must be 2..7 (two named barriers a stage, 16 in all)"
#endif

#define ACC4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define ACC16(i) ACC4(i), ACC4(i + 4), ACC4(i + 8), ACC4(i + 12)
#define ACC32(i) ACC16(i), ACC16(i + 16)
#define ACC64(i) ACC32(i), ACC32(i + 32)

__device__ __forceinline__ void wgmma_n32(float (&d)[16], const u32 (&a)[4], unsigned long long desc) {
  asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, 1, 0;\n\t"
               "wgmma.mma_async.sync.aligned.m64n32k16.f32." MMA_TYPES " "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
               "{%16,%17,%18,%19}, %20, p, 1, 1, 0;\n\t}"
               : ACC16(0)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

__device__ __forceinline__ void wgmma_n64(float (&d)[32], const u32 (&a)[4], unsigned long long desc) {
  asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, 1, 0;\n\t"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." MMA_TYPES " "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
               "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n\t}"
               : ACC32(0)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

__device__ __forceinline__ void wgmma_n128(float (&d)[64], const u32 (&a)[4], unsigned long long desc) {
  asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, 1, 0;\n\t"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." MMA_TYPES " "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
               "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
               "{%64,%65,%66,%67}, %68, p, 1, 1, 0;\n\t}"
               : ACC64(0)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

__device__ __forceinline__ void wgmma_tile(float (&d)[NACC], const u32 (&a)[4], unsigned long long desc) {
#if FVQ_MN == 32
  wgmma_n32(d, a, desc);
#elif FVQ_MN == 64
  wgmma_n64(d, a, desc);
#elif FVQ_MN == 128
  wgmma_n128(d, a, desc);
#else
#error "FVQ_MN must be 32, 64 or 128"
#endif
}

// The accumulators are written by the asynchronous wgmma: the compiler must neither move nor reuse them across the
// fence / wait pairs (CUTLASS's warpgroup_fence_operand).
__device__ __forceinline__ void fence_acc(float (&d)[NACC]) {
#pragma unroll
  for (int i = 0; i < NACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor of a K-major, 128-byte-swizzled operand: start address, leading byte offset 16
// (unused with this swizzle), stride 1024 bytes between groups of 8 rows, swizzle mode 1 (128 bytes).
__device__ __forceinline__ unsigned long long smem_desc(u32 addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
         (1ull << 62);
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}

// cp.async writes are generic-proxy writes; wgmma reads through the async proxy: the writing thread fences between
// them (a fence in the reading threads after the barrier was measured not to be enough: garbage activations).
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

__device__ __forceinline__ u16 ld_shared_u16(u32 addr) {
  u16 v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
  return v;
}

// Two e4m3 values (a 16-bit pair, lower byte first) as a packed pair in the MMA's type.
__device__ __forceinline__ u32 w8_pair(u16 two) {
  u32 h;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"(two));
  return f16x2_as_bf16x2(h);
}

__device__ __forceinline__ u32 swz(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// Producer: block b of the weight rows and the activation tile into the stage at shared address `stage` (weight rows
// past N read row N - 1, activation rows past M row M - 1: they fill outputs that are never stored).
__device__ __forceinline__ void copy_stage(u32 stage, const u8* __restrict__ w, const u16* __restrict__ x, int row0,
                                           int m0, int M, int N, int K, int sx, int b, int lane) {
#pragma unroll 4
  for (int c = lane; c < FVQ_WG * 64 * 8; c += 32) {
    const int r = c >> 3, q = c & 7;
    cp_async16(stage + swz(r, q), w + (size_t)min(row0 + r, N - 1) * K + 128 * b + 16 * q);
  }
#pragma unroll 4
  for (int c = lane; c < FVQ_MN * 16; c += 32) {
    const int r = c >> 4, q = c & 15;  // chunk q: inputs 8q..8q+7 of the block, subtile q / 8
    cp_async16(stage + WBYTES + (q >> 3) * SUBTILE + swz(r, q & 7), x + (size_t)min(m0 + r, M - 1) * sx + 128 * b + 8 * q);
  }
}

// Consumer, block i of this K part from stage i % FVQ_S: the lane's A fragments (rows 16 warp + g and + 8, byte
// offsets 2t and 8 + 2t of chunk s for step s) converted into `a` and 8 wgmma steps issued (committed as one group).
__device__ __forceinline__ void issue_block(float (&acc)[NACC], u32 (&a)[8][4], u32 smem, int i, int warp, int g,
                                            int t) {
  const int st = i % FVQ_S, ra = 16 * warp + g, rb = ra + 8;
  const u32 stage = smem + st * STAGE;
  bar_sync(BAR_FULL + st, NTB);
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    a[s][0] = w8_pair(ld_shared_u16(stage + swz(ra, s) + 2 * t));
    a[s][1] = w8_pair(ld_shared_u16(stage + swz(rb, s) + 2 * t));
    a[s][2] = w8_pair(ld_shared_u16(stage + swz(ra, s) + 8 + 2 * t));
    a[s][3] = w8_pair(ld_shared_u16(stage + swz(rb, s) + 8 + 2 * t));
  }
  fence_acc(acc);
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
  for (int s = 0; s < 8; ++s) wgmma_tile(acc, a[s], smem_desc(stage + WBYTES + (s >> 2) * SUBTILE + 32 * (s & 3)));
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

template <int N>
__device__ __forceinline__ void wgmma_wait(float (&acc)[NACC]) {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
  fence_acc(acc);
}

// Block i's stage back to the producer, where it waits for it (blocks i + FVQ_S < nb).
__device__ __forceinline__ void release(int i, int nb) {
  if (i + FVQ_S < nb) bar_arrive(BAR_EMPTY + i % FVQ_S, NTB);
}

extern "C" __global__ void __launch_bounds__(NTB, 1)
#if FVQ_CS > 1
__cluster_dims__(1, FVQ_CS, 1)
#endif
w8_wgmma(const u16* __restrict__ x, const u8* __restrict__ w, const float* __restrict__ scale,
         const u16* __restrict__ bias, u16* __restrict__ out, int M, int K, int N, int sx, int has_bias) {
  extern __shared__ unsigned char smem_raw[];
  const u32 smem = ((u32)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;  // (the launch adds 1 KB for this)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * (64 * FVQ_WG);
  const int nw = row0 + 16 * warp;  // a consumer warp's 16 features (warpgroup warp / 4)
  const int m0 = blockIdx.z * FVQ_MN;
  const int part = blockIdx.y, parts = gridDim.y;
  const int nblk = K >> 7;
  const int b0 = (int)(((long long)part * nblk) / parts), b1 = (int)(((long long)(part + 1) * nblk) / parts);
  const int nb = b1 - b0;

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  if (threadIdx.x >= NT) {  // the producer warp
    for (int i = 0; i < nb; ++i) {
      if (i >= FVQ_S - 1) {  // block i - (FVQ_S - 1) has landed: full (before waiting below, which may need it)
        cp_async_wait<FVQ_S - 2>();
        proxy_fence();
        bar_arrive(BAR_FULL + (i - FVQ_S + 1) % FVQ_S, NTB);
      }
      if (i >= FVQ_S) bar_sync(BAR_EMPTY + i % FVQ_S, NTB);  // the consumers are done with block i - FVQ_S there
      copy_stage(smem + (i % FVQ_S) * STAGE, w, x, row0, m0, M, N, K, sx, b0 + i, lane);
      cp_async_commit();
    }
    cp_async_wait<0>();
    proxy_fence();
    for (int j = max(0, nb - FVQ_S + 1); j < nb; ++j) bar_arrive(BAR_FULL + j % FVQ_S, NTB);
  } else {
    // Blocks in pairs, the second's fragments in other registers (both sets are wgmma inputs in flight, so ptxas keeps
    // them apart): its conversion overlaps the first's multiply. Waited for at the end of each pair: fragments are never
    // redefined across the loop's back edge while a multiply that reads them may still run.
    for (int i = 0; i < nb; i += 1 + FVQ_WAIT) {
      u32 a0[8][4];
      issue_block(acc, a0, smem, i, warp, g, t);
#if FVQ_WAIT
      if (i + 1 < nb) {
        u32 a1[8][4];
        issue_block(acc, a1, smem, i + 1, warp, g, t);
        wgmma_wait<1>(acc);
        release(i, nb);
        wgmma_wait<0>(acc);
        release(i + 1, nb);
        continue;
      }
#endif
      wgmma_wait<0>(acc);
      release(i, nb);
    }
  }

#if FVQ_CS > 1
  {  // cluster (1, FVQ_CS, 1), gridDim.y == FVQ_CS: the rank is blockIdx.y. Shared memory is reused for the sums.
    cluster_sync();  // every part is done with its stages
    if (part > 0 && threadIdx.x < NT) {  // (the producer warp holds no sums)
      u32 remote;
      asm volatile("mapa.shared::cluster.u32 %0, %1, 0;"
                   : "=r"(remote) : "r"(smem + 4u * ((u32)(part - 1) * NACC * NT + threadIdx.x)));
#pragma unroll
      for (int i = 0; i < NACC; ++i)
        asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote + 4u * NT * i), "f"(acc[i]) : "memory");
    }
    cluster_sync();
    if (part > 0 || threadIdx.x >= NT) return;
    const float* red = (const float*)(smem_raw + (smem - (u32)__cvta_generic_to_shared(smem_raw)));
#pragma unroll
    for (int r = 0; r < FVQ_CS - 1; ++r)  // part order: deterministic
#pragma unroll
      for (int i = 0; i < NACC; ++i) acc[i] += red[((size_t)r * NACC + i) * NT + threadIdx.x];
  }
#endif
  if (threadIdx.x >= NT) return;

  // acc[4j + i]: feature nw + g (+ 8 for i >= 2), activation row m0 + 8j + 2t + (i & 1)
  const int na = nw + g, nb8 = nw + g + 8;
  const float sa = scale[min(na, N - 1)] * W_UNSCALE, sb = scale[min(nb8, N - 1)] * W_UNSCALE;
  const float ba = has_bias ? out_to_f32(bias[min(na, N - 1)]) : 0.f;
  const float bb = has_bias ? out_to_f32(bias[min(nb8, N - 1)]) : 0.f;
#pragma unroll
  for (int j = 0; j < FVQ_MN / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + 8 * j + 2 * t + (i & 1), n = i >= 2 ? nb8 : na;
      if (m < M && n < N) out[(size_t)m * N + n] = f32_to_out(acc[4 * j + i] * (i >= 2 ? sb : sa) + (i >= 2 ? bb : ba));
    }
}
