// Multi-pass AdaGN on CUDA, for units too large for the single pass (adagn_fused.cu), 16-byte
// misaligned storage and channel counts that do not divide into packs.
//
// Forward, 3 launches:  stats (per-group Welford partials of each split) -> finalize (a warp per
//                       (n, group) over at most kMaxPartials partials) -> apply.
// Backward, 4 launches: sums (per-channel S1, S2 partials) -> finalize (a CTA per (n, group):
//                       S1, S2, dscale, dshift, m1, m2) -> dx; and the parameter gradients.
// Streaming loops keep kUnroll 16-byte loads in flight per thread (two tensors in the backward,
// whose kernels are held to 128 registers: at least 2 CTAs, 16 warps, per SM); their grids are
// the resident CTA count from the occupancy API. Nothing is zero-filled: every workspace entry
// is written.
//
// Cost model: x is read twice (stats, apply), y written once: 3 x bytes(x) forward, 5 x
// bytes(x) backward (x, grad_y twice; grad_x once), 2/3 and 3/5 of the single-pass roofline.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>

#include "adagn/adagn_cuda.cuh"

namespace fastguide::adagn {
namespace {

using namespace fastguide::cuda;
using plan::cut;
using plan::kUnroll;

struct Geo {  // a channels-last streaming grid: (splits, tiles, N)
  plan::Tile t;
  int64_t splits;
};

// Thread (tx, ty) of a channels-last CTA: channels c0 .. c0 + V - 1, rows s0 + ty + i * by.
struct ClStream {
  int tid, tx, ty;
  int64_t c0, s0, s1;
  bool cols;

  __device__ ClStream(const Dims& d, const Geo& g, int V) {
    tid = threadIdx.x;
    tx = tid % g.t.bx;
    ty = tid / g.t.bx;
    c0 = plan::cl_first_channel(blockIdx.y, g.t.CT, tx, V);
    s0 = cut(d.S, blockIdx.x, g.splits);
    s1 = cut(d.S, int64_t(blockIdx.x) + 1, g.splits);
    cols = ty < g.t.by && c0 < d.C;
  }
};

// The rows of this thread's split, U rows of x (and of grad_y when TWO) in flight: calls
// f(offset, px, pg) for each, offset being the pack's element offset.
template <int U, bool TWO, typename T, int V, typename F>
__device__ __forceinline__ void stream_cl(const ClStream& th, int64_t by, int64_t C, int64_t base,
                                          const T* x, const T* dy, F f) {
  for (int64_t row = th.s0 + th.ty; row < th.s1; row += by * U) {
    Pack<T, V> px[U], pg[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (row + u * by < th.s1) {
        px[u] = load_pack<T, V>(x + base + (row + u * by) * C);
        if constexpr (TWO) pg[u] = load_pack<T, V>(dy + base + (row + u * by) * C);
      }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (row + u * by < th.s1) f(base + (row + u * by) * C, px[u], pg[u]);
  }
}

// ---- forward ------------------------------------------------------------------------------------

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
stats_cl(const T* __restrict__ x, float* __restrict__ ws, Dims d, Geo g) {
  __shared__ float sm[V * kThreads], sq[V * kThreads], sn[kThreads];
  const ClStream th(d, g, V);
  const int64_t n = blockIdx.z, tile = blockIdx.y, by = g.t.by;
  float mean[V], m2[V], cnt = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) mean[j] = 0.f, m2[j] = 0.f;
  if (th.cols)
    stream_cl<kUnroll, false, T, V>(th, by, d.C, plan::cl_offset(n, 0, th.c0, d.S, d.C), x, x,
                                    [&](int64_t, const Pack<T, V>& p, const Pack<T, V>&) {
      cnt += 1.f;
      const float inv = __frcp_rn(cnt);  // one reciprocal for the V lanes: they share the count
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float v = float(p.v[j]), dv = v - mean[j];
        mean[j] += dv * inv;
        m2[j] += dv * (v - mean[j]);
      }
    });
  const int tid = th.tid, bx = g.t.bx;
#pragma unroll
  for (int j = 0; j < V; ++j) sm[j * kThreads + tid] = mean[j], sq[j * kThreads + tid] = m2[j];
  sn[tid] = cnt;
  __syncthreads();
  // Chan-combine the rows of the CTA (a fixed tree, as tree_rows).
  int h = 1;
  while (h < g.t.by) h *= 2;
  for (h /= 2; h >= 1; h /= 2) {
    if (th.ty < h && th.ty + h < g.t.by) {
      const int o = tid + h * bx;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const Welford w = chan({sn[tid], sm[j * kThreads + tid], sq[j * kThreads + tid]},
                               {sn[o], sm[j * kThreads + o], sq[j * kThreads + o]});
        sm[j * kThreads + tid] = w.mean, sq[j * kThreads + tid] = w.m2;
      }
      sn[tid] += sn[o];
    }
    __syncthreads();
  }
  // One partial per group (or group part) of the tile: a warp per group over its channels.
  const int lane = tid % 32;
  const int64_t GT = plan::tile_groups(g.t, d.Cg);
  for (int64_t gl = tid / 32; gl < GT; gl += kWarps) {
    const int64_t lo = g.t.tpg > 1 ? 0 : gl * d.Cg, hi = g.t.tpg > 1 ? g.t.CT : lo + d.Cg;
    Welford w{0.f, 0.f, 0.f};
    for (int64_t cl = lo + lane; cl < hi; cl += 32)
      if (tile * g.t.CT + cl < d.C) {
        const int64_t i = (cl % V) * kThreads + cl / V;
        w = chan(w, {sn[cl / V], sm[i], sq[i]});
      }
    w = warp_chan(w);
    const int64_t grp = plan::tile_group(g.t, tile, gl, d.Cg);
    if (lane == 0 && grp < d.G) {
      const int64_t P = g.splits * g.t.tpg;
      float* o = ws + ((n * d.G + grp) * P + plan::tile_part(g.t, tile, blockIdx.x, g.splits)) * 3;
      o[0] = w.n, o[1] = w.mean, o[2] = w.m2;
    }
  }
}

