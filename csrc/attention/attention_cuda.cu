// Multi-head attention on CUDA: argument checks, the plan (tensor cores or SIMT, tile sizes from
// the device's limits: tc_config.h), the memory layout the kernels read in place, and the op
// registrations. The kernels: tc_fwd.cuh / tc_bwd.cuh (fp16/bf16, FlashAttention-2 style on
// mma.sync) and attention_simt.cu (fp32 and the rest).
//
// The tensor-core kernels read and write each tensor in place in one of two layouts, tokens-major
// (channel stride 1) or channel-major (position stride 1), given 16-byte alignment: pointer,
// batch stride and the other stride multiples of 8 elements, and in channel-major memory
// L % 8 == 0. Anything else (a channel-major qkv with L = 65, an odd strided view, a grad_out in
// the other layout than qkv) is copied once into the tokens-major layout first, and an output the
// kernels cannot write in place is written to a temporary and copied back.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <mutex>

#include "attention/attention.h"
#include "attention/attention_cuda.h"
#include "common/cuda_utils.cuh"

namespace fastguide::attention {

const tc::DeviceLimits& device_limits(int device) {
  static std::once_flag once[kMaxDevices];
  static tc::DeviceLimits cache[kMaxDevices];
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "attention: device index ", device, " out of range");
  std::call_once(once[device], [&] {
    tc::DeviceLimits v{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v.num_sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v.cc_major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v.cc_minor, cudaDevAttrComputeCapabilityMinor, device));
    cache[device] = v;
  });
  return cache[device];
}

namespace {

constexpr float kLog2e = 1.4426950408889634f;

View view_of(const at::Tensor& t) { return {t.stride(0), t.stride(2), t.stride(1)}; }

// Whether the tensor-core kernels can read or write the [N, K, L] tensor t in place.
bool fits(const at::Tensor& t, bool tokens) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  if (t.size(0) > 1 && t.stride(0) % 8 != 0) return false;
  if (tokens)
    return t.stride(1) == 1 && (t.size(2) == 1 || (t.stride(2) % 8 == 0 && std::abs(t.stride(2)) < kMaxTcStride));
  return t.stride(2) == 1 && t.size(2) % 8 == 0 && t.stride(1) % 8 == 0 && std::abs(t.stride(1)) < kMaxTcStride;
}

// A new [N, K, L] tensor in the tokens-major or channel-major layout.
at::Tensor empty_layout(const at::Tensor& like, int64_t K, bool tokens) {
  const int64_t N = like.size(0), L = like.size(2);
  if (tokens) return at::empty({N, L, K}, like.options()).transpose(1, 2);
  return at::empty({N, K, L}, like.options());
}

// t itself when the kernels can read it in the layout, else a copy in it.
at::Tensor readable(const at::Tensor& t, bool tokens) {
  return fits(t, tokens) ? t : empty_layout(t, t.size(1), tokens).copy_(t);
}

void check_cuda(const char* op, const Shape& s, const at::Tensor& qkv) {
  TORCH_CHECK(qkv.scalar_type() != at::kDouble, op, ": float64 is supported on the CPU only");
  TORCH_CHECK(s.ch <= tc::kMaxSimtDim, op, ": head dim ", s.ch, " exceeds ", tc::kMaxSimtDim, " on CUDA");
  TORCH_CHECK(s.N <= 65535 && s.H <= 65535, op, ": batch and heads must be at most 65535 on CUDA");
  TORCH_CHECK(s.L <= (int64_t(1) << 30), op, ": sequence length ", s.L, " is too long for CUDA");
}

// The layout the tensor-core kernels use: channel-major only where qkv fits it in place.
bool tc_tokens(const at::Tensor& qkv) { return fits(qkv, true) || !fits(qkv, false); }

tc::Plan plan_for(const at::Tensor& qkv, const Shape& s) {
  const bool half = qkv.scalar_type() == at::kHalf || qkv.scalar_type() == at::kBFloat16;
  tc::Plan plan = tc::make_plan(half, s.ch, s.L, s.N * s.H, device_limits(qkv.get_device()));
  // The copies and temporaries of forward_tc / backward_tc have the row stride of their layout:
  // tokens-major up to 3C (qkv, dqkv), channel-major L. The kernels' 32-bit tile offsets need it
  // below kMaxTcStride (fits() checks only the tensors used in place).
  const int64_t copy_stride = tc_tokens(qkv) ? 3 * s.C : s.L;
  if (plan.tc && copy_stride >= kMaxTcStride) {
    plan.tc = false;
    plan.why = "row stride " + std::to_string(copy_stride) + " >= " + std::to_string(kMaxTcStride) +
               ": SIMT kernels";
  }
  return plan;
}

HeadGeo geo_of(const Shape& s) { return {s.C, s.ch, s.new_order}; }

// The padded-dim template of the tensor-core launchers, from the plan's runtime Dp.
template <typename F>
void with_dp(int dp, F&& f) {
  switch (dp) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 160: return f(std::integral_constant<int, 160>{});
    case 192: return f(std::integral_constant<int, 192>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: TORCH_CHECK(false, "attention: no tensor-core kernels for padded head dim ", dp);
  }
}

