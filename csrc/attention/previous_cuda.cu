// The attention kernels as of 979f40d (WMMA forward at head dims 32/64/128, SIMT fallback and
// SIMT backward), kept unchanged and registered as fastguide::attention_previous(_backward) on
// CUDA builds only, so that benchmarks/bench_attention.py can measure the new kernels against
// them in the same run. Nothing else calls them. Only the names changed: namespace `previous`,
// kernels prefixed prev_, and the registration at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <mma.h>
#include <type_traits>
#include <torch/library.h>

#include "attention/attention.h"
#include "common/cuda_utils.cuh"

namespace fastguide::attention::previous {
namespace {

using fastguide::cuda::ceil_div;
using fastguide::cuda::kFullMask;
using fastguide::cuda::warp_sum;
namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 16, kBlockQ = kWarps * kRowsPerWarp;  // 64 queries a block
constexpr int kMaxFallbackDim = 512;

// Strided access to qkv / out / grads: element (n, channel, l).
struct Strides {
  int64_t n, c, l;
};
inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

struct Geo {  // what every kernel needs to find head h's channels
  int64_t C, L, H, ch;
  bool new_order;
  __device__ int64_t qkv_channel(int64_t h, int p, int64_t d) const {
    return new_order ? p * C + h * ch + d : h * 3 * ch + p * ch + d;
  }
};

template <typename T>
struct WmmaType;  // the WMMA element type of a torch dtype
template <>
struct WmmaType<at::Half> {
  using type = half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// ---- forward, tensor cores -------------------------------------------------------------------

template <int D, int KT>
struct Smem {  // dynamic shared memory layout of one block, in bytes
  static constexpr int q = kBlockQ * D * 2, k = KT * D * 2, v = KT * D * 2;
  static constexpr int s = kWarps * kRowsPerWarp * KT * 4, p = kWarps * kRowsPerWarp * KT * 2;
  static constexpr int o = kWarps * kRowsPerWarp * D * 4, stats = 2 * kBlockQ * 4;
  static constexpr int total = q + k + v + s + p + o + stats;
};

// Loads rows [r0, r0 + rows) of part p of head h (zero beyond L) as a [rows][D] tile.
template <typename T, int D>
__device__ void load_tile(T* dst, const T* qkv, Strides st, const Geo& g, int64_t n, int64_t h,
                          int p, int64_t r0, int rows) {
  const int64_t c0 = g.qkv_channel(h, p, 0);
  const T zero = T(0.f);
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    // Walk memory order: d fastest when channels are contiguous (tokens-major), rows otherwise.
    const bool d_fast = st.c == 1;
    const int r = d_fast ? i / D : i % rows, d = d_fast ? i % D : i / rows;
    const int64_t l = r0 + r;
    dst[r * D + d] = l < g.L ? qkv[n * st.n + (c0 + d) * st.c + l * st.l] : zero;
  }
}

template <typename T, int D, int KT>
__global__ void __launch_bounds__(kThreads)
prev_fwd_tc_kernel(const T* __restrict__ qkv, Strides sq, T* __restrict__ out, Strides so,
                   float* __restrict__ lse, Geo g, float scale) {
  using W = typename WmmaType<T>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  using S = Smem<D, KT>;
  T* Qs = reinterpret_cast<T*>(smem);
  T* Ks = reinterpret_cast<T*>(smem + S::q);
  T* Vs = reinterpret_cast<T*>(smem + S::q + S::k);
  float* Ss = reinterpret_cast<float*>(smem + S::q + S::k + S::v);
  T* Ps = reinterpret_cast<T*>(smem + S::q + S::k + S::v + S::s);
  float* Os = reinterpret_cast<float*>(smem + S::q + S::k + S::v + S::s + S::p);
  float* m_s = reinterpret_cast<float*>(smem + S::q + S::k + S::v + S::s + S::p + S::o);
  float* l_s = m_s + kBlockQ;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = blockIdx.z, h = blockIdx.y, q0 = int64_t(blockIdx.x) * kBlockQ;
  load_tile<T, D>(Qs, qkv, sq, g, n, h, 0, q0, kBlockQ);
  for (int i = threadIdx.x; i < kWarps * kRowsPerWarp * D; i += blockDim.x) Os[i] = 0.f;
  for (int i = threadIdx.x; i < kBlockQ; i += blockDim.x) m_s[i] = -INFINITY, l_s[i] = 0.f;

  float* Sw = Ss + warp * kRowsPerWarp * KT;
  T* Pw = Ps + warp * kRowsPerWarp * KT;
  float* Ow = Os + warp * kRowsPerWarp * D;
  const T* Qw = Qs + warp * kRowsPerWarp * D;
  const int r = lane / 2, half_ = lane % 2;  // softmax: two lanes per row, KT/2 columns each
  const int row = warp * kRowsPerWarp + r;

  for (int64_t k0 = 0; k0 < g.L; k0 += KT) {
    __syncthreads();  // previous tile fully consumed (and Q, O, stats initialised)
    load_tile<T, D>(Ks, qkv, sq, g, n, h, 1, k0, KT);
    load_tile<T, D>(Vs, qkv, sq, g, n, h, 2, k0, KT);
    __syncthreads();

    // S_w [16 x KT] = Q_w [16 x D] K^T [D x KT]
    for (int j = 0; j < KT / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::col_major> b;
        wmma::load_matrix_sync(a, reinterpret_cast<const W*>(Qw + kk * 16), D);
        wmma::load_matrix_sync(b, reinterpret_cast<const W*>(Ks + j * 16 * D + kk * 16), D);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Sw + j * 16, acc, KT, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row r over this tile; masked keys (beyond L) get probability 0.
    const int64_t valid = g.L - k0;
    float mx = -INFINITY;
    for (int c = half_ * (KT / 2); c < (half_ + 1) * (KT / 2); ++c)
      if (c < valid) mx = fmaxf(mx, Sw[r * KT + c] * scale);
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
    const float m_old = m_s[row], m_new = fmaxf(m_old, mx);
    float sum = 0.f;
    for (int c = half_ * (KT / 2); c < (half_ + 1) * (KT / 2); ++c) {
      const float p = c < valid ? __expf(Sw[r * KT + c] * scale - m_new) : 0.f;
      Pw[r * KT + c] = T(p);
      sum += p;
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    const float alpha = __expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
    for (int d = half_ * (D / 2); d < (half_ + 1) * (D / 2); ++d) Ow[r * D + d] *= alpha;
    __syncwarp();
    if (half_ == 0) m_s[row] = m_new, l_s[row] = l_s[row] * alpha + sum;
    __syncwarp();

    // O_w [16 x D] += P_w [16 x KT] V [KT x D]
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Ow + j * 16, D, wmma::mem_row_major);
      for (int kk = 0; kk < KT / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> b;
        wmma::load_matrix_sync(a, reinterpret_cast<const W*>(Pw + kk * 16), KT);
        wmma::load_matrix_sync(b, reinterpret_cast<const W*>(Vs + kk * 16 * D + j * 16), D);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Ow + j * 16, acc, D, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // out = O / l, lse = m + log l; rows beyond L are padding.
  const int64_t qrow = q0 + row;
  if (qrow < g.L) {
    const float inv_l = 1.f / l_s[row];
    for (int d = half_ * (D / 2); d < (half_ + 1) * (D / 2); ++d)
      out[n * so.n + (h * D + d) * so.c + qrow * so.l] = T(Ow[r * D + d] * inv_l);
    if (half_ == 0) lse[(n * g.H + h) * g.L + qrow] = m_s[row] + logf(l_s[row]);
  }
}

// ---- forward, fallback --------------------------------------------------------------------------

// One warp per query row; lane holds channels lane, lane + 32, ... of q and of the accumulator.
template <typename T>
__global__ void __launch_bounds__(kThreads)
prev_fwd_simt_kernel(const T* __restrict__ qkv, Strides sq, T* __restrict__ out, Strides so,
                     float* __restrict__ lse, Geo g, float scale) {
  constexpr int R = kMaxFallbackDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, n = blockIdx.z, h = blockIdx.y;
  if (row >= g.L) return;
  const int64_t cq = g.qkv_channel(h, 0, 0), ck = g.qkv_channel(h, 1, 0), cv = g.qkv_channel(h, 2, 0);
  const T* base = qkv + n * sq.n;
  float q[R], o[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t d = lane + 32 * i;
    q[i] = d < g.ch ? float(base[(cq + d) * sq.c + row * sq.l]) * scale : 0.f;
    o[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j < g.L; ++j) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < g.ch) s += q[i] * float(base[(ck + d) * sq.c + j * sq.l]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s), alpha = __expf(m - m_new), p = __expf(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t d = lane + 32 * i;
      o[i] = o[i] * alpha + (d < g.ch ? p * float(base[(cv + d) * sq.c + j * sq.l]) : 0.f);
    }
    m = m_new;
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < g.ch) out[n * so.n + (h * g.ch + d) * so.c + row * so.l] = T(o[i] / l);
  }
  if (lane == 0) lse[(n * g.H + h) * g.L + row] = m + logf(l);
}

// ---- backward -----------------------------------------------------------------------------------

struct BwdArgs {
  Strides sq, so, sg, sd;  // qkv, out, grad_out, grad_qkv
};

// D_i = sum_d dO_i * O_i, one warp per row.
template <typename T>
__global__ void prev_delta_kernel(const T* __restrict__ out, const T* __restrict__ gout, BwdArgs a,
                                  float* __restrict__ delta, Geo g) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, n = blockIdx.z, h = blockIdx.y;
  if (row >= g.L) return;
  float s = 0.f;
  for (int64_t d = lane; d < g.ch; d += 32) {
    const int64_t c = h * g.ch + d;
    s += float(out[n * a.so.n + c * a.so.c + row * a.so.l]) * float(gout[n * a.sg.n + c * a.sg.c + row * a.sg.l]);
  }
  s = warp_sum(s);
  if (lane == 0) delta[(n * g.H + h) * g.L + row] = s;
}

// dot(x_i, y_j) over a head's channels, x and y given as (channel base, row) in their tensors.
template <typename T>
__device__ float warp_dot(const T* x, int64_t cx, int64_t rx, Strides sx, const T* y, int64_t cy,
                          int64_t ry, Strides sy, int64_t ch) {
  float s = 0.f;
  for (int64_t d = threadIdx.x % 32; d < ch; d += 32)
    s += float(x[(cx + d) * sx.c + rx * sx.l]) * float(y[(cy + d) * sy.c + ry * sy.l]);
  return warp_sum(s);
}

// dQ_i = scale * sum_j P_ij (dP_ij - D_i) k_j, P_ij = exp(scale q_i.k_j - lse_i), dP_ij = dO_i.v_j
template <typename T>
__global__ void __launch_bounds__(kThreads)
prev_dq_kernel(const T* __restrict__ qkv, const T* __restrict__ gout, const float* __restrict__ lse,
               const float* __restrict__ delta, T* __restrict__ gqkv, BwdArgs a, Geo g, float scale) {
  constexpr int R = kMaxFallbackDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, n = blockIdx.z, h = blockIdx.y;
  if (i >= g.L) return;
  const T* x = qkv + n * a.sq.n;
  const T* go = gout + n * a.sg.n;
  const int64_t cq = g.qkv_channel(h, 0, 0), ck = g.qkv_channel(h, 1, 0), cv = g.qkv_channel(h, 2, 0);
  const float lse_i = lse[(n * g.H + h) * g.L + i], D_i = delta[(n * g.H + h) * g.L + i];
  float dq[R] = {};
  for (int64_t j = 0; j < g.L; ++j) {
    const float p = __expf(scale * warp_dot(x, cq, i, a.sq, x, ck, j, a.sq, g.ch) - lse_i);
    const float dp = warp_dot(go, h * g.ch, i, a.sg, x, cv, j, a.sq, g.ch);
    const float ds = p * (dp - D_i);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < g.ch) dq[r] += ds * float(x[(ck + d) * a.sq.c + j * a.sq.l]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < g.ch) gqkv[n * a.sd.n + (cq + d) * a.sd.c + i * a.sd.l] = T(dq[r] * scale);
  }
}

// dV_j = sum_i P_ij dO_i;  dK_j = scale * sum_i P_ij (dP_ij - D_i) q_i
template <typename T>
__global__ void __launch_bounds__(kThreads)
prev_dkv_kernel(const T* __restrict__ qkv, const T* __restrict__ gout, const float* __restrict__ lse,
                const float* __restrict__ delta, T* __restrict__ gqkv, BwdArgs a, Geo g, float scale) {
  constexpr int R = kMaxFallbackDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t j = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, n = blockIdx.z, h = blockIdx.y;
  if (j >= g.L) return;
  const T* x = qkv + n * a.sq.n;
  const T* go = gout + n * a.sg.n;
  const int64_t cq = g.qkv_channel(h, 0, 0), ck = g.qkv_channel(h, 1, 0), cv = g.qkv_channel(h, 2, 0);
  float dk[R] = {}, dv[R] = {};
  for (int64_t i = 0; i < g.L; ++i) {
    const int64_t nh = (n * g.H + h) * g.L + i;
    const float p = __expf(scale * warp_dot(x, cq, i, a.sq, x, ck, j, a.sq, g.ch) - lse[nh]);
    const float ds = p * (warp_dot(go, h * g.ch, i, a.sg, x, cv, j, a.sq, g.ch) - delta[nh]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < g.ch) {
        dv[r] += p * float(go[(h * g.ch + d) * a.sg.c + i * a.sg.l]);
        dk[r] += ds * float(x[(cq + d) * a.sq.c + i * a.sq.l]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < g.ch) {
      gqkv[n * a.sd.n + (ck + d) * a.sd.c + j * a.sd.l] = T(dk[r] * scale);
      gqkv[n * a.sd.n + (cv + d) * a.sd.c + j * a.sd.l] = T(dv[r]);
    }
  }
}

// ---- host side --------------------------------------------------------------------------------------

Geo geo_of(const Shape& s) { return {s.C, s.L, s.H, s.ch, s.new_order}; }

void check_cuda(const Shape& s, const at::Tensor& qkv) {
  TORCH_CHECK(qkv.scalar_type() != at::kDouble, "attention: float64 is supported on the CPU only");
  TORCH_CHECK(s.ch <= kMaxFallbackDim, "attention: head dim ", s.ch, " exceeds ", kMaxFallbackDim, " on CUDA");
  TORCH_CHECK(s.N <= 65535 && s.H <= 65535, "attention: batch and heads must be at most 65535 on CUDA");
}

template <typename T, int D, int KT>
void launch_tc(const at::Tensor& qkv, at::Tensor& out, at::Tensor& lse, const Shape& s, float scale,
               cudaStream_t stream) {
  auto kernel = prev_fwd_tc_kernel<T, D, KT>;
  constexpr int bytes = Smem<D, KT>::total;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  const dim3 grid(unsigned(ceil_div(s.L, kBlockQ)), unsigned(s.H), unsigned(s.N));
  kernel<<<grid, kThreads, bytes, stream>>>(qkv.data_ptr<T>(), strides_of(qkv), out.data_ptr<T>(),
                                            strides_of(out), lse.data_ptr<float>(), geo_of(s), scale);
}

// Largest dynamic shared memory a block may opt in to on the current device.
int smem_optin() {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
  return v;
}

// Key tile: one 64-key tile when L <= 64; for L <= 256 all keys in one 256-key tile where shared
// memory allows (the short-sequence path: no rescaling); otherwise 64-key tiles, online softmax.
template <typename T, int D>
void launch_tc_dim(const at::Tensor& qkv, at::Tensor& out, at::Tensor& lse, const Shape& s,
                   float scale, cudaStream_t stream) {
  if constexpr (D < 128) {
    if (s.L > 64 && s.L <= 256 && Smem<D, 256>::total <= smem_optin())
      return launch_tc<T, D, 256>(qkv, out, lse, s, scale, stream);
  }
  launch_tc<T, D, 64>(qkv, out, lse, s, scale, stream);
}

// The tensor-core path for fp16/bf16 at head dims 32, 64, 128; false when it does not apply.
template <typename T>
bool forward_tc(const at::Tensor& qkv, at::Tensor& out, at::Tensor& lse, const Shape& s, float scale,
                cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    switch (s.ch) {
      case 32: launch_tc_dim<T, 32>(qkv, out, lse, s, scale, stream); return true;
      case 64: launch_tc_dim<T, 64>(qkv, out, lse, s, scale, stream); return true;
      case 128: launch_tc_dim<T, 128>(qkv, out, lse, s, scale, stream); return true;
      default: return false;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& qkv, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention", qkv, heads, new_order);
  check_cuda(s, qkv);
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor out = empty_in_layout(s, s.C, qkv);
  at::Tensor lse = at::empty({s.N, s.H, s.L}, qkv.options().dtype(at::kFloat));
  if (qkv.numel() == 0) return {out, lse};
  const float scale = 1.f / std::sqrt(float(s.ch));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(qkv.scalar_type(), "attention_cuda", [&] {
    if (!forward_tc<scalar_t>(qkv, out, lse, s, scale, stream)) {
      const dim3 grid(unsigned(ceil_div(s.L, kWarps)), unsigned(s.H), unsigned(s.N));
      prev_fwd_simt_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          qkv.data_ptr<scalar_t>(), strides_of(qkv), out.data_ptr<scalar_t>(), strides_of(out),
          lse.data_ptr<float>(), geo_of(s), scale);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

at::Tensor backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                         const at::Tensor& lse_in, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention_backward", qkv, heads, new_order);
  check_cuda(s, qkv);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({s.N, s.C, s.L}) &&
                  grad_out.scalar_type() == qkv.scalar_type() && out.scalar_type() == qkv.scalar_type(),
              "attention_backward: grad_out and out must be [N, C, L] in qkv's dtype");
  TORCH_CHECK(lse_in.sizes() == at::IntArrayRef({s.N, s.H, s.L}) && lse_in.scalar_type() == at::kFloat,
              "attention_backward: lse must be float32 [N, heads, L]");
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor grad = empty_in_layout(s, 3 * s.C, qkv);
  if (qkv.numel() == 0) return grad;
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor delta = at::empty_like(lse);
  const float scale = 1.f / std::sqrt(float(s.ch));
  const BwdArgs a{strides_of(qkv), strides_of(out), strides_of(grad_out), strides_of(grad)};
  const dim3 grid(unsigned(ceil_div(s.L, kWarps)), unsigned(s.H), unsigned(s.N));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(qkv.scalar_type(), "attention_backward_cuda", [&] {
    prev_delta_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), a, delta.data_ptr<float>(), geo_of(s));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    prev_dq_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        qkv.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(),
        delta.data_ptr<float>(), grad.data_ptr<scalar_t>(), a, geo_of(s), scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    prev_dkv_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        qkv.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(),
        delta.data_ptr<float>(), grad.data_ptr<scalar_t>(), a, geo_of(s), scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastguide, m) {
  m.def("attention_previous(Tensor qkv, int num_heads, bool new_order) -> (Tensor, Tensor)");
  m.def(
      "attention_previous_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, "
      "int num_heads, bool new_order) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastguide, CUDA, m) {
  m.impl("attention_previous", &forward_cuda);
  m.impl("attention_previous_backward", &backward_cuda);
}

}  // namespace fastguide::attention::previous
