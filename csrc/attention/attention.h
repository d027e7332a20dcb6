// Multi-head self-attention on qkv from ADM's 1x1 qkv conv: the shapes, the two channel orders
// and the two memory layouts shared by the CPU and CUDA kernels.
//
// qkv is logically [N, 3C, L], stored either contiguous or as the transpose of a contiguous
// [N, L, 3C] token tensor ("channels-last", what a channels-last model produces with no copy).
// Head h, part p (0 q, 1 k, 2 v), channel d of ch = C / heads sits at channel
//   legacy order ([heads, 3, ch]):  h*3*ch + p*ch + d
//   new order    ([3, heads, ch]):  p*C + h*ch + d
// The output is [N, C, L] (channel h*ch + d) in the layout of qkv; lse is [N, heads, L] fp32.
#pragma once
#include "common/check.h"

namespace fastguide::attention {

struct Shape {
  int64_t N, C, L, H, ch;
  bool channels_last;  // memory is [N, L, 3C]
  bool new_order;
};

// Whether a logical [N, K, L] tensor is stored as a contiguous [N, L, K].
inline bool tokens_major(const at::Tensor& t) {
  return t.dim() == 3 && !t.is_contiguous() && t.transpose(1, 2).is_contiguous();
}

inline Shape check_qkv(const char* op, const at::Tensor& qkv, int64_t heads, bool new_order) {
  TORCH_CHECK(qkv.dim() == 3, op, ": qkv must be [N, 3*C, L], got ", qkv.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(qkv.scalar_type()), op, ": qkv must be floating point");
  const int64_t N = qkv.size(0), C3 = qkv.size(1), L = qkv.size(2);
  TORCH_CHECK(heads > 0 && C3 % (3 * heads) == 0, op, ": qkv has ", C3,
              " channels, which 3 * num_heads = ", 3 * heads, " does not divide");
  return {N, C3 / 3, L, heads, C3 / (3 * heads), tokens_major(qkv), new_order};
}

// Channel of (head h, part p, d) in qkv.
inline int64_t qkv_channel(const Shape& s, int64_t h, int64_t p, int64_t d) {
  return s.new_order ? p * s.C + h * s.ch + d : h * 3 * s.ch + p * s.ch + d;
}

// [N, H, L, ch] views of q, k, v (part p) and of an [N, C, L] output, in any layout.
inline at::Tensor part_view(const at::Tensor& qkv, const Shape& s, int64_t p) {
  const auto split = s.new_order ? qkv.unflatten(1, {3, s.H, s.ch}).select(1, p)
                                 : qkv.unflatten(1, {s.H, 3, s.ch}).select(2, p);
  return split.transpose(2, 3);
}
inline at::Tensor heads_view(const at::Tensor& out, const Shape& s) {
  return out.unflatten(1, {s.H, s.ch}).transpose(2, 3);
}

// A new [N, K, L] tensor in qkv's layout.
inline at::Tensor empty_in_layout(const Shape& s, int64_t K, const at::Tensor& like) {
  if (s.channels_last) return at::empty({s.N, s.L, K}, like.options()).transpose(1, 2);
  return at::empty({s.N, K, s.L}, like.options());
}

}  // namespace fastguide::attention
