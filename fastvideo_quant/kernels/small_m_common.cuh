// Shared by the small-M CUDA kernels (w8_small_m.cu here, fvq_awq's awq_small_m.cu): put in front of their source by
// their loaders (cuda_rtc.source_with). Each kernel defines FVQ_BF16 (1: bfloat16 activations and output, 0:
// float16), FVQ_MT (8-column MMA tiles over M) and FVQ_ROWT (warp columns a block), and may define FVQ_FT (16-feature
// tiles a warp, default 1), FVQ_KW (warps splitting a column's K range, default 1), FVQ_CS (K parts of a column
// as blocks of one thread-block cluster, default 1: no cluster) and FVQ_PDL (1: launched with programmatic dependent
// launch, sm_90; default 0).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#if FVQ_BF16
#define MMA_TYPES "bf16.bf16"
#define CVT_OUT "cvt.rn.bf16.f32"
#else
#define MMA_TYPES "f16.f16"
#define CVT_OUT "cvt.rn.f16.f32"
#endif
#ifndef FVQ_KW
#define FVQ_KW 1
#endif
#ifndef FVQ_FT
#define FVQ_FT 1
#endif
#ifndef FVQ_CS
#define FVQ_CS 1
#endif
#ifndef FVQ_PDL
#define FVQ_PDL 0
#endif
#define FEAT (FVQ_FT * 16)  // features of one warp column

// Programmatic dependent launch (FVQ_PDL 1; the launcher sets the stream-serialization attribute): the kernel's
// blocks may start as the previous kernel's blocks exit, before it has completed; pdl_wait, before the kernel's first
// memory access, holds them until it has and its memory is visible. No early trigger (griddepcontrol
// .launch_dependents) and no weight prefetch before the wait: both measured slower in a chain of layers (H200,
// benchmarks/results/pdl-small-m-probe_*.json, probe at a4718bd).
__device__ __forceinline__ void pdl_wait() {
#if FVQ_PDL
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {  // read once: no L1 allocation
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
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

__device__ __forceinline__ void mma16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_TYPES ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 word_of(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

__device__ __forceinline__ void zero_acc(float (&acc)[FVQ_FT][FVQ_MT][4]) {
#pragma unroll
  for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
    for (int mt = 0; mt < FVQ_MT; ++mt) acc[f][mt][0] = acc[f][mt][1] = acc[f][mt][2] = acc[f][mt][3] = 0.f;
}

#if FVQ_KW > 1
// The FVQ_KW K parts' float32 sums of warp column `col` added in a fixed tree (deterministic): at step h, parts
// h..2h-1 hand theirs to parts 0..h-1 through shared memory; part 0 ends with the total. Every thread of the block
// calls it (barriers).
__device__ __forceinline__ void kw_tree_sum(float (&acc)[FVQ_FT][FVQ_MT][4], int kpart, int col, int lane) {
  __shared__ float red[FVQ_KW / 2][FVQ_ROWT][FVQ_FT * FVQ_MT * 4][32];
#pragma unroll
  for (int h = FVQ_KW / 2; h >= 1; h /= 2) {
    if (kpart >= h && kpart < 2 * h) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) red[kpart - h][col][(f * FVQ_MT + mt) * 4 + i][lane] = acc[f][mt][i];
    }
    __syncthreads();
    if (kpart < h) {
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[f][mt][i] += red[kpart][col][(f * FVQ_MT + mt) * 4 + i][lane];
    }
    __syncthreads();
  }
}
#endif

#if FVQ_CS > 1
__device__ __forceinline__ void cluster_sync() {  // every thread of every block of the cluster; orders shared memory
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The K parts of a column split over the FVQ_CS blocks of one thread-block cluster (cluster dims (1, FVQ_CS, 1),
// gridDim.y == FVQ_CS, so the cluster rank is blockIdx.y): each part's sums go to rank 0's shared memory through
// distributed shared memory (mapa + st.shared::cluster; no global partials, counters or fences), one cluster barrier,
// and rank 0 adds them in part order (deterministic). `mine`: this warp holds sums of warp column `col`. Returns
// whether this block holds the totals (rank 0). Every thread of every block of the cluster calls it (barrier).
__device__ __forceinline__ bool cluster_sum(float (&acc)[FVQ_FT][FVQ_MT][4], bool mine, int col, int lane) {
  __shared__ float cred[FVQ_CS - 1][FVQ_ROWT][FVQ_FT * FVQ_MT * 4][32];
  const int part = blockIdx.y;
  if (part > 0 && mine) {  // this part's sums into rank 0's slot part - 1
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, 0;"
                 : "=r"(remote) : "r"((u32)__cvta_generic_to_shared(&cred[part - 1][col][0][lane])));
#pragma unroll
    for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
      for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          asm volatile("st.shared::cluster.f32 [%0], %1;"
                       :: "r"(remote + 128u * ((f * FVQ_MT + mt) * 4 + i)), "f"(acc[f][mt][i]) : "memory");
  }
  cluster_sync();
  if (part > 0) return false;
  if (mine) {
#pragma unroll
    for (int r = 0; r < FVQ_CS - 1; ++r)  // part order: deterministic
#pragma unroll
      for (int f = 0; f < FVQ_FT; ++f)
#pragma unroll
        for (int mt = 0; mt < FVQ_MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[f][mt][i] += cred[r][col][(f * FVQ_MT + mt) * 4 + i][lane];
  }
  return true;
}
#endif