template <typename T>
void forward_tc(const at::Tensor& qkv, at::Tensor& out, at::Tensor& lse, const Shape& s,
                const tc::Plan& plan, cudaStream_t stream) {
  const bool tokens = tc_tokens(qkv);
  const at::Tensor x = readable(qkv, tokens);
  at::Tensor y = fits(out, tokens) ? out : empty_layout(out, s.C, tokens);
  const float scale = 1.f / std::sqrt(float(s.ch));
  const FwdParams p{x.data_ptr(), view_of(x), y.data_ptr(), view_of(y), lse.data_ptr<float>(),
                    int(s.L), int(s.H), int(s.ch), geo_of(s), scale, scale * kLog2e};
  with_dp(plan.tiles.dp, [&](auto dp) {
    tc::launch_fwd<T, decltype(dp)::value>(p, tokens, plan.fwd_warps, int(s.N), stream);
  });
  if (!y.is_same(out)) out.copy_(y);
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& qkv, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention", qkv, heads, new_order);
  check_cuda("attention", s, qkv);
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor out = empty_in_layout(s, s.C, qkv);
  at::Tensor lse = at::empty({s.N, s.H, s.L}, qkv.options().dtype(at::kFloat));
  if (qkv.numel() == 0) return {out, lse};
  const tc::Plan plan = plan_for(qkv, s);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(qkv.scalar_type(), "attention_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, float>) {
      if (plan.tc) return forward_tc<scalar_t>(qkv, out, lse, s, plan, stream);
    }
    const float scale = 1.f / std::sqrt(float(s.ch));
    const FwdParams p{qkv.data_ptr(), view_of(qkv), out.data_ptr(), view_of(out), lse.data_ptr<float>(),
                      int(s.L), int(s.H), int(s.ch), geo_of(s), scale, scale * kLog2e};
    simt::launch_fwd<scalar_t>(p, plan.simt_regs, int(s.N), stream);
  });
  return {out, lse};
}

template <typename T>
void backward_tc(const at::Tensor& grad_out, const at::Tensor& qkv, at::Tensor& grad,
                 const at::Tensor& lse, const at::Tensor& delta, const Shape& s, const tc::Plan& plan,
                 cudaStream_t stream) {
  const bool tokens = tc_tokens(qkv);
  const at::Tensor x = readable(qkv, tokens), g = readable(grad_out, tokens);
  at::Tensor dx = fits(grad, tokens) ? grad : empty_layout(grad, 3 * s.C, tokens);
  const float scale = 1.f / std::sqrt(float(s.ch));
  const BwdParams p{x.data_ptr(), view_of(x), g.data_ptr(), view_of(g), dx.data_ptr(), view_of(dx),
                    lse.data_ptr<float>(), delta.data_ptr<float>(), int(s.L), int(s.H), int(s.ch),
                    geo_of(s), scale, scale * kLog2e};
  with_dp(plan.tiles.dp, [&](auto dp) { tc::launch_bwd<T, decltype(dp)::value>(p, tokens, int(s.N), stream); });
  if (!dx.is_same(grad)) grad.copy_(dx);
}

at::Tensor backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                         const at::Tensor& lse_in, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention_backward", qkv, heads, new_order);
  check_cuda("attention_backward", s, qkv);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({s.N, s.C, s.L}) &&
                  grad_out.scalar_type() == qkv.scalar_type() && out.scalar_type() == qkv.scalar_type(),
              "attention_backward: grad_out and out must be [N, C, L] in qkv's dtype");
  TORCH_CHECK(lse_in.sizes() == at::IntArrayRef({s.N, s.H, s.L}) && lse_in.scalar_type() == at::kFloat,
              "attention_backward: lse must be float32 [N, heads, L]");
  TORCH_CHECK(grad_out.device() == qkv.device() && out.device() == qkv.device() &&
                  lse_in.device() == qkv.device(),
              "attention_backward: grad_out, out and lse must be on qkv's device ", qkv.device());
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor grad = empty_in_layout(s, 3 * s.C, qkv);
  if (qkv.numel() == 0) return grad;
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor delta = at::empty_like(lse);
  const tc::Plan plan = plan_for(qkv, s);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(qkv.scalar_type(), "attention_backward_cuda", [&] {
    simt::launch_delta<scalar_t>(out.data_ptr(), view_of(out), grad_out.data_ptr(), view_of(grad_out),
                                 delta.data_ptr<float>(), int(s.L), int(s.H), int(s.ch), int(s.N), stream);
    if constexpr (!std::is_same_v<scalar_t, float>) {
      if (plan.tc) return backward_tc<scalar_t>(grad_out, qkv, grad, lse, delta, s, plan, stream);
    }
    const float scale = 1.f / std::sqrt(float(s.ch));
    const BwdParams p{qkv.data_ptr(), view_of(qkv), grad_out.data_ptr(), view_of(grad_out),
                      grad.data_ptr(), view_of(grad), lse.data_ptr<float>(), delta.data_ptr<float>(),
                      int(s.L), int(s.H), int(s.ch), geo_of(s), scale, scale * kLog2e};
    simt::launch_bwd<scalar_t>(p, plan.simt_regs, int(s.N), stream);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CUDA, m) {
  m.impl("attention", &forward_cuda);
  m.impl("attention_backward", &backward_cuda);
}

}  // namespace fastguide::attention