// Contiguous: CTA (split, g, n) over packs [cut(Mp, split), cut(Mp, split + 1)) of the slab.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
stats_rows(const T* __restrict__ x, float* __restrict__ ws, Dims d, int64_t splits) {
  __shared__ Welford sh[kWarps];
  const int tid = threadIdx.x;
  const int64_t split = blockIdx.x, grp = blockIdx.y, n = blockIdx.z;
  const int64_t Mp = d.Cg * d.S / V, p1 = cut(Mp, split + 1, splits);
  const T* xp = x + plan::rows_offset(n, grp, 0, d.Cg, d.S, d.C, V);
  Welford w{0.f, 0.f, 0.f};
  for (int64_t pk = cut(Mp, split, splits) + tid; pk < p1; pk += int64_t(kThreads) * kUnroll) {
    Pack<T, V> p[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (pk + u * kThreads < p1) p[u] = load_pack<T, V>(xp + (pk + u * kThreads) * V);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (pk + u * kThreads < p1) {
        float m = 0.f, q = 0.f;  // the pack's own mean and M2, exact, then one Chan step
#pragma unroll
        for (int j = 0; j < V; ++j) m += float(p[u].v[j]);
        m *= 1.f / V;
#pragma unroll
        for (int j = 0; j < V; ++j) q += (float(p[u].v[j]) - m) * (float(p[u].v[j]) - m);
        w = chan(w, {float(V), m, q});
      }
  }
  w = warp_chan(w);
  if (tid % 32 == 0) sh[tid / 32] = w;
  __syncthreads();
  if (tid == 0) {
    for (int i = 1; i < kWarps; ++i) w = chan(w, sh[i]);
    float* o = ws + ((n * d.G + grp) * splits + split) * 3;
    o[0] = w.n, o[1] = w.mean, o[2] = w.m2;
  }
}

// A warp per (n, group): Chan over its P partials -> mean, rstd.
__global__ void __launch_bounds__(kThreads)
finalize_forward(const float* __restrict__ ws, float* __restrict__ mean, float* __restrict__ rstd,
                 int64_t NG, int64_t P, float eps) {
  const int64_t w = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= NG) return;  // the whole warp
  Welford s{0.f, 0.f, 0.f};
  for (int64_t j = lane; j < P; j += 32) {
    const float* t = ws + (w * P + j) * 3;
    s = chan(s, {t[0], t[1], t[2]});
  }
  s = warp_chan(s);
  if (lane == 0) mean[w] = s.mean, rstd[w] = rsqrtf(s.m2 / s.n + eps);
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
apply_cl(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ mean,
         const float* __restrict__ rstd, Dims d, Geo g) {
  const ClStream th(d, g, V);
  if (!th.cols) return;
  const int64_t n = blockIdx.z, by = g.t.by;
  float a[V], b[V], mu[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t ng = n * d.G + (th.c0 + j) / d.Cg;
    mu[j] = mean[ng];
    d.prm.template coef<T>(n, th.c0 + j, rstd[ng], a[j], b[j]);
  }
  stream_cl<kUnroll, false, T, V>(th, by, d.C, plan::cl_offset(n, 0, th.c0, d.S, d.C), x, x,
                                  [&](int64_t off, const Pack<T, V>& p, const Pack<T, V>&) {
    float o[V];
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = act<SILU>(a[j] * (float(p.v[j]) - mu[j]) + b[j]);
    store_f<T, V>(y + off, o);
  });
}

// Row segments of contiguous x: lanes li of segment row `row`, packs q0 + li + i * lpr.
struct RowSeg {
  int64_t row, n, c, q0, q1;
  int li;

  __device__ RowSeg(const Dims& d, const plan::Segments& s) {
    row = plan::segment_row(s, blockIdx.x, threadIdx.x, d.N * d.C);
    li = (threadIdx.x % 32) % s.lpr;
    n = row < 0 ? 0 : row / d.C;
    c = row < 0 ? 0 : row % d.C;
    q0 = cut(s.packs, blockIdx.y, s.splits);
    q1 = row < 0 ? q0 : cut(s.packs, int64_t(blockIdx.y) + 1, s.splits);
  }
};

// The packs of this lane's row segment, U of x (and of grad_y when TWO) in flight: calls
// f(offset, px, pg) for each.
template <int U, bool TWO, typename T, int V, typename F>
__device__ __forceinline__ void stream_seg(const RowSeg& rs, int64_t step, int64_t base, const T* x,
                                           const T* dy, F f) {
  for (int64_t q = rs.q0 + rs.li; q < rs.q1; q += step * U) {
    Pack<T, V> px[U], pg[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (q + u * step < rs.q1) {
        px[u] = load_pack<T, V>(x + base + (q + u * step) * V);
        if constexpr (TWO) pg[u] = load_pack<T, V>(dy + base + (q + u * step) * V);
      }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (q + u * step < rs.q1) f(base + (q + u * step) * V, px[u], pg[u]);
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads)
apply_rows(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ mean,
           const float* __restrict__ rstd, Dims d, plan::Segments s) {
  const RowSeg rs(d, s);
  if (rs.row < 0) return;
  const int64_t ng = rs.n * d.G + rs.c / d.Cg, step = int64_t(s.lpr);
  const float mu = mean[ng];
  float a, b;
  d.prm.template coef<T>(rs.n, rs.c, rstd[ng], a, b);
  stream_seg<kUnroll, false, T, V>(rs, step, rs.row * d.S, x, x,
                                   [&](int64_t off, const Pack<T, V>& p, const Pack<T, V>&) {
    float o[V];
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = act<SILU>(a * (float(p.v[j]) - mu) + b);
    store_f<T, V>(y + off, o);
  });
}

// ---- backward -----------------------------------------------------------------------------------

// Per-channel partials (S1, S2) of split `split`: wsc[((n * P + split) * C + c) * 2 + {0, 1}].
template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
sums_cl(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, float* __restrict__ wsc, Dims d, Geo g) {
  __shared__ float r1[V * kThreads], r2[V * kThreads];
  const ClStream th(d, g, V);
  const int64_t n = blockIdx.z, by = g.t.by;
  float a[V], b[V], mu[V], rs[V], s1[V], s2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t ng = n * d.G + (th.cols ? (th.c0 + j) / d.Cg : 0);
    mu[j] = mean[ng], rs[j] = rstd[ng], a[j] = 0.f, b[j] = 0.f, s1[j] = 0.f, s2[j] = 0.f;
    if (th.cols) d.prm.template coef<T>(n, th.c0 + j, rs[j], a[j], b[j]);
  }
  if (th.cols)
    stream_cl<kUnroll, true, T, V>(th, by, d.C, plan::cl_offset(n, 0, th.c0, d.S, d.C), x, dy,
                                   [&](int64_t, const Pack<T, V>& px, const Pack<T, V>& pg) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float xc = float(px.v[j]) - mu[j];
        const float dz = float(pg.v[j]) * act_grad<SILU>(a[j] * xc + b[j]);
        s1[j] += dz;
        s2[j] += dz * xc;
      }
    });
#pragma unroll
  for (int j = 0; j < V; ++j) r1[j * kThreads + th.tid] = s1[j], r2[j * kThreads + th.tid] = s2[j] * rs[j];
  __syncthreads();
  tree_rows<V>(r1, th.tid, g.t.bx, g.t.by);
  tree_rows<V>(r2, th.tid, g.t.bx, g.t.by);
  if (th.ty == 0 && th.cols) {
    float* o = wsc + ((n * g.splits + blockIdx.x) * d.C + th.c0) * 2;
#pragma unroll
    for (int j = 0; j < V; ++j) o[2 * j] = r1[j * kThreads + th.tx], o[2 * j + 1] = r2[j * kThreads + th.tx];
  }
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
sums_rows(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
          const float* __restrict__ rstd, float* __restrict__ wsc, Dims d, plan::Segments s) {
  const RowSeg rs(d, s);  // lanes past the last row take part in the shuffles with zeros
  const int64_t ng = rs.n * d.G + rs.c / d.Cg, step = int64_t(s.lpr);
  const float mu = mean[ng], r = rstd[ng];
  float a, b, s1 = 0.f, s2 = 0.f;
  d.prm.template coef<T>(rs.n, rs.c, r, a, b);
  const int64_t base = rs.row < 0 ? 0 : rs.row * d.S;
  stream_seg<kUnroll, true, T, V>(rs, step, base, x, dy,
                                  [&](int64_t, const Pack<T, V>& px, const Pack<T, V>& pg) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xc = float(px.v[j]) - mu;
      const float dz = float(pg.v[j]) * act_grad<SILU>(a * xc + b);
      s1 += dz;
      s2 += dz * xc;
    }
  });
  s2 *= r;
  for (int off = s.lpr / 2; off >= 1; off /= 2) {  // within the segment's lpr lanes
    s1 += __shfl_xor_sync(kFullMask, s1, off);
    s2 += __shfl_xor_sync(kFullMask, s2, off);
  }
  if (rs.row >= 0 && rs.li == 0) {
    float* o = wsc + ((rs.n * s.splits + blockIdx.y) * d.C + rs.c) * 2;
    o[0] = s1, o[1] = s2;
  }
}

