// Fused AdaGN on CUDA, designed for channels-last [N, S, C] (contiguous [N, C, S] also works).
//
// Forward, 3 launches:
//   1. stats:    per-(n, split, c) Welford states over a slice of the spatial axis. Splitting S
//                over several blocks keeps the grid full when N * G is small.
//   2. finalize: Chan-combine the states of each (n, group) -> mean, rstd, then fold gamma,
//                beta, scale, shift into a[n, c], b[n, c] (adagn.h).
//   3. apply:    y = act(a * (x - mean) + b), 16-byte packs in and out, coefficients held in
//                registers.
// So each element of x is read once for statistics and once for the output.
//
// Backward, 5 launches: prep (coefficients), sums (per-(n, c) sum of dz and dz*xhat),
// finalize (dscale, dshift and the dx coefficients), param (dweight, dbias over n), dx.
// The formulas are those of adagn_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "adagn/adagn.h"
#include "common/cuda_utils.cuh"

namespace fastguide::adagn {
namespace {

using namespace fastguide::cuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- launch geometry ----------------------------------------------------------------------
//
// channels-last: grid (splits, column tiles, N), block (bx columns of V channels, by rows).
//                A thread owns V channels of one sample and walks its rows s = s0+ty, s0+ty+by...
// contiguous:    grid (row blocks, splits), one warp per (n, c) row slice of V-element packs.

struct Geometry {
  dim3 grid, block;
  int splits;
};

Geometry geometry(const Shape& s, int V, int waves) {
  const int64_t target = int64_t(waves) * num_sms();
  if (s.channels_last) {
    const int cols = int(s.C / V);
    const int bx = std::min(cols, kThreads), by = std::max(1, kThreads / bx);
    const int tiles = int(ceil_div(cols, bx));
    const int64_t want = ceil_div(target, s.N * tiles);
    const int splits = int(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, ceil_div(s.S, by))));
    return {dim3(splits, tiles, unsigned(s.N)), dim3(bx, by), splits};
  }
  const int64_t row_blocks = ceil_div(s.N * s.C, kWarps);
  const int64_t want = ceil_div(target, row_blocks);
  const int splits = int(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, ceil_div(s.S / V, 32))));
  return {dim3(unsigned(row_blocks), splits), dim3(kThreads), splits};
}

// Start and end of slice `k` of `n` items cut into `parts`.
__device__ __forceinline__ int64_t cut(int64_t n, int k, int parts) { return n * k / parts; }

// ---- Welford states -------------------------------------------------------------------------

struct Welford {
  float n, mean, m2;
};

