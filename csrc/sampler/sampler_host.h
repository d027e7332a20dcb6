// Host-side checks and layouts shared by the CPU and CUDA sampler-step ops. x is taken in its
// own layout when it is dense (any permutation: contiguous, channels-last, ...) and the outputs
// take x's strides; the other operands are read in place through their strides
// (sampler_layout.h). Only a non-dense x is copied (to contiguous).
#pragma once
#include <vector>

#include "common/check.h"
#include "sampler/sampler_layout.h"

namespace fastguide::sampler {

struct StepShape {
  int64_t B, C;  // samples and channels of x
  bool cfg;      // model_output holds [conditional; unconditional] rows (2B)
  int64_t Cm;    // channels of model_output (C, or 2C with a learned variance)
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
  TORCH_CHECK(x.dim() <= kMaxDims, op, ": x may have at most ", kMaxDims, " dims, got ", x.dim());
  check_float_dtype(x, op, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(out.dim() == x.dim() && (out.size(0) == B || out.size(0) == 2 * B) &&
                  (out.size(1) == C || out.size(1) == 2 * C) && out.sizes().slice(2) == x.sizes().slice(2),
              op, ": model_output must be [B or 2B, C or 2C, *spatial] for x of shape ", x.sizes(),
              ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), op, ": model_output must have x's dtype");
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == B && coef.size(1) == 8 && coef.scalar_type() == at::kFloat,
              op, ": coef must be float32 [B, 8]");
  for (const auto* t : {&grad, &noise})
    if (t->has_value())
      TORCH_CHECK((*t)->sizes() == x.sizes() && (*t)->scalar_type() == x.scalar_type(), op,
                  ": grad and noise must match x in shape and dtype");
  check_same_device(op, x, {{&out, "model_output"}, {&coef, "coef"}});
  if (grad.has_value()) check_same_device(op, x, {{&*grad, "grad"}});
  if (noise.has_value()) check_same_device(op, x, {{&*noise, "noise"}});
  return {B, C, out.size(0) == 2 * B, out.size(1)};
}

// x itself when dense, else a contiguous copy: the kernels walk x in memory order.
inline at::Tensor dense(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x : x.contiguous();
}

// The walk of dense x with its operands (undefined ones count as absent).
inline Walk walk_of(const at::Tensor& x, const std::vector<at::Tensor>& ops) {
  TORCH_CHECK(x.dim() <= kMaxDims && ops.size() <= size_t(kMaxOperands), "sampler step: too many dims");
  TORCH_CHECK(x.numel() < (int64_t(1) << 50), "sampler step: x is too large");
  Walk w;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) == 1) continue;
    int64_t st[kMaxOperands] = {};
    for (size_t k = 0; k < ops.size(); ++k) st[k] = ops[k].defined() ? ops[k].stride(d) : 0;
    const int e = w.nd - 1;
    if (d > 0 && e >= 0 && e != w.batch) {  // merge into the previous dim when all run on
      bool run = w.stride[e] == x.stride(d) * x.size(d);
      for (int k = 0; k < kMaxOperands; ++k) run = run && w.st[k][e] == st[k] * x.size(d);
      if (run) {
        w.size[e] *= x.size(d);
        w.stride[e] = x.stride(d);
        for (int k = 0; k < kMaxOperands; ++k) w.st[k][e] = st[k];
        continue;
      }
    }
    w.size[w.nd] = x.size(d);
    w.stride[w.nd] = x.stride(d);
    for (int k = 0; k < kMaxOperands; ++k) w.st[k][w.nd] = st[k];
    if (d == 0) w.batch = w.nd;
    ++w.nd;
  }
  for (int e = 0; e < w.nd; ++e) {
    if (w.stride[e] == 1) w.inner = e;
    w.inv_size[e] = 1.0 / double(w.size[e]);
    w.inv_stride[e] = 1.0 / double(w.stride[e]);
  }
  return w;
}