// A CTA per (n, group): per channel S1, S2 over the P partials (8 rows of 32 channels, at most
// kMaxPartials / 8 each), then dshift, dscale, sums; per group m1, m2 -> m[(n, g) * 2 + {0, 1}].
template <typename T>
__global__ void __launch_bounds__(kThreads)
finalize_backward(const float* __restrict__ wsc, int64_t P, Dims d, float* __restrict__ sums,
                  float* __restrict__ dscale, float* __restrict__ dshift, float* __restrict__ m) {
  __shared__ float t1[kThreads], t2[kThreads];
  const int tid = threadIdx.x, tx = tid % 32, ty = tid / 32;
  const int64_t grp = blockIdx.x, n = blockIdx.y, c_end = (grp + 1) * d.Cg;
  float acc1 = 0.f, acc2 = 0.f;
  for (int64_t c0 = grp * d.Cg; c0 < c_end; c0 += 32) {
    const int64_t c = c0 + tx;
    float a1 = 0.f, a2 = 0.f;
    if (c < c_end)
      for (int64_t j = ty; j < P; j += kWarps) {
        const float* v = wsc + ((n * P + j) * d.C + c) * 2;
        a1 += v[0], a2 += v[1];
      }
    t1[tid] = a1, t2[tid] = a2;
    __syncthreads();
    if (ty == 0 && c < c_end) {
      float s1 = 0.f, s2 = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s1 += t1[w * 32 + tx], s2 += t2[w * 32 + tx];
      const int64_t nc = n * d.C + c;
      sums[nc * 2] = s1, sums[nc * 2 + 1] = s2;
      dshift[nc] = s1;
      dscale[nc] = d.prm.gamma.template at<T>(n, c, 1.f) * s2 + d.prm.beta.template at<T>(n, c, 0.f) * s1;
      const float gs = d.prm.template gs<T>(n, c);
      acc1 += gs * s1, acc2 += gs * s2;
    }
    __syncthreads();
  }
  if (ty == 0) {
    acc1 = warp_sum(acc1), acc2 = warp_sum(acc2);
    if (tx == 0) {
      const float inv_m = 1.f / (float(d.Cg) * float(d.S));
      m[(n * d.G + grp) * 2] = acc1 * inv_m, m[(n * d.G + grp) * 2 + 1] = acc2 * inv_m;
    }
  }
}

