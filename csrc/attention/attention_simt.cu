// SIMT attention kernels: float32 (where TF32 tensor cores would miss the fp32 tolerance), head
// dims the tensor-core kernels do not take (not a multiple of 8, or 257..512), and calls whose
// copies would have row strides beyond the tensor-core kernels' 32-bit tile offsets. (The plan
// also sends devices below sm_80 here, but the build targets sm_80 and up.) Any strides. A warp owns one query (forward, dQ) or one key (dK dV) row; lane i holds
// channels i, i + 32, ... of it in R = ceil(d / 32) registers (rounded up to a power of two), so
// the register file is sized to the real head dim. Logits are warp-shuffle dot products with an
// online softmax (forward) or recomputed from the saved log-sum-exp (backward); K and V are read
// through L1/L2 for every row, so this path is for correctness and coverage, not speed.
// Also here: the D_i = rowsum(dO_i * O_i) kernel both backward paths use.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include "attention/attention_cuda.h"
#include "common/cuda_utils.cuh"

namespace fastguide::attention::simt {
namespace {

using fastguide::cuda::warp_sum;
constexpr int kWarps = 4, kThreads = 32 * kWarps;

template <typename T>
__device__ __forceinline__ float at(const T* base, View v, int64_t c, int64_t l) {
  return float(base[c * v.dim + l * v.seq]);
}

template <typename T, int R>
__global__ void __launch_bounds__(kThreads, 1) fwd_kernel(const FwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, h = blockIdx.y, n = blockIdx.z;
  if (row >= p.L) return;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const int64_t cq = p.geo.channel(h, 0), ck = p.geo.channel(h, 1), cv = p.geo.channel(h, 2);
  float q[R], o[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int d = lane + 32 * i;
    q[i] = d < p.d ? at(x, p.vq, cq + d, row) * p.scale : 0.f;
    o[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j < p.L; ++j) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int d = lane + 32 * i;
      if (d < p.d) s += q[i] * at(x, p.vq, ck + d, j);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s), alpha = __expf(m - m_new), e = __expf(s - m_new);
    l = l * alpha + e;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int d = lane + 32 * i;
      o[i] = o[i] * alpha + (d < p.d ? e * at(x, p.vq, cv + d, j) : 0.f);
    }
    m = m_new;
  }
  T* y = static_cast<T*>(p.out) + n * p.vo.n;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int d = lane + 32 * i;
    if (d < p.d) y[(h * p.d + d) * p.vo.dim + row * p.vo.seq] = T(o[i] / l);
  }
  if (lane == 0) p.lse[(n * p.H + h) * p.L + row] = m + logf(l);
}

// dot(x_i, y_j) over the head dim, x and y given as (tensor, view, channel base, row).
template <typename T>
__device__ float warp_dot(const T* x, View vx, int64_t cx, int64_t rx, const T* y, View vy,
                          int64_t cy, int64_t ry, int d) {
  float s = 0.f;
  for (int dd = threadIdx.x % 32; dd < d; dd += 32) s += at(x, vx, cx + dd, rx) * at(y, vy, cy + dd, ry);
  return warp_sum(s);
}

// dQ_i = scale sum_j P_ij (dP_ij - D_i) k_j,  P_ij = exp(scale q_i.k_j - lse_i),  dP_ij = dO_i.v_j
template <typename T, int R>
__global__ void __launch_bounds__(kThreads, 1) dq_kernel(const BwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, h = blockIdx.y, n = blockIdx.z;
  if (i >= p.L) return;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const T* go = static_cast<const T*>(p.gout) + n * p.vg.n;
  const int64_t cq = p.geo.channel(h, 0), ck = p.geo.channel(h, 1), cv = p.geo.channel(h, 2);
  const int64_t nh = (n * p.H + h) * p.L;
  const float lse_i = p.lse[nh + i], D_i = p.delta[nh + i];
  float dq[R] = {};
  for (int64_t j = 0; j < p.L; ++j) {
    const float pr = __expf(p.scale * warp_dot(x, p.vq, cq, i, x, p.vq, ck, j, p.d) - lse_i);
    const float dp = warp_dot(go, p.vg, h * p.d, i, x, p.vq, cv, j, p.d);
    const float ds = pr * (dp - D_i);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int d = lane + 32 * r;
      if (d < p.d) dq[r] += ds * at(x, p.vq, ck + d, j);
    }
  }
  T* g = static_cast<T*>(p.gqkv) + n * p.vd.n;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int d = lane + 32 * r;
    if (d < p.d) g[(cq + d) * p.vd.dim + i * p.vd.seq] = T(dq[r] * p.scale);
  }
}

