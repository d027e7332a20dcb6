// Fused sampler steps on the CPU: one pass over the elements of x per step.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "sampler/sampler.h"
#include "sampler/sampler_host.h"

namespace fastguide::sampler {
namespace {

constexpr int64_t kGrain = 8192;

template <typename T>
const T* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// Calls f(i, o_pred, o_var, o_uncond_pred) for every element i of x in memory order, with the
// offsets of its prediction, its variance channel and its unconditional prediction.
template <typename F>
void for_each_step_element(const StepShape& s, F f) {
  const int64_t n = s.B * s.C * s.S;
  at::parallel_for(0, n, kGrain, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) {
      int64_t b, c, sp;
      decode(s.channels_last, i, s.C, s.S, b, c, sp);
      const int64_t op = offset(s.channels_last, b, c, sp, s.Cm, s.S);
      const int64_t ov = s.Cm == 2 * s.C ? offset(s.channels_last, b, c + s.C, sp, s.Cm, s.S) : op;
      const int64_t ou = s.cfg ? offset(s.channels_last, b + s.B, c, sp, s.Cm, s.S) : op;
      f(i, b, op, ov, ou);
    }
  });
}

template <typename T>
float guided_output(const T* out, int64_t op, int64_t ou, bool cfg, float w) {
  const float cond = float(out[op]);
  return cfg ? (1.f + w) * cond - w * float(out[ou]) : cond;  // (1+w)*eps(z,c) - w*eps(z)
}

// DDPM (ddpm=true) or DDIM step.
std::tuple<at::Tensor, at::Tensor> step_cpu(const char* op, bool ddpm, const at::Tensor& x_in,
                                            const at::Tensor& out_in, const at::Tensor& coef_in,
                                            const std::optional<at::Tensor>& grad_in,
                                            const std::optional<at::Tensor>& noise_in,
                                            double cfg_scale, int64_t pred, bool learned, bool clip) {
  const PreparedStep p = prepare_step(op, ddpm, learned, x_in, out_in, coef_in, grad_in, noise_in);
  const StepShape& s = p.s;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "sampler_step_cpu", [&] {
    const scalar_t *xp = p.x.data_ptr<scalar_t>(), *mo = p.out.data_ptr<scalar_t>();
    const scalar_t *gp = opt_ptr<scalar_t>(p.grad), *np = opt_ptr<scalar_t>(p.noise);
    const float* k = p.coef.data_ptr<float>();
    scalar_t *sp = p.sample.data_ptr<scalar_t>(), *x0p = p.x0.data_ptr<scalar_t>();
    const auto exp_fn = [](float v) { return std::exp(v); };
    for_each_step_element(s, [&](int64_t i, int64_t b, int64_t op, int64_t ov, int64_t ou) {
      const float o = guided_output(mo, op, ou, s.cfg, float(cfg_scale));
      const float g = gp ? float(gp[i]) : 0.f, z = np ? float(np[i]) : 0.f;
      const Step r = ddpm ? ddpm_update(k + b * kCoefs, pred, learned, clip, float(xp[i]), o, float(mo[ov]), g, z, exp_fn)
                          : ddim_update(k + b * kCoefs, pred, clip, gp != nullptr, float(xp[i]), o, g, z);
      sp[i] = scalar_t(r.sample);
      x0p[i] = scalar_t(r.x0);
    });
  });
  return {p.sample, p.x0};
}

std::tuple<at::Tensor, at::Tensor> ddpm_step_cpu(const at::Tensor& x, const at::Tensor& out,
                                                 const at::Tensor& coef, const std::optional<at::Tensor>& grad,
                                                 const std::optional<at::Tensor>& noise, double w,
                                                 int64_t pred, bool learned, bool clip) {
  return step_cpu("ddpm_step", true, x, out, coef, grad, noise, w, pred, learned, clip);
}

std::tuple<at::Tensor, at::Tensor> ddim_step_cpu(const at::Tensor& x, const at::Tensor& out,
                                                 const at::Tensor& coef, const std::optional<at::Tensor>& grad,
                                                 const std::optional<at::Tensor>& noise, double w,
                                                 int64_t pred, bool clip) {
  return step_cpu("ddim_step", false, x, out, coef, grad, noise, w, pred, false, clip);
}

// Euler (heun=false) or Heun update over [B, ...] tensors with per-sample sigmas.
at::Tensor sigma_step_cpu(const char* op, const std::vector<at::Tensor>& xs_in,
                          const at::Tensor& sigma, const at::Tensor& sigma_next) {
  check_sigma_step(op, xs_in, sigma, sigma_next);
  std::vector<at::Tensor> xs;
  for (const auto& t : xs_in) xs.push_back(t.contiguous());
  at::Tensor y = at::empty_like(xs[0]);
  const int64_t B = xs[0].size(0), per = B == 0 ? 0 : xs[0].numel() / B;
  const bool heun = xs.size() == 4;
  const float *sg = sigma.contiguous().data_ptr<float>(), *sn = sigma_next.contiguous().data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "sigma_step_cpu", [&] {
    const scalar_t *x = xs[0].data_ptr<scalar_t>(), *d = xs[1].data_ptr<scalar_t>();
    const scalar_t *x2 = heun ? xs[2].data_ptr<scalar_t>() : nullptr, *d2 = heun ? xs[3].data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, xs[0].numel(), kGrain, [&](int64_t b0, int64_t e0) {
      for (int64_t i = b0; i < e0; ++i) {
        const int64_t b = i / per;
        yp[i] = scalar_t(heun ? heun_update(float(x[i]), float(d[i]), float(x2[i]), float(d2[i]), sg[b], sn[b])
                              : euler_update(float(x[i]), float(d[i]), sg[b], sn[b]));
      }
    });
  });
  return y;
}

at::Tensor euler_step_cpu(const at::Tensor& x, const at::Tensor& denoised, const at::Tensor& sigma,
                          const at::Tensor& sigma_next) {
  return sigma_step_cpu("euler_step", {x, denoised}, sigma, sigma_next);
}

at::Tensor heun_step_cpu(const at::Tensor& x, const at::Tensor& denoised, const at::Tensor& x_next,
                         const at::Tensor& denoised_next, const at::Tensor& sigma,
                         const at::Tensor& sigma_next) {
  return sigma_step_cpu("heun_step", {x, denoised, x_next, denoised_next}, sigma, sigma_next);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CPU, m) {
  m.impl("ddpm_step", &ddpm_step_cpu);
  m.impl("ddim_step", &ddim_step_cpu);
  m.impl("euler_step", &euler_step_cpu);
  m.impl("heun_step", &heun_step_cpu);
}

}  // namespace fastguide::sampler
