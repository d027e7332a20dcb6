// What the CUDA AdaGN kernels share: the folded coefficients, Welford states, CTA and cluster
// reductions, and the launchers that adagn_cuda.cu calls (adagn_fused.cu, adagn_stream.cu).
//
//   y = act(z),  z = a[n, c] * (x - mean[n, g]) + b[n, c],
//   a = rstd * gamma * (1 + scale),  b = beta * (1 + scale) + shift            (adagn.h)
// Backward, with dz = grad_y * act'(z), xhat = (x - mean) * rstd, gs = gamma * (1 + scale):
//   S1[n, c] = sum_s dz,  S2[n, c] = sum_s dz * xhat       (dshift = S1, dscale = gamma S2 + beta S1)
//   m1[n, g] = mean over the group of gs * dz,  m2[n, g] = the same of gs * dz * xhat
//   dx = rstd * (gs * dz - m1 - xhat * m2) = k * dz + m2r * (x - mean) + q,
//   k = rstd * gs,  q = -rstd * m1,  m2r = -rstd^2 * m2
//   dweight[c] = sum_n (1 + scale) S2,  dbias[c] = sum_n (1 + scale) S1
#pragma once
#include <ATen/ATen.h>
#include <cooperative_groups.h>

#include "adagn/adagn_plan.h"
#include "common/cuda_utils.cuh"

namespace fastguide::adagn {

using cuda::ParamRef;
using plan::kThreads;
using plan::kWarps;

// gamma, beta [C] and scale, shift [N, C], read in place (float32 or T).
struct Params {
  ParamRef gamma, beta, scale, shift;

  template <typename T>
  __device__ __forceinline__ void coef(int64_t n, int64_t c, float rstd, float& a, float& b) const {
    const float s1 = 1.f + scale.at<T>(n, c, 0.f);
    a = rstd * gamma.at<T>(n, c, 1.f) * s1;
    b = beta.at<T>(n, c, 0.f) * s1 + shift.at<T>(n, c, 0.f);
  }
  template <typename T>
  __device__ __forceinline__ float gs(int64_t n, int64_t c) const {
    return gamma.at<T>(n, c, 1.f) * (1.f + scale.at<T>(n, c, 0.f));
  }
};

// Everything a kernel needs besides its tensors. Plans are in adagn_plan.h.
struct Dims {
  int64_t N, C, S, G, Cg;
  bool channels_last;  // x is [N, S, C] in memory, else [N, C, S]
  float eps;
  Params prm;
};

// ---- Welford states (multi-pass statistics) ---------------------------------------------------

struct Welford {
  float n, mean, m2;
};

// Chan et al.'s pairwise combination: stable for any split of the data; an empty side is exact.
__device__ __forceinline__ Welford chan(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  const float d = b.mean - a.mean, wb = __fdividef(b.n, n);
  return {n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

__device__ __forceinline__ Welford warp_chan(Welford w) {
  for (int off = 16; off > 0; off >>= 1) {
    const Welford o{__shfl_xor_sync(cuda::kFullMask, w.n, off),
                    __shfl_xor_sync(cuda::kFullMask, w.mean, off),
                    __shfl_xor_sync(cuda::kFullMask, w.m2, off)};
    w = chan(w, o);
  }
  return w;
}

// ---- CTA reductions ---------------------------------------------------------------------------

// Sum over the rows ty of a [by x bx] thread grid, V values per thread, stored as
// red[j * kThreads + tid] (tid = ty * bx + tx). A tree with a fixed order: the result, in row 0,
// is the same run after run. Every thread of the CTA must call it.
template <int V>
__device__ __forceinline__ void tree_rows(float* red, int tid, int bx, int by) {
  const int ty = tid / bx;
  int h = 1;
  while (h < by) h *= 2;
  for (h /= 2; h >= 1; h /= 2) {
    if (ty < h && ty + h < by) {
#pragma unroll
      for (int j = 0; j < V; ++j) red[j * kThreads + tid] += red[j * kThreads + tid + h * bx];
    }
    __syncthreads();
  }
}

// The sum of v over the CTA, in a fixed order, returned to every thread. sh: kWarps floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  v = cuda::warp_sum(v);
  const int tid = threadIdx.x;
  if (tid % 32 == 0) sh[tid / 32] = v;
  __syncthreads();
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) t += sh[w];
  __syncthreads();  // sh may be reused
  return t;
}

// ---- thread-block clusters (sm_90) --------------------------------------------------------------
// A unit of K > 1 CTAs is one cluster; its CTAs add their partial sums through distributed
// shared memory. Compiled for sm_90 only: elsewhere K is always 1 (adagn_cuda.cu).

__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}