// Elements per access: 16-byte packs along x's inner run when that run divides into packs,
// is not the sample dim, and every operand runs along it too, with every pointer, stride and
// extra offset (of operand 0) a whole number of packs; else 1.
inline int pack_width(const Walk& w, const at::Tensor& x, const std::vector<at::Tensor>& ops,
                      std::initializer_list<int64_t> extra, std::initializer_list<const void*> outs) {
  const int V = int(16 / x.element_size());
  if (w.inner < 0 || w.inner == w.batch || w.size[w.inner] % V) return 1;
  bool ok = aligned16(x.data_ptr());
  for (const void* p : outs) ok = ok && aligned16(p);
  for (int64_t e : extra) ok = ok && e % V == 0;
  for (int d = 0; d < w.nd; ++d) ok = ok && (d == w.inner || w.stride[d] % V == 0);
  for (size_t k = 0; k < ops.size(); ++k) {
    if (!ops[k].defined()) continue;
    ok = ok && aligned16(ops[k].data_ptr()) && w.st[k][w.inner] == 1;
    for (int d = 0; d < w.nd; ++d) ok = ok && (d == w.inner || w.st[k][d] % V == 0);
  }
  return ok ? V : 1;
}

// Whether every offset the kernels form fits in 32 bits. The grid-stride loop index also steps
// past the last pack by up to one grid (resident CTAs x 256 threads, under 2^24 on any GPU), so
// x's element count keeps that much room: else the step overflows and wraps to a negative index.
inline bool fits_int32(const Walk& w, const at::Tensor& x, int64_t extra) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 64;
  bool ok = x.numel() < kMax - (int64_t(1) << 24);
  for (int k = 0; k < kMaxOperands; ++k) {
    int64_t m = extra;
    for (int d = 0; d < w.nd; ++d) m += (w.size[d] - 1) * w.st[k][d];
    ok = ok && m < kMax;
  }
  return ok;
}

// Checked inputs and the two outputs (sample, pred_xstart) in x's layout. model_output, grad and
// noise are operands 0, 1, 2 of the walk; uncond and var are model_output's offsets of the
// unconditional rows and of the variance channels.
struct PreparedStep {
  StepShape s;
  at::Tensor x, out, grad, noise, coef, sample, x0;
  Walk w;
  int64_t uncond, var;
};

inline PreparedStep prepare_step(const char* op, bool ddpm, bool learned, const at::Tensor& x_in,
                                 const at::Tensor& out, const at::Tensor& coef,
                                 const std::optional<at::Tensor>& grad,
                                 const std::optional<at::Tensor>& noise) {
  const StepShape s = check_step(op, x_in, out, coef, grad, noise);
  TORCH_CHECK(!ddpm || !learned || s.Cm == 2 * s.C, op, ": a learned variance needs 2C output channels");
  PreparedStep p{s, dense(x_in), out, grad.value_or(at::Tensor()), noise.value_or(at::Tensor()),
                 coef.contiguous(), {}, {}, {}, 0, 0};
  p.sample = at::empty_like(p.x);
  p.x0 = at::empty_like(p.x);
  if (p.x.numel() == 0) return p;
  p.w = walk_of(p.x, {p.out, p.grad, p.noise});
  p.uncond = s.cfg ? s.B * out.stride(0) : 0;
  p.var = s.Cm == 2 * s.C ? s.C * out.stride(1) : 0;
  return p;
}

inline void check_sigma_step(const char* op, const std::vector<at::Tensor>& xs,
                             const at::Tensor& sigma, const at::Tensor& sigma_next) {
  const at::Tensor& x = xs[0];
  TORCH_CHECK(x.dim() >= 1, op, ": x must have a batch dimension");
  TORCH_CHECK(x.dim() <= kMaxDims, op, ": x may have at most ", kMaxDims, " dims, got ", x.dim());
  check_float_dtype(x, op, "x");
  for (const auto& t : xs)
    TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type(), op,
                ": every sample tensor must match x in shape and dtype");
  for (size_t k = 1; k < xs.size(); ++k) check_same_device(op, x, {{&xs[k], "a sample tensor"}});
  for (const auto* s : {&sigma, &sigma_next})
    TORCH_CHECK(s->dim() == 1 && s->size(0) == x.size(0) && s->scalar_type() == at::kFloat, op,
                ": sigma and sigma_next must be float32 [B]");
  check_same_device(op, x, {{&sigma, "sigma"}, {&sigma_next, "sigma_next"}});
}

}  // namespace fastguide::sampler