// Chan et al.'s pairwise combination: stable for any split of the data.
__device__ __forceinline__ Welford chan(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  const float d = b.mean - a.mean, wb = b.n / n;
  return {n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

__device__ __forceinline__ Welford warp_chan(Welford w) {
  for (int off = 16; off > 0; off >>= 1) {
    const Welford o{__shfl_xor_sync(kFullMask, w.n, off), __shfl_xor_sync(kFullMask, w.mean, off),
                    __shfl_xor_sync(kFullMask, w.m2, off)};
    w = chan(w, o);
  }
  return w;
}

// Per-(n, c) coefficient planes, each [N, C]: a, b and the group mean (forward), then rstd
// and the dx coefficients k, q, m2r (backward: dx = k*dz + m2r*(x - mean) + q).
enum Plane { kA = 0, kB, kMean, kRstd, kK, kQ, kM2r, kPlanes };
constexpr int kForwardPlanes = 3;

// ---- forward --------------------------------------------------------------------------------

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
stats_cl_kernel(const T* __restrict__ x, int64_t S, int C, int splits, float3* __restrict__ ws) {
  __shared__ float sh_mean[kThreads * V], sh_m2[kThreads * V], sh_n[kThreads];
  const int n = blockIdx.z, split = blockIdx.x, tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.y * blockDim.x + tx;
  const bool active = col < C / V;
  float mean[V] = {}, m2[V] = {}, cnt = 0.f;
  if (active) {
    const int64_t s1 = cut(S, split + 1, splits);
    for (int64_t s = cut(S, split, splits) + ty; s < s1; s += blockDim.y) {
      const Pack<T, V> p = load_pack<T, V>(x + (n * S + s) * C + int64_t(col) * V);
      cnt += 1.f;
      const float inv = 1.f / cnt;  // one reciprocal for all V lanes: they share the count
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float v = float(p.v[j]), d = v - mean[j];
        mean[j] += d * inv;
        m2[j] += d * (v - mean[j]);
      }
    }
  }
  const int t = ty * blockDim.x + tx;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sh_mean[t * V + j] = mean[j];
    sh_m2[t * V + j] = m2[j];
  }
  sh_n[t] = cnt;
  __syncthreads();
  if (ty != 0 || !active) return;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    Welford w{cnt, mean[j], m2[j]};
    for (int r = 1; r < blockDim.y; ++r) {
      const int u = r * blockDim.x + tx;
      w = chan(w, {sh_n[u], sh_mean[u * V + j], sh_m2[u * V + j]});
    }
    ws[(int64_t(n) * splits + split) * C + int64_t(col) * V + j] = make_float3(w.n, w.mean, w.m2);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
stats_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t S, int C, int splits,
                  float3* __restrict__ ws) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, split = blockIdx.y;
  if (row >= rows) return;  // the whole warp leaves together
  const int64_t packs = S / V, p1 = cut(packs, split + 1, splits);
  const T* xr = x + row * S;
  Welford w{0.f, 0.f, 0.f};
  for (int64_t i = cut(packs, split, splits) + lane; i < p1; i += 32) {
    const Pack<T, V> p = load_pack<T, V>(xr + i * V);
    float v[V], m = 0.f, q = 0.f;
#pragma unroll
    for (int j = 0; j < V; ++j) m += (v[j] = float(p.v[j]));
    m /= V;
#pragma unroll
    for (int j = 0; j < V; ++j) q += (v[j] - m) * (v[j] - m);
    w = chan(w, {float(V), m, q});
  }
  w = warp_chan(w);
  if (lane == 0) ws[((row / C) * splits + split) * C + row % C] = make_float3(w.n, w.mean, w.m2);
}

__global__ void finalize_forward_kernel(const float3* __restrict__ ws, int splits, int C, int G,
                                        float eps, Affine<float> aff, float* __restrict__ mean,
                                        float* __restrict__ rstd, float* __restrict__ coef) {
  const int n = blockIdx.x, Cg = C / G;
  const int64_t NC = int64_t(gridDim.x) * C;
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    Welford w{0.f, 0.f, 0.f};
    for (int sp = 0; sp < splits; ++sp)
      for (int c = g * Cg; c < (g + 1) * Cg; ++c) {
        const float3 t = ws[(int64_t(n) * splits + sp) * C + c];
        w = chan(w, {t.x, t.y, t.z});
      }
    mean[n * G + g] = w.mean;
    rstd[n * G + g] = rsqrtf(w.m2 / w.n + eps);
  }
  __syncthreads();  // mean/rstd of this n were written by this block
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int ng = n * G + c / Cg;
    const int64_t nc = int64_t(n) * C + c;
    aff.coef(n, c, C, rstd[ng], coef[kA * NC + nc], coef[kB * NC + nc]);
    coef[kMean * NC + nc] = mean[ng];
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
apply_cl_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t S, int C, int splits,
                const float* __restrict__ coef, int64_t NC) {
  const int n = blockIdx.z, split = blockIdx.x;
  const int col = blockIdx.y * blockDim.x + threadIdx.x;
  if (col >= C / V) return;
  float a[V], b[V], mu[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t nc = int64_t(n) * C + col * V + j;
    a[j] = coef[kA * NC + nc], b[j] = coef[kB * NC + nc], mu[j] = coef[kMean * NC + nc];
  }
  const int64_t s1 = cut(S, split + 1, splits);
  for (int64_t s = cut(S, split, splits) + threadIdx.y; s < s1; s += blockDim.y) {
    const int64_t off = (n * S + s) * C + int64_t(col) * V;
    const Pack<T, V> p = load_pack<T, V>(x + off);
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = T(act<SILU>(a[j] * (float(p.v[j]) - mu[j]) + b[j]));
    store_pack<T, V>(y + off, o);
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
apply_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t S, int splits,
                  const float* __restrict__ coef) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, split = blockIdx.y;
  if (row >= rows) return;
  const float a = coef[kA * rows + row], b = coef[kB * rows + row], mu = coef[kMean * rows + row];
  const int64_t packs = S / V, p1 = cut(packs, split + 1, splits);
  for (int64_t i = cut(packs, split, splits) + lane; i < p1; i += 32) {
    const int64_t off = row * S + i * V;
    const Pack<T, V> p = load_pack<T, V>(x + off);
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = T(act<SILU>(a * (float(p.v[j]) - mu) + b));
    store_pack<T, V>(y + off, o);
  }
}