// dx = k * dz + m2r * (x - mean) + q (adagn_cuda.cuh). dx_cl holds six coefficients for each
// of its V channels: two rows in flight per tensor keep it within 128 registers.
constexpr int kUnrollDx = 2;

struct DxCoef {
  float a, b, mu, k, q, m2r;
};
template <typename T>
__device__ __forceinline__ DxCoef dx_coef(const Dims& d, const float* mean, const float* rstd,
                                          const float* m, int64_t n, int64_t c) {
  const int64_t ng = n * d.G + c / d.Cg;
  DxCoef o;
  const float r = rstd[ng];
  o.mu = mean[ng];
  d.prm.template coef<T>(n, c, r, o.a, o.b);
  o.k = r * d.prm.template gs<T>(n, c);
  o.q = -r * m[ng * 2];
  o.m2r = -r * r * m[ng * 2 + 1];
  return o;
}

template <bool SILU>
__device__ __forceinline__ float dx_of(const DxCoef& k, float x, float g) {
  const float xc = x - k.mu;
  return k.k * (g * act_grad<SILU>(k.a * xc + k.b)) + k.m2r * xc + k.q;
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
dx_cl(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
      const float* __restrict__ rstd, const float* __restrict__ m, T* __restrict__ dx, Dims d, Geo g) {
  const ClStream th(d, g, V);
  if (!th.cols) return;
  const int64_t n = blockIdx.z, by = g.t.by;
  DxCoef k[V];
#pragma unroll
  for (int j = 0; j < V; ++j) k[j] = dx_coef<T>(d, mean, rstd, m, n, th.c0 + j);
  stream_cl<kUnrollDx, true, T, V>(th, by, d.C, plan::cl_offset(n, 0, th.c0, d.S, d.C), x, dy,
                                   [&](int64_t off, const Pack<T, V>& px, const Pack<T, V>& pg) {
    float o[V];
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = dx_of<SILU>(k[j], float(px.v[j]), float(pg.v[j]));
    store_f<T, V>(dx + off, o);
  });
}

template <typename T, int V, bool SILU>
__global__ void __launch_bounds__(kThreads, 2)
dx_rows(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, const float* __restrict__ m, T* __restrict__ dx, Dims d,
        plan::Segments s) {
  const RowSeg rs(d, s);
  if (rs.row < 0) return;
  const DxCoef k = dx_coef<T>(d, mean, rstd, m, rs.n, rs.c);
  const int64_t base = rs.row * d.S, step = int64_t(s.lpr);
  stream_seg<kUnroll, true, T, V>(rs, step, base, x, dy,
                                  [&](int64_t off, const Pack<T, V>& px, const Pack<T, V>& pg) {
    float o[V];
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = dx_of<SILU>(k, float(px.v[j]), float(pg.v[j]));
    store_f<T, V>(dx + off, o);
  });
}

// dweight[c] = sum_n (1 + scale) S2, dbias[c] = sum_n (1 + scale) S1: a thread per channel.
template <typename T>
__global__ void __launch_bounds__(kThreads)
param_grad(const float* __restrict__ sums, Dims d, float* __restrict__ dw, float* __restrict__ db) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= d.C) return;
  float w = 0.f, b = 0.f;
  for (int64_t n = 0; n < d.N; ++n) {
    const float s1 = 1.f + d.prm.scale.template at<T>(n, c, 0.f);
    w += s1 * sums[(n * d.C + c) * 2 + 1];
    b += s1 * sums[(n * d.C + c) * 2];
  }
  dw[c] = w, db[c] = b;
}

