// Fused sampler steps: the per-element maths (shared by the CPU and CUDA kernels) and the
// element indexing. Schedules reach the kernels as per-sample coefficient rows gathered on the
// device, so a sampling loop never syncs with the host.
//
// DDPM row (kDdpmCoefs floats per sample), from the diffusion at t:
//   c0 = 1/sqrt(abar), c1 = sqrt(1/abar - 1), post1, post2 (posterior mean coefficients),
//   min_log (posterior log-variance, clipped; the fixed log-variance when not learned),
//   max_log (log beta), nonzero (t > 0), variance (the fixed variance the classifier shift uses;
//   guided-diffusion's posterior variance is 0 at t = 0 while its clipped log is not)
// DDIM row: c0, c1, sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma, sqrt(1 - abar), nonzero
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastguide::sampler {

constexpr int kCoefs = 8;  // floats per coefficient row (DDPM uses 8, DDIM 7)
enum Prediction : int64_t { kEps = 0, kX0 = 1, kV = 2 };

// x0 from the network's output: eps (x0 = c0*x - c1*eps), x0 itself, or v
// (x0 = sqrt(abar)*x - sqrt(1-abar)*v, with sqrt(abar) = 1/c0 and sqrt(1-abar) = c1/c0).
FG_HD float predict_x0(int64_t pred, float x, float out, float c0, float c1) {
  if (pred == kEps) return c0 * x - c1 * out;
  if (pred == kX0) return out;
  return (x - c1 * out) / c0;
}

FG_HD float clip_unit(float v) { return v < -1.f ? -1.f : (v > 1.f ? 1.f : v); }  // NaN stays

struct Step {
  float sample, x0;
};

// Ancestral DDPM step with guided-diffusion's p_mean_variance and condition_mean:
//   log var = frac*max_log + (1-frac)*min_log, frac = (v+1)/2   (learned range)
//   mean = post1*x0 + post2*x + var*grad,  sample = mean + nonzero*exp(log var / 2)*z
template <typename Exp>
FG_HD Step ddpm_update(const float* k, int64_t pred, bool learned, bool clip, float x, float out,
                       float v, float grad, float noise, Exp exp_fn) {
  float x0 = predict_x0(pred, x, out, k[0], k[1]);
  if (clip) x0 = clip_unit(x0);
  float log_var = k[4];
  if (learned) {
    const float frac = 0.5f * (v + 1.f);
    log_var = frac * k[5] + (1.f - frac) * k[4];
  }
  const float var = learned ? exp_fn(log_var) : k[7];
  const float mean = k[2] * x0 + k[3] * x + var * grad;
  return {mean + k[6] * exp_fn(0.5f * log_var) * noise, x0};
}

// DDIM(eta) step with guided-diffusion's condition_score (Song et al. eq. 12):
//   eps = (c0*x - x0)/c1; with guidance eps -= sqrt(1-abar)*grad and x0 is re-derived (unclipped)
//   sample = sqrt(abar_prev)*x0 + sqrt(1-abar_prev-sigma^2)*eps + nonzero*sigma*z
FG_HD Step ddim_update(const float* k, int64_t pred, bool clip, bool guided, float x, float out,
                       float grad, float noise) {
  float x0 = predict_x0(pred, x, out, k[0], k[1]);
  if (clip) x0 = clip_unit(x0);
  float eps = (k[0] * x - x0) / k[1];
  if (guided) {
    eps -= k[5] * grad;
    x0 = k[0] * x - k[1] * eps;
    eps = (k[0] * x - x0) / k[1];
  }
  return {x0 * k[2] + k[3] * eps + k[6] * k[4] * noise, x0};
}

// Probability-flow ODE slope d = (x - D)/sigma; Euler: x + (sigma_next - sigma)*d; Heun averages
// the slopes at sigma and at the Euler prediction (EDM Algorithm 1).
FG_HD float euler_update(float x, float d, float sigma, float sigma_next) {
  return x + (sigma_next - sigma) * ((x - d) / sigma);
}
FG_HD float heun_update(float x, float d, float x_next, float d_next, float sigma, float sigma_next) {
  const float slope = (x - d) / sigma, slope_next = (x_next - d_next) / sigma_next;
  return x + (sigma_next - sigma) * (0.5f * slope + 0.5f * slope_next);
}

}  // namespace fastguide::sampler