// ---- backward -------------------------------------------------------------------------------

__global__ void prep_backward_kernel(const float* __restrict__ mean, const float* __restrict__ rstd,
                                     int C, int G, Affine<float> aff, float* __restrict__ coef) {
  const int n = blockIdx.x, Cg = C / G;
  const int64_t NC = int64_t(gridDim.x) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t nc = int64_t(n) * C + c;
    const float mu = mean[n * G + c / Cg], r = rstd[n * G + c / Cg];
    aff.coef(n, c, C, r, coef[kA * NC + nc], coef[kB * NC + nc]);
    coef[kMean * NC + nc] = mu;
    coef[kRstd * NC + nc] = r;
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
sums_cl_kernel(const T* __restrict__ dy, const T* __restrict__ x, int64_t S, int C, int splits,
               const float* __restrict__ coef, int64_t NC, float2* __restrict__ ws) {
  __shared__ float sh1[kThreads * V], sh2[kThreads * V];
  const int n = blockIdx.z, split = blockIdx.x, tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.y * blockDim.x + tx;
  const bool active = col < C / V;
  float a[V], b[V], mu[V], r[V], s1[V] = {}, s2[V] = {};
  if (active) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t nc = int64_t(n) * C + col * V + j;
      a[j] = coef[kA * NC + nc], b[j] = coef[kB * NC + nc];
      mu[j] = coef[kMean * NC + nc], r[j] = coef[kRstd * NC + nc];
    }
    const int64_t send = cut(S, split + 1, splits);
    for (int64_t s = cut(S, split, splits) + ty; s < send; s += blockDim.y) {
      const int64_t off = (n * S + s) * C + int64_t(col) * V;
      const Pack<T, V> px = load_pack<T, V>(x + off), pg = load_pack<T, V>(dy + off);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float xc = float(px.v[j]) - mu[j];
        const float dz = float(pg.v[j]) * act_grad<SILU>(a[j] * xc + b[j]);
        s1[j] += dz;
        s2[j] += dz * xc * r[j];
      }
    }
  }
  const int t = ty * blockDim.x + tx;
#pragma unroll
  for (int j = 0; j < V; ++j) sh1[t * V + j] = s1[j], sh2[t * V + j] = s2[j];
  __syncthreads();
  if (ty != 0 || !active) return;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float t1 = s1[j], t2 = s2[j];
    for (int row = 1; row < blockDim.y; ++row) {
      t1 += sh1[(row * blockDim.x + tx) * V + j];
      t2 += sh2[(row * blockDim.x + tx) * V + j];
    }
    ws[(int64_t(n) * splits + split) * C + int64_t(col) * V + j] = make_float2(t1, t2);
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
sums_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, int64_t rows, int64_t S, int C,
                 int splits, const float* __restrict__ coef, float2* __restrict__ ws) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, split = blockIdx.y;
  if (row >= rows) return;
  const float a = coef[kA * rows + row], b = coef[kB * rows + row];
  const float mu = coef[kMean * rows + row], r = coef[kRstd * rows + row];
  const int64_t packs = S / V, p1 = cut(packs, split + 1, splits);
  float s1 = 0.f, s2 = 0.f;
  for (int64_t i = cut(packs, split, splits) + lane; i < p1; i += 32) {
    const int64_t off = row * S + i * V;
    const Pack<T, V> px = load_pack<T, V>(x + off), pg = load_pack<T, V>(dy + off);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xc = float(px.v[j]) - mu;
      const float dz = float(pg.v[j]) * act_grad<SILU>(a * xc + b);
      s1 += dz;
      s2 += dz * xc * r;
    }
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) ws[((row / C) * splits + split) * C + row % C] = make_float2(s1, s2);
}

