// Branch-free math for CPU kernels, written so that GCC vectorizes the loops that use it
// (with -fno-trapping-math). Everything here is `static`: the file is compiled once per
// instruction set, and internal linkage keeps those copies apart.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastguide {

// exp(x) in float: x = k*ln2 + r with |r| <= ln2/2, a degree-6 Taylor polynomial for e^r
// (relative error < 2e-7), and 2^k built from exponent bits. No libm call, so it vectorizes.
static inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;  // NaN fails both tests and stays NaN
  const float kf = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf == kf ? kf : 0.0f);
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return p * two_k;
}
static inline double fast_exp(double x) { return std::exp(x); }

template <typename A>
static inline A sigmoid(A z) { return A(1) / (A(1) + fast_exp(-z)); }

// SiLU and its derivative: silu(z) = z * s, silu'(z) = s * (1 + z * (1 - s)), s = sigmoid(z).
template <bool SILU, typename A>
static inline A act(A z) { return SILU ? z * sigmoid(z) : z; }

template <bool SILU, typename A>
static inline A act_grad(A z) {
  if (!SILU) return A(1);
  const A s = sigmoid(z);
  return s * (A(1) + z * (A(1) - s));
}

}  // namespace fastguide
