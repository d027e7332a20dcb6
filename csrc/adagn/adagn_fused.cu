// Single-pass AdaGN on CUDA: a unit (adagn_plan.h) is held in registers by K CTAs, one
// thread-block cluster on sm_90, so x is read once and y written once (backward: x and grad_y
// read once, grad_x written once). The statistics are exact two-pass sums over the registers:
// sum -> mean, then sum (x - mean)^2 -> rstd, each reduced over the CTA in shared memory and over
// the cluster through distributed shared memory.
//
// Cost model, bf16 channels-last [32, 256, 64, 64] (64 MiB): forward moves 2 * 64 MiB, backward
// 3 * 64 MiB, ~10 FLOP per element forward and ~25 backward (far under any ridge point). At the
// HBM bandwidth the floor is 40 us forward / 60 us backward on an H100 (3.35 TB/s), 28 / 42 us on
// an H200 (4.8 TB/s). At batch 1 ([1, 256, 64, 64], 2 MiB) the floor is 1.3 / 0.9 us: latency
// decides there (one launch and two cluster reductions here, against the 7 or so launches of the
// eager chain). benchmarks/bench_adagn.py reports every ADM shape against these floors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>

#include "adagn/adagn_cuda.cuh"

namespace fastguide::adagn {
namespace {

using namespace fastguide::cuda;
using plan::cl_offset;
using plan::kBwdRows;
using plan::kFwdRows;

// The plan in the form the kernels read.
struct FusedGeo {
  int64_t K, nr, RC, CT;
  int bx, by;
};

// Groups in a tile: CT / Cg <= kThreads * V / 2 (the plans take groups of at least 2 channels).
constexpr int kMaxGroupsFor(int V) { return kThreads * V / 2; }

// Channels-last: thread (tx, ty) of CTA k of unit (n, tile) holds rows k*RC + ty + r*by of
// channels c0 .. c0 + V - 1, for r < rows (0 for a thread past C or past the last row).
struct ClThread {
  int tid, tx, ty, rows;
  int64_t c0, row0;
  bool cols;

  __device__ ClThread(const Dims& d, const FusedGeo& f, int64_t tile, int64_t k) {
    tid = threadIdx.x;
    tx = tid % f.bx;
    ty = tid / f.bx;
    c0 = plan::cl_first_channel(tile, f.CT, tx, int(f.CT / f.bx));
    row0 = k * f.RC + ty;
    cols = ty < f.by && c0 < d.C;
    rows = int(plan::fused_rows_held(row0, d.S, f.nr, f.by, cols));
  }
  __device__ bool ok(int r) const { return r < rows; }
};

// Per-group sums of the per-channel CTA totals in row 0 of red (tree_rows): out[gl] for the
// tile's GT groups, a warp per group. Channels past C (a partial last tile) count as zero.
// With weights (backward), channel c contributes weight(c) * value.
template <int V, typename W>
__device__ void group_sums(const float* red, float* out, int64_t GT, int64_t Cg, int64_t c_tile,
                           int64_t C, W weight) {
  const int lane = threadIdx.x % 32;
  for (int64_t gl = threadIdx.x / 32; gl < GT; gl += kWarps) {
    float t = 0.f;
    for (int64_t cl = gl * Cg + lane; cl < (gl + 1) * Cg; cl += 32)
      if (c_tile + cl < C) t += weight(c_tile + cl) * red[(cl % V) * kThreads + cl / V];
    t = warp_sum(t);
    if (lane == 0) out[gl] = t;
  }
}

struct One {
  __device__ float operator()(int64_t) const { return 1.f; }
};

// The per-group totals over the unit of this thread's per-channel sums s: CTA tree, a warp per
// group, then the cluster. total[gl] for the tile's GT groups; every thread must call it.
template <int V>
__device__ void unit_group_totals(const float (&s)[V], float* red, float* part, float* total,
                                  const ClThread& th, const Dims& d, const FusedGeo& f, int64_t c_tile) {
#pragma unroll
  for (int j = 0; j < V; ++j) red[j * kThreads + th.tid] = s[j];
  __syncthreads();
  tree_rows<V>(red, th.tid, f.bx, f.by);
  const int64_t GT = f.CT / d.Cg;
  group_sums<V>(red, part, GT, d.Cg, c_tile, d.C, One{});
  cluster_total(part, total, int(GT), int(f.K));
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
fused_cl_forward(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ mean_out,
                 float* __restrict__ rstd_out, Dims d, FusedGeo f) {
  __shared__ float red[V * kThreads];
  __shared__ float part[2][kMaxGroupsFor(V)], total[2][kMaxGroupsFor(V)];
  const int64_t k = blockIdx.x, tile = blockIdx.y, n = blockIdx.z;
  const ClThread th(d, f, tile, k);
  const int64_t step = int64_t(f.by) * d.C, GT = f.CT / d.Cg, c_tile = tile * f.CT;
  const int64_t off = cl_offset(n, th.row0, th.c0, d.S, d.C);

  using W = Words<T>;
  W v[kFwdRows];
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) v[r] = th.ok(r) ? W::load(x + off + r * step) : W{};
  T* yp = y + off;

  // Pass 1: the mean of each group (packs past the end are zeros).
  float s[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s[j] = 0.f;
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r)
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] += v[r].get(j);
  unit_group_totals<V>(s, red, part[0], total[0], th, d, f, c_tile);
  const float cnt = float(d.Cg) * float(d.S);
  float mu[V];
#pragma unroll
  for (int j = 0; j < V; ++j) mu[j] = total[0][(th.tx * V + j) / d.Cg] / cnt;

