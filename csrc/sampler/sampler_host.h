// Host-side checks and layout handling shared by the CPU and CUDA sampler-step ops.
#pragma once
#include "common/check.h"

namespace fastguide::sampler {

struct StepShape {
  int64_t B, C, S;      // samples, channels of x, spatial size
  bool channels_last;   // memory is [B, S, C]
  bool cfg;             // model_output holds [conditional; unconditional] rows (2B)
  int64_t Cm;           // channels of model_output (C, or 2C with a learned variance)
};

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", d);
}

// x: [B, C, *spatial]. model_output: [B or 2B, C or 2C, *spatial] in x's dtype; coef [B, 8] fp32.
inline StepShape check_step(const char* op, const at::Tensor& x, const at::Tensor& out,
                            const at::Tensor& coef, const std::optional<at::Tensor>& grad,
                            const std::optional<at::Tensor>& noise) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must be [B, C, *spatial]");
  check_float_dtype(x, op, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(out.dim() == x.dim() && (out.size(0) == B || out.size(0) == 2 * B) &&
                  (out.size(1) == C || out.size(1) == 2 * C) && out.sizes().slice(2) == x.sizes().slice(2),
              op, ": model_output must be [B or 2B, C or 2C, *spatial] for x of shape ", x.sizes(),
              ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(), op,
              ": model_output must have x's dtype and device");
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == B && coef.size(1) == 8 &&
                  coef.scalar_type() == at::kFloat && coef.device() == x.device(),
              op, ": coef must be float32 [B, 8] on x's device");
  for (const auto* t : {&grad, &noise})
    if (t->has_value())
      TORCH_CHECK((*t)->sizes() == x.sizes() && (*t)->scalar_type() == x.scalar_type() &&
                      (*t)->device() == x.device(),
                  op, ": grad and noise must match x in shape, dtype and device");
  const int64_t S = (B * C) == 0 ? 0 : x.numel() / (B * C);
  const bool cl = !x.is_contiguous() && is_channels_last_like(x);
  return {B, C, S, cl, out.size(0) == 2 * B, out.size(1)};
}

// The tensor in the layout the kernels index: x's (channels-last or contiguous).
inline at::Tensor in_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  if (is_channels_last_like(t)) return t;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < t.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  std::vector<int64_t> inv(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) inv[perm[i]] = i;
  return t.permute(perm).contiguous().permute(inv);
}

inline at::Tensor opt_in_layout(const std::optional<at::Tensor>& t, bool cl) {
  return t.has_value() ? in_layout(*t, cl) : at::Tensor();
}

// Checked inputs in the kernels' layout, and the two outputs (sample, pred_xstart).
struct PreparedStep {
  StepShape s;
  at::Tensor x, out, grad, noise, coef, sample, x0;
};

inline PreparedStep prepare_step(const char* op, bool ddpm, bool learned, const at::Tensor& x,
                                 const at::Tensor& out, const at::Tensor& coef,
                                 const std::optional<at::Tensor>& grad,
                                 const std::optional<at::Tensor>& noise) {
  const StepShape s = check_step(op, x, out, coef, grad, noise);
  TORCH_CHECK(!ddpm || !learned || s.Cm == 2 * s.C, op, ": a learned variance needs 2C output channels");
  const bool cl = s.channels_last;
  PreparedStep p{s, in_layout(x, cl), in_layout(out, cl), opt_in_layout(grad, cl),
                 opt_in_layout(noise, cl), coef.contiguous(), {}, {}};
  p.sample = at::empty_like(p.x);
  p.x0 = at::empty_like(p.x);
  return p;
}

inline void check_sigma_step(const char* op, const std::vector<at::Tensor>& xs,
                             const at::Tensor& sigma, const at::Tensor& sigma_next) {
  const at::Tensor& x = xs[0];
  TORCH_CHECK(x.dim() >= 1, op, ": x must have a batch dimension");
  check_float_dtype(x, op, "x");
  for (const auto& t : xs)
    TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.device() == x.device(),
                op, ": every sample tensor must match x in shape, dtype and device");
  for (const auto* s : {&sigma, &sigma_next})
    TORCH_CHECK(s->dim() == 1 && s->size(0) == x.size(0) && s->scalar_type() == at::kFloat &&
                    s->device() == x.device(),
                op, ": sigma and sigma_next must be float32 [B] on x's device");
}

}  // namespace fastguide::sampler