// dV_j = sum_i P_ij dO_i;  dK_j = scale sum_i P_ij (dP_ij - D_i) q_i
template <typename T, int R>
__global__ void __launch_bounds__(kThreads, 1) dkv_kernel(const BwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t j = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32, h = blockIdx.y, n = blockIdx.z;
  if (j >= p.L) return;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const T* go = static_cast<const T*>(p.gout) + n * p.vg.n;
  const int64_t cq = p.geo.channel(h, 0), ck = p.geo.channel(h, 1), cv = p.geo.channel(h, 2);
  const int64_t nh = (n * p.H + h) * p.L;
  float dk[R] = {}, dv[R] = {};
  for (int64_t i = 0; i < p.L; ++i) {
    const float pr = __expf(p.scale * warp_dot(x, p.vq, cq, i, x, p.vq, ck, j, p.d) - p.lse[nh + i]);
    const float ds = pr * (warp_dot(go, p.vg, h * p.d, i, x, p.vq, cv, j, p.d) - p.delta[nh + i]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int d = lane + 32 * r;
      if (d < p.d) {
        dv[r] += pr * at(go, p.vg, h * p.d + d, i);
        dk[r] += ds * at(x, p.vq, cq + d, i);
      }
    }
  }
  T* g = static_cast<T*>(p.gqkv) + n * p.vd.n;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int d = lane + 32 * r;
    if (d < p.d) {
      g[(ck + d) * p.vd.dim + j * p.vd.seq] = T(dk[r] * p.scale);
      g[(cv + d) * p.vd.dim + j * p.vd.seq] = T(dv[r]);
    }
  }
}

// One thread a row: consecutive threads read consecutive positions, coalesced in the
// channel-major layout; in the tokens layout each thread walks its row through L1.
template <typename T>
__global__ void __launch_bounds__(128) delta_kernel(const T* __restrict__ out, View vo,
                                                    const T* __restrict__ gout, View vg,
                                                    float* __restrict__ delta, int L, int H, int d) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, h = blockIdx.y, n = blockIdx.z;
  if (row >= L) return;
  const T* o = out + n * vo.n + h * d * vo.dim + row * vo.seq;
  const T* g = gout + n * vg.n + h * d * vg.dim + row * vg.seq;
  float s = 0.f;
  for (int dd = 0; dd < d; ++dd) s += float(o[dd * vo.dim]) * float(g[dd * vg.dim]);
  delta[(n * H + h) * L + row] = s;
}

dim3 grid_rows(int L, int H, int N, int rows) {
  return dim3(unsigned((int64_t(L) + rows - 1) / rows), unsigned(H), unsigned(N));
}

#define FG_SIMT_REGS(REGS, ...)                                                         \
  switch (REGS) {                                                                       \
    case 1: { constexpr int R = 1; __VA_ARGS__; break; }                                \
    case 2: { constexpr int R = 2; __VA_ARGS__; break; }                                \
    case 4: { constexpr int R = 4; __VA_ARGS__; break; }                                \
    case 8: { constexpr int R = 8; __VA_ARGS__; break; }                                \
    case 16: { constexpr int R = 16; __VA_ARGS__; break; }                              \
    default: TORCH_CHECK(false, "attention: no SIMT kernel for ", REGS, " registers"); \
  }

}  // namespace

template <typename T>
void launch_fwd(const FwdParams& p, int regs, int N, cudaStream_t stream) {
  FG_SIMT_REGS(regs, fwd_kernel<T, R><<<grid_rows(p.L, p.H, N, kWarps), kThreads, 0, stream>>>(p));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bwd(const BwdParams& p, int regs, int N, cudaStream_t stream) {
  const dim3 grid = grid_rows(p.L, p.H, N, kWarps);
  FG_SIMT_REGS(regs, dq_kernel<T, R><<<grid, kThreads, 0, stream>>>(p));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FG_SIMT_REGS(regs, dkv_kernel<T, R><<<grid, kThreads, 0, stream>>>(p));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_delta(const void* out, View vo, const void* gout, View vg, float* delta, int L, int H,
                  int d, int N, cudaStream_t stream) {
  delta_kernel<T><<<grid_rows(L, H, N, 128), 128, 0, stream>>>(
      static_cast<const T*>(out), vo, static_cast<const T*>(gout), vg, delta, L, H, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define FG_SIMT_INSTANTIATE(T)                                                                    \
  template void launch_fwd<T>(const FwdParams&, int, int, cudaStream_t);                         \
  template void launch_bwd<T>(const BwdParams&, int, int, cudaStream_t);                         \
  template void launch_delta<T>(const void*, View, const void*, View, float*, int, int, int, int, \
                                cudaStream_t);
FG_SIMT_INSTANTIATE(float)
FG_SIMT_INSTANTIATE(c10::Half)
FG_SIMT_INSTANTIATE(c10::BFloat16)

}  // namespace fastguide::attention::simt