  // Pass 2: the variance about that mean (red is free: cluster_total ended with a barrier).
#pragma unroll
  for (int j = 0; j < V; ++j) s[j] = 0.f;
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) {
    keep_packed(v[r].w);
    if (th.ok(r)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float dv = v[r].get(j) - mu[j];
        s[j] += dv * dv;
      }
    }
  }
  unit_group_totals<V>(s, red, part[1], total[1], th, d, f, c_tile);
  if (f.K > 1) cluster_arrive();  // this CTA reads no peer's shared memory from here on

  if (k == 0)
    for (int64_t gl = th.tid; gl < GT; gl += kThreads) {
      const int64_t g = c_tile / d.Cg + gl;
      if (g < d.G) {
        mean_out[n * d.G + g] = total[0][gl] / cnt;
        rstd_out[n * d.G + g] = rsqrtf(total[1][gl] / cnt + d.eps);
      }
    }

  float a[V], b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float rstd = rsqrtf(total[1][(th.tx * V + j) / d.Cg] / cnt + d.eps);
    a[j] = 0.f, b[j] = 0.f;
    if (th.cols) d.prm.template coef<T>(n, th.c0 + j, rstd, a[j], b[j]);
  }
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) {
    keep_packed(v[r].w);
    if (th.ok(r)) {
      float o[V];
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = act<SILU>(a[j] * (v[r].get(j) - mu[j]) + b[j]);
      W::of(o).store(yp);
    }
    yp += step;
  }
  if (f.K > 1) cluster_wait();
}