// Arrive now, wait later: a CTA must not exit while a peer may still read its shared memory.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// Element i of the array `own` (in shared memory) of the cluster's CTA `rank`.
__device__ __forceinline__ float cluster_read(float* own, int rank, int i) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(own, rank)[i];
#else
  return own[i];  // K == 1
#endif
}

// total[i] = sum over the K CTAs of part[i], for i < count, the same fixed order in every CTA.
// Ends with a CTA barrier: total is then visible to all threads. Every thread must call it.
__device__ __forceinline__ void cluster_total(float* part, float* total, int count, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if (K > 1) __trap();  // the host never launches clusters on this code (adagn_fused.cu)
#endif
  if (K > 1) cluster_sync();  // every CTA's part is written
  else __syncthreads();
  for (int i = threadIdx.x; i < count; i += kThreads) {
    float t = 0.f;
    for (int k = 0; k < K; ++k) t += K > 1 ? cluster_read(part, k, i) : part[i];
    total[i] = t;
  }
  __syncthreads();
}

// ---- launchers (host) ---------------------------------------------------------------------------

// Compile-time SILU and pack width V (16 bytes of T, or 1) from run-time values; T in scope.
#define FG_DISPATCH_SILU(flag, ...) \
  [&] {                             \
    if (flag) {                     \
      constexpr bool SILU = true;   \
      __VA_ARGS__();                \
    } else {                        \
      constexpr bool SILU = false;  \
      __VA_ARGS__();                \
    }                               \
  }()

#define FG_DISPATCH_WIDTH(width, ...)   \
  [&] {                                 \
    if (width > 1) {                    \
      constexpr int V = 16 / sizeof(T); \
      __VA_ARGS__();                    \
    } else {                            \
      constexpr int V = 1;              \
      __VA_ARGS__();                    \
    }                                   \
  }()

// Forward: y, mean, rstd; x and y have the same strides. Returns false (nothing launched) when
// the single-pass path does not apply; then forward_multipass.
bool forward_fused(const at::Tensor& x, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd,
                   const Dims& d, bool silu);
void forward_multipass(const at::Tensor& x, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd,
                       const Dims& d, bool silu);

// Backward: dx (x's strides), dscale, dshift, and sums [N, C, 2] = (S1, S2) for the parameter
// gradients (backward_params). mean, rstd: [N, G] float32 from the forward.
bool backward_fused(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                    const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dscale,
                    at::Tensor& dshift, at::Tensor& sums, const Dims& d, bool silu);
void backward_multipass(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                        const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dscale,
                        at::Tensor& dshift, at::Tensor& sums, const Dims& d, bool silu);
void backward_params(const at::Tensor& x, const at::Tensor& sums, at::Tensor& dweight,
                     at::Tensor& dbias, const Dims& d);

// 16-byte packs when the innermost run (C for channels-last, S otherwise) divides into them
// and every pointer is 16-byte aligned; single elements otherwise.
inline int pack_width(int64_t inner, int64_t elem_size, std::initializer_list<const void*> ptrs) {
  const int V = int(16 / elem_size);
  bool ok = inner % V == 0;
  for (const void* p : ptrs) ok = ok && cuda::aligned16(p);
  return ok ? V : 1;
}

inline plan::Problem problem_of(const Dims& d, int V) {
  return {d.N, d.C, d.S, d.G, d.channels_last, V};
}

}  // namespace fastguide::adagn
