// Argument checks shared by the kernels. The Python layer gives the friendly errors; these
// keep direct torch.ops calls from reaching a kernel with inputs it cannot handle.
#pragma once
#include <ATen/ATen.h>
#include <initializer_list>
#include <optional>
#include <utility>

namespace fastguide {

// True when x is laid out as [N, *spatial, C] in memory (channels_last / channels_last_3d,
// and the [N, L, C] transpose of a 3-D [N, C, L] tensor).
inline bool is_channels_last_like(const at::Tensor& x) {
  if (x.dim() < 3) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  return x.permute(perm).is_contiguous();
}

inline void check_param(const std::optional<at::Tensor>& t, const char* name,
                        at::IntArrayRef shape, const at::Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->sizes() == shape, name, " must have shape ", shape, ", got ", t->sizes());
  TORCH_CHECK(t->device() == x.device(), name, " is on ", t->device(), " but x is on ", x.device());
  TORCH_CHECK(t->scalar_type() == x.scalar_type() || t->scalar_type() == at::kFloat,
              name, " must have x's dtype (", x.scalar_type(), ") or float32, got ",
              t->scalar_type());
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Every tensor on x's device (index included), or an error naming the first that is not.
inline void check_same_device(const char* op, const at::Tensor& x,
                              std::initializer_list<std::pair<const at::Tensor*, const char*>> ts) {
  for (const auto& [t, name] : ts)
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " is on ", t->device(),
                " but x is on ", x.device());
}

// A parameter as a contiguous tensor in the accumulation dtype, or an undefined tensor.
inline at::Tensor as_acc(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  return t.has_value() ? t->to(acc).contiguous() : at::Tensor();
}

}  // namespace fastguide

namespace fastguide {
// t with exactly ref's strides (ref dense): kernels index both with one flat index.
inline at::Tensor same_layout(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() ? t : at::empty_like(ref).copy_(t);
}
}  // namespace fastguide