// Per (n, c): S1, S2 -> dshift, dscale; per (n, g): m1, m2 -> k, q, m2r. One block per n.
__global__ void finalize_backward_kernel(const float2* __restrict__ ws, int splits, int64_t S,
                                         int C, int G, Affine<float> aff, float2* __restrict__ sums,
                                         float* __restrict__ dscale, float* __restrict__ dshift,
                                         float* __restrict__ coef) {
  const int n = blockIdx.x, Cg = C / G;
  const int64_t NC = int64_t(gridDim.x) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float t1 = 0.f, t2 = 0.f;
    for (int sp = 0; sp < splits; ++sp) {
      const float2 v = ws[(int64_t(n) * splits + sp) * C + c];
      t1 += v.x, t2 += v.y;
    }
    const int64_t nc = int64_t(n) * C + c;
    sums[nc] = make_float2(t1, t2);
    const float gam = aff.gamma ? aff.gamma[c] : 1.f, bet = aff.beta ? aff.beta[c] : 0.f;
    dshift[nc] = t1;
    dscale[nc] = gam * t2 + bet * t1;
  }
  __syncthreads();  // sums of this n were written by this block
  const float inv_m = 1.f / float(int64_t(Cg) * S);
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    float m1 = 0.f, m2 = 0.f;
    for (int c = g * Cg; c < (g + 1) * Cg; ++c) {
      const int64_t nc = int64_t(n) * C + c;
      const float gs = (aff.gamma ? aff.gamma[c] : 1.f) * (aff.scale ? 1.f + aff.scale[nc] : 1.f);
      m1 += gs * sums[nc].x;
      m2 += gs * sums[nc].y;
    }
    m1 *= inv_m, m2 *= inv_m;
    for (int c = g * Cg; c < (g + 1) * Cg; ++c) {
      const int64_t nc = int64_t(n) * C + c;
      const float gs = (aff.gamma ? aff.gamma[c] : 1.f) * (aff.scale ? 1.f + aff.scale[nc] : 1.f);
      const float r = coef[kRstd * NC + nc];
      coef[kK * NC + nc] = r * gs;
      coef[kQ * NC + nc] = -r * m1;
      coef[kM2r * NC + nc] = -r * r * m2;
    }
  }
}

__global__ void param_grad_kernel(const float2* __restrict__ sums, int64_t N, int C,
                                  const float* __restrict__ scale, float* __restrict__ dweight,
                                  float* __restrict__ dbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float dw = 0.f, db = 0.f;
  for (int64_t n = 0; n < N; ++n) {
    const float s1 = scale ? 1.f + scale[n * C + c] : 1.f;
    const float2 v = sums[n * C + c];
    dw += s1 * v.y;
    db += s1 * v.x;
  }
  dweight[c] = dw;
  dbias[c] = db;
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
dx_cl_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, int64_t S,
             int C, int splits, const float* __restrict__ coef, int64_t NC) {
  const int n = blockIdx.z, split = blockIdx.x;
  const int col = blockIdx.y * blockDim.x + threadIdx.x;
  if (col >= C / V) return;
  float a[V], b[V], mu[V], k[V], q[V], m2r[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t nc = int64_t(n) * C + col * V + j;
    a[j] = coef[kA * NC + nc], b[j] = coef[kB * NC + nc], mu[j] = coef[kMean * NC + nc];
    k[j] = coef[kK * NC + nc], q[j] = coef[kQ * NC + nc], m2r[j] = coef[kM2r * NC + nc];
  }
  const int64_t send = cut(S, split + 1, splits);
  for (int64_t s = cut(S, split, splits) + threadIdx.y; s < send; s += blockDim.y) {
    const int64_t off = (n * S + s) * C + int64_t(col) * V;
    const Pack<T, V> px = load_pack<T, V>(x + off), pg = load_pack<T, V>(dy + off);
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xc = float(px.v[j]) - mu[j];
      const float dz = float(pg.v[j]) * act_grad<SILU>(a[j] * xc + b[j]);
      o.v[j] = T(k[j] * dz + m2r[j] * xc + q[j]);
    }
    store_pack<T, V>(dx + off, o);
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
dx_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, int64_t rows,
               int64_t S, int splits, const float* __restrict__ coef) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, split = blockIdx.y;
  if (row >= rows) return;
  const float a = coef[kA * rows + row], b = coef[kB * rows + row], mu = coef[kMean * rows + row];
  const float k = coef[kK * rows + row], q = coef[kQ * rows + row], m2r = coef[kM2r * rows + row];
  const int64_t packs = S / V, p1 = cut(packs, split + 1, splits);
  for (int64_t i = cut(packs, split, splits) + lane; i < p1; i += 32) {
    const int64_t off = row * S + i * V;
    const Pack<T, V> px = load_pack<T, V>(x + off), pg = load_pack<T, V>(dy + off);
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xc = float(px.v[j]) - mu;
      const float dz = float(pg.v[j]) * act_grad<SILU>(a * xc + b);
      o.v[j] = T(k * dz + m2r * xc + q);
    }
    store_pack<T, V>(dx + off, o);
  }
}