// ---- host ---------------------------------------------------------------------------------------

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

template <typename T>
int width_of(const Dims& d, std::initializer_list<const void*> ptrs) {
  return plan::multipass_width(problem_of(d, pack_width(d.channels_last ? d.C : d.S, sizeof(T), ptrs)));
}

}  // namespace

void forward_multipass(const at::Tensor& x, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd,
                       const Dims& d, bool silu) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto fopts = x.options().dtype(at::kFloat);
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_multipass", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    const int width = width_of<T>(d, {xp, yp});
    FG_DISPATCH_WIDTH(width, [&] {
      const plan::Problem p = problem_of(d, V);
      at::Tensor ws;
      int64_t P;
      if (d.channels_last) {
        const plan::Tile t = plan::widest_tile(p);
        const Geo gs{t, plan::cl_stats_splits(p, t, resident_ctas(stats_cl<T, V>, kThreads))};
        P = gs.splits * t.tpg;
        ws = at::empty({d.N * d.G * P * 3}, fopts);
        stats_cl<T, V><<<dim3(unsigned(gs.splits), unsigned(t.tiles), unsigned(d.N)), kThreads, 0, stream>>>(
            xp, ws.data_ptr<float>(), d, gs);
      } else {
        P = plan::rows_stats_splits(p, resident_ctas(stats_rows<T, V>, kThreads));
        ws = at::empty({d.N * d.G * P * 3}, fopts);
        stats_rows<T, V><<<dim3(unsigned(P), unsigned(d.G), unsigned(d.N)), kThreads, 0, stream>>>(
            xp, ws.data_ptr<float>(), d, P);
      }
      check_launch();
      const int64_t NG = d.N * d.G;
      finalize_forward<<<unsigned(plan::ceil_div(NG * 32, kThreads)), kThreads, 0, stream>>>(
          ws.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), NG, P, d.eps);
      check_launch();
      FG_DISPATCH_SILU(silu, [&] {
        if (d.channels_last) {
          auto kernel = apply_cl<T, V, SILU>;
          const plan::Tile t = plan::widest_tile(p);
          const Geo ga{t, plan::cl_splits(p, t, resident_ctas(kernel, kThreads), 65535)};
          kernel<<<dim3(unsigned(ga.splits), unsigned(t.tiles), unsigned(d.N)), kThreads, 0, stream>>>(
              xp, yp, mean.data_ptr<float>(), rstd.data_ptr<float>(), d, ga);
        } else {
          auto kernel = apply_rows<T, V, SILU>;
          const plan::Segments s = plan::segments(p, resident_ctas(kernel, kThreads), 65535);
          kernel<<<dim3(unsigned(s.blocks), unsigned(s.splits)), kThreads, 0, stream>>>(
              xp, yp, mean.data_ptr<float>(), rstd.data_ptr<float>(), d, s);
        }
        check_launch();
      });
    });
  });
}