// Contiguous: CTA k of unit (n, g) holds packs k*RC + tid + r*kThreads, r < nr, of the slab.
template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
fused_rows_forward(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ mean_out,
                   float* __restrict__ rstd_out, Dims d, FusedGeo f) {
  __shared__ float sh[kWarps], part[2], total[2];
  __shared__ float ta[plan::kTable], tb[plan::kTable];
  const int tid = threadIdx.x;
  const int64_t k = blockIdx.x, g = blockIdx.y, n = blockIdx.z;
  const int64_t Mp = d.Cg * d.S / V, p0 = k * f.RC + tid;
  const int64_t off = plan::rows_offset(n, g, p0, d.Cg, d.S, d.C, V);
  auto ok = [&](int r) { return r < f.nr && p0 + int64_t(r) * kThreads < Mp; };

  using W = Words<T>;
  W v[kFwdRows];
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) v[r] = ok(r) ? W::load(x + off + int64_t(r) * kThreads * V) : W{};

  float s = 0.f;
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r)
#pragma unroll
    for (int j = 0; j < V; ++j) s += v[r].get(j);  // packs past the end are zeros
  s = block_sum(s, sh);
  if (tid == 0) part[0] = s;
  cluster_total(&part[0], &total[0], 1, int(f.K));
  const float cnt = float(d.Cg) * float(d.S), mean = total[0] / cnt;

  s = 0.f;
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) {
    keep_packed(v[r].w);
    if (ok(r)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float dv = v[r].get(j) - mean;
        s += dv * dv;
      }
    }
  }
  s = block_sum(s, sh);
  if (tid == 0) part[1] = s;
  cluster_total(&part[1], &total[1], 1, int(f.K));
  if (f.K > 1) cluster_arrive();
  const float rstd = rsqrtf(total[1] / cnt + d.eps);
  if (k == 0 && tid == 0) mean_out[n * d.G + g] = mean, rstd_out[n * d.G + g] = rstd;
  for (int64_t cl = tid; cl < d.Cg; cl += kThreads) d.prm.template coef<T>(n, g * d.Cg + cl, rstd, ta[cl], tb[cl]);
  __syncthreads();

  const int S = int(d.S);  // the slab holds at most kMaxCluster * kThreads * kFwdRows packs
#pragma unroll
  for (int r = 0; r < kFwdRows; ++r) {
    keep_packed(v[r].w);
    if (ok(r)) {
      const int cl = int(p0 + r * kThreads) * V / S;  // a pack never straddles two channels
      float o[V];
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = act<SILU>(ta[cl] * (v[r].get(j) - mean) + tb[cl]);
      W::of(o).store(y + off + int64_t(r) * kThreads * V);
    }
  }
  if (f.K > 1) cluster_wait();
}

// Backward, channels-last. Per channel: S1, S2 (CTA tree, then the cluster for the outputs);
// per group: m1, m2 (weighted by gs, reduced over the cluster); then dx from the registers.
template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
fused_cl_backward(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                  const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ dscale,
                  float* __restrict__ dshift, float* __restrict__ sums, Dims d, FusedGeo f) {
  __shared__ float red1[V * kThreads], red2[V * kThreads];
  __shared__ float part[2 * kMaxGroupsFor(V)], total[2 * kMaxGroupsFor(V)];
  const int64_t k = blockIdx.x, tile = blockIdx.y, n = blockIdx.z;
  const ClThread th(d, f, tile, k);
  const int64_t step = int64_t(f.by) * d.C, GT = f.CT / d.Cg, c_tile = tile * f.CT;
  const int64_t off = cl_offset(n, th.row0, th.c0, d.S, d.C);

  using W = Words<T>;
  W xv[kBwdRows], gv[kBwdRows];
#pragma unroll
  for (int r = 0; r < kBwdRows; ++r) {
    const bool ok = th.ok(r);
    xv[r] = ok ? W::load(x + off + r * step) : W{};
    gv[r] = ok ? W::load(dy + off + r * step) : W{};
  }
  // The coefficients are read again after the reductions (their barriers keep the compiler from
  // holding them across): registers are this kernel's limit.
  float a[V], b[V], mu[V], rs[V];
  const auto coefs = [&] {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t ng = n * d.G + (th.cols ? (th.c0 + j) / d.Cg : 0);
      mu[j] = mean[ng], rs[j] = rstd[ng], a[j] = 0.f, b[j] = 0.f;
      if (th.cols) d.prm.template coef<T>(n, th.c0 + j, rs[j], a[j], b[j]);
    }
  };
  coefs();
  float s1[V], s2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s1[j] = 0.f, s2[j] = 0.f;
