// Fused sampler steps on CUDA: one grid-stride pass over the elements of x per step. These are
// memory-bound and tiny next to the network; what they save is launches and host syncs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "sampler/sampler.h"
#include "sampler/sampler_host.h"

namespace fastguide::sampler {
namespace {

using fastguide::cuda::ceil_div;
using fastguide::cuda::num_sms;

constexpr int kThreads = 256;

dim3 grid_for(int64_t n) {
  return dim3(unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 8 * num_sms()))));
}

struct Fexp {
  __device__ float operator()(float v) const { return expf(v); }
};

template <typename T>
__device__ __forceinline__ float guided_output(const T* out, int64_t op, int64_t ou, bool cfg, float w) {
  const float cond = float(out[op]);
  return cfg ? (1.f + w) * cond - w * float(out[ou]) : cond;  // (1+w)*eps(z,c) - w*eps(z)
}

// DDIM when !DDPM (the variance channel is then unused).
template <typename T, bool DDPM>
__global__ void __launch_bounds__(kThreads)
step_kernel(const T* __restrict__ x, const T* __restrict__ out, const float* __restrict__ coef,
            const T* __restrict__ grad, const T* __restrict__ noise, T* __restrict__ sample,
            T* __restrict__ x0, StepShape s, float w, int64_t pred, bool learned, bool clip) {
  const int64_t n = s.B * s.C * s.S;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, c, sp;
    decode(s.channels_last, i, s.C, s.S, b, c, sp);
    const int64_t op = offset(s.channels_last, b, c, sp, s.Cm, s.S);
    const int64_t ou = s.cfg ? offset(s.channels_last, b + s.B, c, sp, s.Cm, s.S) : op;
    const float o = guided_output(out, op, ou, s.cfg, w);
    const float g = grad ? float(grad[i]) : 0.f, z = noise ? float(noise[i]) : 0.f;
    Step r;
    if constexpr (DDPM) {
      const int64_t ov = s.Cm == 2 * s.C ? offset(s.channels_last, b, c + s.C, sp, s.Cm, s.S) : op;
      r = ddpm_update(coef + b * kCoefs, pred, learned, clip, float(x[i]), o, float(out[ov]), g, z, Fexp{});
    } else {
      r = ddim_update(coef + b * kCoefs, pred, clip, grad != nullptr, float(x[i]), o, g, z);
    }
    sample[i] = T(r.sample);
    x0[i] = T(r.x0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
sigma_kernel(const T* __restrict__ x, const T* __restrict__ d, const T* __restrict__ x2,
             const T* __restrict__ d2, const float* __restrict__ sigma,
             const float* __restrict__ sigma_next, T* __restrict__ y, int64_t n, int64_t per) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / per;
    y[i] = T(x2 ? heun_update(float(x[i]), float(d[i]), float(x2[i]), float(d2[i]), sigma[b], sigma_next[b])
                : euler_update(float(x[i]), float(d[i]), sigma[b], sigma_next[b]));
  }
}

template <typename T>
const T* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

std::tuple<at::Tensor, at::Tensor> step_cuda(const char* op, bool ddpm, const at::Tensor& x_in,
                                             const at::Tensor& out_in, const at::Tensor& coef_in,
                                             const std::optional<at::Tensor>& grad_in,
                                             const std::optional<at::Tensor>& noise_in,
                                             double cfg_scale, int64_t pred, bool learned, bool clip) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const PreparedStep p = prepare_step(op, ddpm, learned, x_in, out_in, coef_in, grad_in, noise_in);
  const StepShape& s = p.s;
  const int64_t n = p.x.numel();
  if (n == 0) return {p.sample, p.x0};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(p.x.scalar_type(), "sampler_step_cuda", [&] {
    const auto args = std::make_tuple(p.x.data_ptr<scalar_t>(), p.out.data_ptr<scalar_t>(), p.coef.data_ptr<float>(),
                                      opt_ptr<scalar_t>(p.grad), opt_ptr<scalar_t>(p.noise),
                                      p.sample.data_ptr<scalar_t>(), p.x0.data_ptr<scalar_t>());
    auto launch = [&](auto kernel) {
      std::apply([&](auto... a) {
        kernel<<<grid_for(n), kThreads, 0, stream>>>(a..., s, float(cfg_scale), pred, learned, clip);
      }, args);
    };
    if (ddpm) launch(step_kernel<scalar_t, true>);
    else launch(step_kernel<scalar_t, false>);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {p.sample, p.x0};
}

std::tuple<at::Tensor, at::Tensor> ddpm_step_cuda(const at::Tensor& x, const at::Tensor& out,
                                                  const at::Tensor& coef, const std::optional<at::Tensor>& grad,
                                                  const std::optional<at::Tensor>& noise, double w,
                                                  int64_t pred, bool learned, bool clip) {
  return step_cuda("ddpm_step", true, x, out, coef, grad, noise, w, pred, learned, clip);
}

std::tuple<at::Tensor, at::Tensor> ddim_step_cuda(const at::Tensor& x, const at::Tensor& out,
                                                  const at::Tensor& coef, const std::optional<at::Tensor>& grad,
                                                  const std::optional<at::Tensor>& noise, double w,
                                                  int64_t pred, bool clip) {
  return step_cuda("ddim_step", false, x, out, coef, grad, noise, w, pred, false, clip);
}

at::Tensor sigma_step_cuda(const char* op, const std::vector<at::Tensor>& xs_in, const at::Tensor& sigma,
                           const at::Tensor& sigma_next) {
  check_sigma_step(op, xs_in, sigma, sigma_next);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  std::vector<at::Tensor> xs;
  for (const auto& t : xs_in) xs.push_back(t.contiguous());
  at::Tensor y = at::empty_like(xs[0]);
  const int64_t n = y.numel(), B = y.size(0);
  if (n == 0) return y;
  const bool heun = xs.size() == 4;
  const at::Tensor sg = sigma.contiguous(), sn = sigma_next.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FG_DISPATCH_FLOAT_HALF_BF16(y.scalar_type(), "sigma_step_cuda", [&] {
    sigma_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        xs[0].data_ptr<scalar_t>(), xs[1].data_ptr<scalar_t>(),
        heun ? xs[2].data_ptr<scalar_t>() : nullptr, heun ? xs[3].data_ptr<scalar_t>() : nullptr,
        sg.data_ptr<float>(), sn.data_ptr<float>(), y.data_ptr<scalar_t>(), n, n / B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor euler_step_cuda(const at::Tensor& x, const at::Tensor& d, const at::Tensor& sigma,
                           const at::Tensor& sigma_next) {
  return sigma_step_cuda("euler_step", {x, d}, sigma, sigma_next);
}

at::Tensor heun_step_cuda(const at::Tensor& x, const at::Tensor& d, const at::Tensor& x_next,
                          const at::Tensor& d_next, const at::Tensor& sigma, const at::Tensor& sigma_next) {
  return sigma_step_cuda("heun_step", {x, d, x_next, d_next}, sigma, sigma_next);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CUDA, m) {
  m.impl("ddpm_step", &ddpm_step_cuda);
  m.impl("ddim_step", &ddim_step_cuda);
  m.impl("euler_step", &euler_step_cuda);
  m.impl("heun_step", &heun_step_cuda);
}

}  // namespace fastguide::sampler