void backward_multipass(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                        const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dscale,
                        at::Tensor& dshift, at::Tensor& sums, const Dims& d, bool silu) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto fopts = x.options().dtype(at::kFloat);
  const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_backward_multipass", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *gp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const int width = width_of<T>(d, {xp, gp, dxp});
    FG_DISPATCH_WIDTH(width, [&] {
      FG_DISPATCH_SILU(silu, [&] {
        const plan::Problem p = problem_of(d, V);
        const plan::Tile t = d.channels_last ? plan::widest_tile(p) : plan::Tile{};
        at::Tensor wsc, m = at::empty({d.N * d.G * 2}, fopts);
        int64_t P;
        if (d.channels_last) {
          const Geo gs{t, plan::cl_splits(p, t, resident_ctas(sums_cl<T, V, SILU>, kThreads),
                                          plan::kMaxPartials)};
          P = gs.splits;
          wsc = at::empty({d.N * P * d.C * 2}, fopts);
          sums_cl<T, V, SILU><<<dim3(unsigned(P), unsigned(t.tiles), unsigned(d.N)), kThreads, 0, stream>>>(
              gp, xp, mp, rp, wsc.data_ptr<float>(), d, gs);
        } else {
          const plan::Segments s = plan::segments(p, resident_ctas(sums_rows<T, V, SILU>, kThreads),
                                                  plan::kMaxPartials);
          P = s.splits;
          wsc = at::empty({d.N * P * d.C * 2}, fopts);
          sums_rows<T, V, SILU><<<dim3(unsigned(s.blocks), unsigned(s.splits)), kThreads, 0, stream>>>(
              gp, xp, mp, rp, wsc.data_ptr<float>(), d, s);
        }
        check_launch();
        finalize_backward<T><<<dim3(unsigned(d.G), unsigned(d.N)), kThreads, 0, stream>>>(
            wsc.data_ptr<float>(), P, d, sums.data_ptr<float>(), dscale.data_ptr<float>(),
            dshift.data_ptr<float>(), m.data_ptr<float>());
        check_launch();
        if (d.channels_last) {
          auto kernel = dx_cl<T, V, SILU>;
          const Geo ga{t, plan::cl_splits(p, t, resident_ctas(kernel, kThreads), 65535)};
          kernel<<<dim3(unsigned(ga.splits), unsigned(t.tiles), unsigned(d.N)), kThreads, 0, stream>>>(
              gp, xp, mp, rp, m.data_ptr<float>(), dxp, d, ga);
        } else {
          auto kernel = dx_rows<T, V, SILU>;
          const plan::Segments s = plan::segments(p, resident_ctas(kernel, kThreads), 65535);
          kernel<<<dim3(unsigned(s.blocks), unsigned(s.splits)), kThreads, 0, stream>>>(
              gp, xp, mp, rp, m.data_ptr<float>(), dxp, d, s);
        }
        check_launch();
      });
    });
  });
}

void backward_params(const at::Tensor& x, const at::Tensor& sums, at::Tensor& dweight,
                     at::Tensor& dbias, const Dims& d) {
  FG_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "group_norm_act_param_grad", [&] {
    param_grad<scalar_t><<<unsigned(plan::ceil_div(d.C, kThreads)), kThreads, 0,
                           c10::cuda::getCurrentCUDAStream()>>>(
        sums.data_ptr<float>(), d, dweight.data_ptr<float>(), dbias.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace fastguide::adagn