#pragma unroll
  for (int r = 0; r < kBwdRows; ++r)
    if (th.ok(r)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float xc = xv[r].get(j) - mu[j];
        const float dz = gv[r].get(j) * act_grad<SILU>(a[j] * xc + b[j]);
        s1[j] += dz;
        s2[j] += dz * xc;
      }
    }
#pragma unroll
  for (int j = 0; j < V; ++j) red1[j * kThreads + th.tid] = s1[j], red2[j * kThreads + th.tid] = s2[j] * rs[j];
  __syncthreads();
  tree_rows<V>(red1, th.tid, f.bx, f.by);
  tree_rows<V>(red2, th.tid, f.bx, f.by);
  const auto gs = [&](int64_t c) { return d.prm.template gs<T>(n, c); };
  group_sums<V>(red1, part, GT, d.Cg, c_tile, d.C, gs);
  group_sums<V>(red2, part + GT, GT, d.Cg, c_tile, d.C, gs);
  cluster_total(part, total, int(2 * GT), int(f.K));

  // This CTA's share of the per-channel outputs (channels cl with cl % K == k), summed over the
  // cluster in rank order.
  for (int64_t cl = th.tid; cl < f.CT; cl += kThreads) {
    const int64_t c = c_tile + cl;
    if (cl % f.K != k || c >= d.C) continue;
    const int i = int((cl % V) * kThreads + cl / V);
    float t1 = 0.f, t2 = 0.f;
    for (int q = 0; q < int(f.K); ++q) {
      t1 += f.K > 1 ? cluster_read(red1, q, i) : red1[i];
      t2 += f.K > 1 ? cluster_read(red2, q, i) : red2[i];
    }
    dshift[n * d.C + c] = t1;
    dscale[n * d.C + c] = d.prm.gamma.template at<T>(n, c, 1.f) * t2 + d.prm.beta.template at<T>(n, c, 0.f) * t1;
    sums[(n * d.C + c) * 2] = t1;
    sums[(n * d.C + c) * 2 + 1] = t2;
  }
  if (f.K > 1) cluster_arrive();

  const float inv_m = 1.f / (float(d.Cg) * float(d.S));
  T* dxp = dx + off;
  coefs();
  float kk[V], q[V], m2r[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t gl = (th.tx * V + j) / d.Cg;
    const float g1 = th.cols ? gs(th.c0 + j) : 0.f;
    kk[j] = rs[j] * g1;
    q[j] = -rs[j] * total[gl] * inv_m;
    m2r[j] = -rs[j] * rs[j] * total[GT + gl] * inv_m;
  }
#pragma unroll
  for (int r = 0; r < kBwdRows; ++r) {
    keep_packed(xv[r].w);
    keep_packed(gv[r].w);
    if (th.ok(r)) {
      float o[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float xc = xv[r].get(j) - mu[j];
        const float dz = gv[r].get(j) * act_grad<SILU>(a[j] * xc + b[j]);
        o[j] = kk[j] * dz + m2r[j] * xc + q[j];
      }
      W::of(o).store(dxp);
    }
    dxp += step;
  }
  if (f.K > 1) cluster_wait();
}

// ---- host ---------------------------------------------------------------------------------------

// A launch of kThreads-thread CTAs on the current stream, in clusters of K when K > 1. The
// configuration points into `attr`, which must outlive it.
cudaLaunchConfig_t unit_config(dim3 grid, int64_t K, cudaLaunchAttribute (&attr)[1]) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = c10::cuda::getCurrentCUDAStream();
  if (K > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(K);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cfg;
}

