// Fused adaptive GroupNorm (AdaGN): shapes, checks and the folded per-(n, c) coefficients
// shared by the CPU and CUDA kernels.
//
//   y = act(z),  z = (xhat * gamma + beta) * (1 + scale) + shift,  xhat = (x - mean) * rstd
//     = a[n, c] * (x - mean[n, g]) + b[n, c]   with  a = rstd * gamma * (1 + scale)
//                                                    b = beta * (1 + scale) + shift
// The mean is subtracted before the multiply-add rather than folded into b: folding it cancels
// catastrophically when |mean| >> std (b ~ -a * mean).
#pragma once
#include "common/check.h"

namespace fastguide::adagn {

struct Shape {
  int64_t N, C, S, G;   // batch, channels, spatial size (product of spatial dims), groups
  bool channels_last;   // memory is [N, S, C] rather than [N, C, S]
  int64_t Cg() const { return C / G; }
};

inline Shape check_inputs(const at::Tensor& x, int64_t G, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(x.dim() >= 2, "group_norm_act: x must be [N, C, *spatial], got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "group_norm_act: x must be floating point");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(G > 0 && C % G == 0, "group_norm_act: num_groups=", G,
              " must be positive and divide the channel count C=", C);
  check_param(weight, "weight", {C}, x);
  check_param(bias, "bias", {C}, x);
  check_param(scale, "scale", {N, C}, x);
  check_param(shift, "shift", {N, C}, x);
  const int64_t S = (N * C) == 0 ? 0 : x.numel() / (N * C);
  const bool cl = !x.is_contiguous() && is_channels_last_like(x);
  return {N, C, S, G, cl};
}

// Folded coefficients for one (n, c) given the group's statistics. Parameter pointers may be
// null (absent), in which case gamma=1, beta=0, scale=0, shift=0.
template <typename A>
struct Affine {
  const A* gamma;
  const A* beta;
  const A* scale;
  const A* shift;
#if defined(__CUDACC__)
  __host__ __device__
#endif
  inline void coef(int64_t n, int64_t c, int64_t C, A rstd, A& a, A& b) const {
    const A g = gamma ? gamma[c] : A(1);
    const A be = beta ? beta[c] : A(0);
    const A s1 = scale ? A(1) + scale[n * C + c] : A(1);
    const A sh = shift ? shift[n * C + c] : A(0);
    a = rstd * g * s1;
    b = be * s1 + sh;
  }
};

template <typename A>
inline Affine<A> affine_of(const at::Tensor& w, const at::Tensor& b, const at::Tensor& s,
                           const at::Tensor& sh) {
  auto p = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<A>() : nullptr; };
  return {p(w), p(b), p(s), p(sh)};
}

inline at::ScalarType stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The backward's own inputs: grad_y like x (shape, dtype, device), mean and rstd [N, G] in the
// statistics dtype on x's device. A tensor on another device would be read through a foreign
// pointer, so every one is checked.
inline void check_backward_inputs(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                  const at::Tensor& rstd, const Shape& s) {
  const char* op = "group_norm_act_backward";
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), op,
              ": grad_y must match x in shape and dtype");
  check_same_device(op, x, {{&dy, "grad_y"}, {&mean, "mean"}, {&rstd, "rstd"}});
  const auto acc = stats_dtype(x);
  TORCH_CHECK(mean.sizes() == at::IntArrayRef({s.N, s.G}) && mean.scalar_type() == acc &&
                  rstd.sizes() == mean.sizes() && rstd.scalar_type() == acc,
              op, ": mean and rstd must be [N, num_groups] in ", acc);
}

}  // namespace fastguide::adagn
