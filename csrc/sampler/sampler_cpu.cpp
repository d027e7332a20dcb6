// Fused sampler steps on the CPU: one pass over the elements of x per step, in x's memory
// order; the other operands are read through their strides (sampler_layout.h).
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

// Calls f(i, b, off) for every element i of x (memory order) with its sample index b and the
// offsets off[k] of operands 0 .. nops - 1. Runs along x's inner dim are decoded once.
template <typename F>
void for_each_element(const Walk& w, int64_t n, int nops, F f) {
  const bool along = w.inner >= 0 && w.inner != w.batch;
  const int64_t run = along ? w.size[w.inner] : 1;
  at::parallel_for(0, n / run, std::max<int64_t>(1, kGrain / run), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t base[kMaxOperands], off[kMaxOperands], b;
      walk_offsets<int64_t>(w, r * run, nops, base, b);
      for (int64_t j = 0; j < run; ++j) {
        for (int k = 0; k < nops; ++k) off[k] = base[k] + (along ? j * w.st[k][w.inner] : 0);
        f(r * run + j, b, off);
      }
    }
  });
}

// DDPM (ddpm=true) or DDIM step.
std::tuple<at::Tensor, at::Tensor> step_cpu(const char* op, bool ddpm, const at::Tensor& x_in,
                                            const at::Tensor& out_in, const at::Tensor& coef_in,
                                            const std::optional<at::Tensor>& grad_in,
                                            const std::optional<at::Tensor>& noise_in,
                                            double cfg_scale, int64_t pred, bool learned, bool clip) {
  const PreparedStep p = prepare_step(op, ddpm, learned, x_in, out_in, coef_in, grad_in, noise_in);
  if (p.x.numel() == 0) return {p.sample, p.x0};
  const bool cfg = p.s.cfg, var = ddpm && learned;
  const float w = float(cfg_scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "sampler_step_cpu", [&] {
    const scalar_t *xp = p.x.data_ptr<scalar_t>(), *mo = p.out.data_ptr<scalar_t>();
    const scalar_t *gp = opt_ptr<scalar_t>(p.grad), *np = opt_ptr<scalar_t>(p.noise);
    const float* k = p.coef.data_ptr<float>();
    scalar_t *sp = p.sample.data_ptr<scalar_t>(), *x0p = p.x0.data_ptr<scalar_t>();
    const auto exp_fn = [](float v) { return std::exp(v); };
    for_each_element(p.w, p.x.numel(), 3, [&](int64_t i, int64_t b, const int64_t* o) {
      const float cond = float(mo[o[0]]);
      const float e = cfg ? (1.f + w) * cond - w * float(mo[o[0] + p.uncond]) : cond;  // (1+w)eps(z,c) - w eps(z)
      const float v = var ? float(mo[o[0] + p.var]) : 0.f;
      const float g = gp ? float(gp[o[1]]) : 0.f, z = np ? float(np[o[2]]) : 0.f;
      const Step r = ddpm ? ddpm_update(k + b * kCoefs, pred, learned, clip, float(xp[i]), e, v, g, z, exp_fn)
                          : ddim_update(k + b * kCoefs, pred, clip, gp != nullptr, float(xp[i]), e, g, z);
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

// Euler (xs = x, denoised) or Heun (xs = x, denoised, x_next, denoised_next) with per-sample sigmas.
at::Tensor sigma_step_cpu(const char* op, const std::vector<at::Tensor>& xs,
                          const at::Tensor& sigma, const at::Tensor& sigma_next) {
  check_sigma_step(op, xs, sigma, sigma_next);
  const at::Tensor x = dense(xs[0]);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const bool heun = xs.size() == 4;
  const std::vector<at::Tensor> ops(xs.begin() + 1, xs.end());
  const Walk w = walk_of(x, ops);
  const at::Tensor sg = sigma.contiguous(), sn = sigma_next.contiguous();
  const float *sgp = sg.data_ptr<float>(), *snp = sn.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "sigma_step_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *d = ops[0].data_ptr<scalar_t>();
    const scalar_t *x2 = heun ? ops[1].data_ptr<scalar_t>() : nullptr, *d2 = heun ? ops[2].data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    for_each_element(w, x.numel(), heun ? 3 : 1, [&](int64_t i, int64_t b, const int64_t* o) {
      yp[i] = scalar_t(heun ? heun_update(float(xp[i]), float(d[o[0]]), float(x2[o[1]]), float(d2[o[2]]), sgp[b], snp[b])
                            : euler_update(float(xp[i]), float(d[o[0]]), sgp[b], snp[b]));
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