template <typename Kernel, typename... Args>
void launch_units(Kernel kernel, dim3 grid, int64_t K, Args... args) {
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = unit_config(grid, K, attr);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

// Clusters need an sm_90 device running this kernel's sm_90 (or newer) machine code: the
// kernels compiled for sm_80 have no cluster reduction.
template <typename Kernel>
int64_t max_cluster(Kernel kernel) {
  return capability() >= 90 && binary_version(kernel) >= 90 ? plan::kMaxCluster : 1;
}

// Whether clusters of K CTAs of `kernel` can be resident at all here (a partitioned or shared
// GPU may allow fewer): asked once per (kernel, K).
template <typename Kernel>
bool cluster_fits(Kernel kernel, int64_t K) {
  return kernel_memo(kernel, int(1000 + K), [&] {
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = unit_config(dim3(unsigned(K)), K, attr);
    int clusters = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
    return clusters > 0 ? 1 : 0;
  }) != 0;
}

// The plan for this device: clusters up to kMaxCluster where they fit, else single CTAs.
template <typename Kernel, typename Plan>
plan::Fused plan_units(Kernel kernel, Plan make) {
  const int64_t target = resident_ctas(kernel, kThreads);
  plan::Fused pl = make(max_cluster(kernel), target);
  if (pl.ok && pl.K > 1 && !cluster_fits(kernel, pl.K)) pl = make(1, target);
  return pl;
}

FusedGeo geo_of(const plan::Fused& pl) {
  return {pl.K, pl.nr, pl.RC, pl.t.CT, pl.t.bx, pl.t.by};
}

}  // namespace

bool forward_fused(const at::Tensor& x, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd,
                   const Dims& d, bool silu) {
  bool launched = false;
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_fused", [&] {
    using T = scalar_t;
    constexpr int V = 16 / sizeof(T);
    if (pack_width(d.channels_last ? d.C : d.S, sizeof(T), {x.data_ptr(), y.data_ptr()}) != V) return;
    FG_DISPATCH_SILU(silu, [&] {
      auto kernel = d.channels_last ? fused_cl_forward<T, V, SILU> : fused_rows_forward<T, V, SILU>;
      const plan::Problem p = problem_of(d, V);
      const plan::Fused pl = plan_units(kernel, [&](int64_t kmax, int64_t target) {
        return d.channels_last ? plan::fused_cl(p, kFwdRows, kmax, target)
                               : plan::fused_rows(p, kFwdRows, kmax, target);
      });
      if (!pl.ok) return;
      const dim3 grid(unsigned(pl.K), unsigned(d.channels_last ? pl.t.tiles : d.G), unsigned(d.N));
      launch_units(kernel, grid, pl.K, x.data_ptr<T>(), y.data_ptr<T>(), mean.data_ptr<float>(),
                   rstd.data_ptr<float>(), d, geo_of(pl));
      launched = true;
    });
  });
  return launched;
}

bool backward_fused(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                    const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dscale, at::Tensor& dshift,
                    at::Tensor& sums, const Dims& d, bool silu) {
  if (!d.channels_last) return false;  // contiguous backward: the multi-pass path
  bool launched = false;
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_backward_fused", [&] {
    using T = scalar_t;
    constexpr int V = 16 / sizeof(T);
    if (pack_width(d.C, sizeof(T), {x.data_ptr(), dy.data_ptr(), dx.data_ptr()}) != V) return;
    FG_DISPATCH_SILU(silu, [&] {
      auto kernel = fused_cl_backward<T, V, SILU>;
      const plan::Fused pl = plan_units(kernel, [&](int64_t kmax, int64_t target) {
        return plan::fused_cl(problem_of(d, V), kBwdRows, kmax, target);
      });
      if (!pl.ok) return;
      const dim3 grid(unsigned(pl.K), unsigned(pl.t.tiles), unsigned(d.N));
      launch_units(kernel, grid, pl.K, dy.data_ptr<T>(), x.data_ptr<T>(), mean.data_ptr<float>(),
                   rstd.data_ptr<float>(), dx.data_ptr<T>(), dscale.data_ptr<float>(),
                   dshift.data_ptr<float>(), sums.data_ptr<float>(), d, geo_of(pl));
      launched = true;
    });
  });
  return launched;
}

}  // namespace fastguide::adagn