// ---- host side --------------------------------------------------------------------------------

// 16-byte packs when the innermost run (C for channels-last, S otherwise) divides into them
// and every pointer is 16-byte aligned; single elements otherwise.
template <typename T>
int pack_width(const Shape& s, std::initializer_list<const void*> ptrs) {
  constexpr int V = 16 / sizeof(T);
  const int64_t inner = s.channels_last ? s.C : s.S;
  bool ok = inner % V == 0;
  for (const void* p : ptrs) ok = ok && aligned16(p);
  return ok ? V : 1;
}

#define FG_DISPATCH_PACK(width, ...)           \
  [&] {                                        \
    if (width == 16 / int(sizeof(scalar_t))) { \
      constexpr int V = 16 / sizeof(scalar_t); \
      __VA_ARGS__();                           \
    } else {                                   \
      constexpr int V = 1;                     \
      __VA_ARGS__();                           \
    }                                          \
  }()

#define FG_DISPATCH_BOOL(flag, NAME, ...) \
  [&] {                                   \
    if (flag) {                           \
      constexpr bool NAME = true;         \
      __VA_ARGS__();                      \
    } else {                              \
      constexpr bool NAME = false;        \
      __VA_ARGS__();                      \
    }                                     \
  }()

void check_cuda_inputs(const at::Tensor& x) {
  TORCH_CHECK(x.size(0) <= 65535, "group_norm_act: the CUDA kernels take batches of at most 65535, got ", x.size(0));
  TORCH_CHECK(x.scalar_type() != at::kDouble,
              "group_norm_act: float64 is supported on the CPU only; use float32, float16 or bfloat16 on CUDA");
  TORCH_CHECK(x.numel() < (int64_t(1) << 40), "group_norm_act: x is too large");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& x_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu, double eps) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  check_cuda_inputs(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::zeros({s.N, G}, fopts), rstd = at::zeros({s.N, G}, fopts);
  if (x.numel() == 0) return {y, mean, rstd};
  const at::Tensor w = as_acc(weight, at::kFloat), bi = as_acc(bias, at::kFloat),
                   sc = as_acc(scale, at::kFloat), sh = as_acc(shift, at::kFloat);
  const Affine<float> aff = affine_of<float>(w, bi, sc, sh);
  at::Tensor coef = at::empty({kForwardPlanes, s.N, s.C}, fopts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_cuda", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int width = pack_width<scalar_t>(s, {xp, yp});
    FG_DISPATCH_PACK(width, [&] {
      const Geometry geo = geometry(s, V, 4);
      at::Tensor ws = at::empty({s.N, geo.splits, s.C, 3}, fopts);
      auto* wsp = reinterpret_cast<float3*>(ws.data_ptr<float>());
      if (s.channels_last)
        stats_cl_kernel<scalar_t, V><<<geo.grid, geo.block, 0, stream>>>(xp, s.S, int(s.C), geo.splits, wsp);
      else
        stats_rows_kernel<scalar_t, V><<<geo.grid, geo.block, 0, stream>>>(xp, s.N * s.C, s.S, int(s.C), geo.splits, wsp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      finalize_forward_kernel<<<unsigned(s.N), kThreads, 0, stream>>>(
          wsp, geo.splits, int(s.C), int(G), float(eps), aff, mean.data_ptr<float>(),
          rstd.data_ptr<float>(), coef.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      FG_DISPATCH_BOOL(silu, SILU, [&] {
        if (s.channels_last)
          apply_cl_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              xp, yp, s.S, int(s.C), geo.splits, coef.data_ptr<float>(), s.N * s.C);
        else
          apply_rows_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              xp, yp, s.N * s.C, s.S, geo.splits, coef.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  check_cuda_inputs(x_in);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type() &&
                  dy_in.device() == x_in.device(),
              "group_norm_act_backward: grad_y must match x in shape, dtype and device");
  TORCH_CHECK(mean_in.sizes() == at::IntArrayRef({s.N, G}) && mean_in.scalar_type() == at::kFloat &&
                  rstd_in.sizes() == mean_in.sizes() && rstd_in.scalar_type() == at::kFloat,
              "group_norm_act_backward: mean and rstd must be float32 [N, num_groups]");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const at::Tensor dy = same_layout(dy_in, x);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::zeros({s.C}, fopts), db = at::zeros({s.C}, fopts);
  at::Tensor dsc = at::zeros({s.N, s.C}, fopts), dsh = at::zeros({s.N, s.C}, fopts);
  if (x.numel() == 0) return {dx, dw, db, dsc, dsh};
  const at::Tensor w = as_acc(weight, at::kFloat), bi = as_acc(bias, at::kFloat),
                   sc = as_acc(scale, at::kFloat), sh = as_acc(shift, at::kFloat);
  const Affine<float> aff = affine_of<float>(w, bi, sc, sh);
  const int64_t NC = s.N * s.C;
  at::Tensor coef = at::empty({kPlanes, s.N, s.C}, fopts);
  at::Tensor sums = at::empty({s.N, s.C, 2}, fopts);
  float* cp = coef.data_ptr<float>();
  auto* sump = reinterpret_cast<float2*>(sums.data_ptr<float>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  prep_backward_kernel<<<unsigned(s.N), kThreads, 0, stream>>>(
      mean.data_ptr<float>(), rstd.data_ptr<float>(), int(s.C), int(G), aff, cp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_backward_cuda", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const int width = pack_width<scalar_t>(s, {xp, dyp, dxp});
    FG_DISPATCH_PACK(width, [&] {
      const Geometry geo = geometry(s, V, 4);
      at::Tensor ws = at::empty({s.N, geo.splits, s.C, 2}, fopts);
      auto* wsp = reinterpret_cast<float2*>(ws.data_ptr<float>());
      FG_DISPATCH_BOOL(silu, SILU, [&] {
        if (s.channels_last)
          sums_cl_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              dyp, xp, s.S, int(s.C), geo.splits, cp, NC, wsp);
        else
          sums_rows_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              dyp, xp, NC, s.S, int(s.C), geo.splits, cp, wsp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        finalize_backward_kernel<<<unsigned(s.N), kThreads, 0, stream>>>(
            wsp, geo.splits, s.S, int(s.C), int(G), aff, sump, dsc.data_ptr<float>(),
            dsh.data_ptr<float>(), cp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        param_grad_kernel<<<unsigned(ceil_div(s.C, kThreads)), kThreads, 0, stream>>>(
            sump, s.N, int(s.C), aff.scale, dw.data_ptr<float>(), db.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (s.channels_last)
          dx_cl_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              dyp, xp, dxp, s.S, int(s.C), geo.splits, cp, NC);
        else
          dx_rows_kernel<scalar_t, V, SILU><<<geo.grid, geo.block, 0, stream>>>(
              dyp, xp, dxp, NC, s.S, geo.splits, cp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {dx, dw, db, dsc, dsh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CUDA, m) {
  m.impl("group_norm_act", &forward_cuda);
  m.impl("group_norm_act_backward", &backward_cuda);
}

}  // namespace fastguide::adagn
