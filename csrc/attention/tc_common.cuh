// Device building blocks of the tensor-core attention kernels: PTX wrappers (cp.async, ldmatrix,
// mma.sync m16n8k16, ex2), tile copies between global and swizzled shared memory, warp-level
// fragment loads. Index maths lives in tc_layout.h, parameter blocks in cuda_params.h.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention/cuda_params.h"
#include "attention/tc_layout.h"

namespace fastguide::attention::tc {

// ---- PTX ----------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src then is not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
// 4 bytes (one fp32), zero-filled when !valid.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <bool kTrans>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += A B, A 16 x 16 (row), B 16 x 8 (col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float exp2_approx(float x) {  // 2^x; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as one register of 16-bit values, lo in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <typename T>
__device__ __forceinline__ uint16_t bits16(float x) {
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else
    return __half_as_ushort(__float2half_rn(x));
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---- tiles --------------------------------------------------------------------------------------

// Calls f(stored offset, global offset, valid) for this thread's 16-byte chunks of a tile that
// starts at seq0 (CopyMap in tc_layout.h). In global memory the tile's stored (row, col) is
// row * stride + col past its (seq0, dim 0), stride being the global stride of stored rows
// (tokens-major: position stride; channel-major: channel stride); the host keeps it below
// kMaxTcStride, so offsets inside a tile fit 32 bits. Chunks at seq >= L or dim >= d are not
// valid (d % 8 == 0; in channel-major memory L % 8 == 0, so chunks never straddle L).
template <class Tile, int kThreads, class F>
__device__ __forceinline__ void for_each_chunk(int64_t stride, int seq0, int L, int d, F&& f) {
  using M = CopyMap<Tile, kThreads>;
  const int tid = threadIdx.x, s32 = int(stride);
  const int rows = Tile::tokens ? L - seq0 : d, cols = Tile::tokens ? d : L - seq0;
#pragma unroll
  for (int st = 0; st < M::steps; ++st) {
    const int r = M::row(tid, st);
    if (!M::in_tile(r)) continue;
#pragma unroll
    for (int k = 0; k < M::per_row; ++k) {
      const int c = M::col(tid, k);
      f(M::S::offset(r, c), r * s32 + c, r < rows && c < cols);
    }
  }
}

template <bool kTokens, typename T>
__device__ __forceinline__ T* tile_origin(T* part, int64_t stride, int seq0) {
  return part + (kTokens ? seq0 * stride : seq0);
}

// Rows [seq0, seq0 + Tile::seq) x dims [0, Tile::dim) of one head part (part: its seq 0, dim 0)
// into a shared tile with cp.async; chunks beyond L or d are zero-filled, not read.
template <class Tile, int kThreads, typename T>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* part, int64_t stride, int seq0,
                                          int L, int d) {
  const T* base = tile_origin<Tile::tokens>(part, stride, seq0);
  for_each_chunk<Tile, kThreads>(stride, seq0, L, d, [&](int so, int go, bool valid) {
    cp_async16(dst + 2 * so, valid ? base + go : part, valid);
  });
}

// The inverse: a shared tile to global memory, 16 bytes a chunk, skipping seq >= L and dim >= d.
template <class Tile, int kThreads, typename T>
__device__ __forceinline__ void store_tile(const unsigned char* src, T* part, int64_t stride, int seq0,
                                           int L, int d) {
  T* base = tile_origin<Tile::tokens>(part, stride, seq0);
  for_each_chunk<Tile, kThreads>(stride, seq0, L, d, [&](int so, int go, bool valid) {
    if (valid) *reinterpret_cast<uint4*>(base + go) = *reinterpret_cast<const uint4*>(src + 2 * so);
  });
}

// The streamed operand of a kernel goes through kStages shared buffers. Before tile j of n is
// computed: with 2 stages, tile j + 1 starts loading into the other buffer (load(j + 1, stage)
// issues its cp.async) and tile j is waited for; with 1 stage, tile j (issued at the end of the
// previous step) is waited for. The barrier then publishes the tile to every warp.
template <int kStages, class Load>
__device__ __forceinline__ void pipeline_enter(int j, int n, Load&& load) {
  static_assert(kStages == 1 || kStages == 2, "stages");
  if constexpr (kStages == 2) {
    if (j + 1 < n) load(j + 1, (j + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}
// After tile j: every warp is done with its buffer before it is refilled.
template <int kStages, class Load>
__device__ __forceinline__ void pipeline_leave(int j, int n, Load&& load) {
  __syncthreads();
  if constexpr (kStages == 1) {
    if (j + 1 < n) load(j + 1, 0);
    cp_async_commit();
  }
}

// A warp's 16 x (8 kTiles) accumulator block (rows seq0 + 0..15 of the tile, dims 0..) written
// into a shared tile as 16-bit values, row g scaled by mul[0] and row g + 8 by mul[1].
template <class Tile, typename T, int kTiles>
__device__ __forceinline__ void stage_acc(unsigned char* tile, const float (&acc)[kTiles][4],
                                          int seq0, const float (&mul)[2], int lane) {
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int s = seq0 + acc_row(lane, 2 * r), dd = 8 * nt + acc_col(lane, 2 * r);
      const float lo = acc[nt][2 * r] * mul[r], hi = acc[nt][2 * r + 1] * mul[r];
      if constexpr (Tile::tokens) {
        *reinterpret_cast<uint32_t*>(tile + 2 * Tile::offset(s, dd)) = pack2<T>(lo, hi);
      } else {
        *reinterpret_cast<uint16_t*>(tile + 2 * Tile::offset(s, dd)) = bits16<T>(lo);
        *reinterpret_cast<uint16_t*>(tile + 2 * Tile::offset(s, dd + 1)) = bits16<T>(hi);
      }
    }
}

// Fragment loads (tc_layout.h explains the three kinds). base is the tile's shared address.
template <class Tile>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t base, int m0, int k0, int lane) {
  ldsm_x4<Tile::a_trans>(a, base + 2 * Tile::a_offset(m0, k0, lane));
}
template <class Tile>
__device__ __forceinline__ void load_bt(uint32_t (&b)[4], uint32_t base, int n0, int k0, int lane) {
  ldsm_x4<Tile::bt_trans>(b, base + 2 * Tile::bt_offset(n0, k0, lane));
}
template <class Tile>
__device__ __forceinline__ void load_bn(uint32_t (&b)[4], uint32_t base, int k0, int n0, int lane) {
  ldsm_x4<Tile::bn_trans>(b, base + 2 * Tile::bn_offset(k0, n0, lane));
}

// acc[16 x 8 kN] += X_w[16 rows from m0 of ATile] . Y^T, Y = rows [0, 8 kN) of BTile, over Dp.
template <typename T, class ATile, class BTile, int kN>
__device__ __forceinline__ void gemm_xyT(float (&acc)[kN][4], uint32_t a_base, int m0, uint32_t b_base,
                                         int lane) {
  static_assert(ATile::dim == BTile::dim && kN % 2 == 0 && 8 * kN == BTile::seq, "shapes");
#pragma unroll
  for (int kk = 0; kk < ATile::dim / 16; ++kk) {
    uint32_t a[4];
    load_a<ATile>(a, a_base, m0, 16 * kk, lane);
#pragma unroll
    for (int nn = 0; nn < kN / 2; ++nn) {
      uint32_t b[4];
      load_bt<BTile>(b, b_base, 16 * nn, 16 * kk, lane);
      mma<T>(acc[2 * nn], a, b[0], b[1]);
      mma<T>(acc[2 * nn + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 x Dp] += P[16 x Tile::seq] . Y, P given as fp32 accumulators (rounded to T here), Y the
// whole tile.
template <typename T, class Tile, int kP, int kD>
__device__ __forceinline__ void gemm_pY(float (&acc)[kD][4], const float (&p)[kP][4], uint32_t base,
                                        int lane) {
  static_assert(8 * kP == Tile::seq && 8 * kD == Tile::dim && kD % 2 == 0, "shapes");
#pragma unroll
  for (int kk = 0; kk < kP / 2; ++kk) {
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float(&src)[4] = p[a_from_acc_tile(kk, r)];
      a[r] = pack2<T>(src[a_from_acc_elem(r)], src[a_from_acc_elem(r) + 1]);
    }
#pragma unroll
    for (int dn = 0; dn < kD / 2; ++dn) {
      uint32_t b[4];
      load_bn<Tile>(b, base, 16 * kk, 16 * dn, lane);
      mma<T>(acc[2 * dn], a, b[0], b[1]);
      mma<T>(acc[2 * dn + 1], a, b[2], b[3]);
    }
  }
}

template <int kN>
__device__ __forceinline__ void zero(float (&acc)[kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

}  // namespace fastguide::attention::tc
