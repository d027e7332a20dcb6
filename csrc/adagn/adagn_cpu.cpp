// The CPU AdaGN ops: checks, allocation, and the choice between the baseline and AVX2 builds
// of the kernels in adagn_cpu_kernel.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "adagn/adagn.h"
#include "adagn/adagn_cpu_kernel.h"

namespace fastguide::adagn {
namespace {

const cpu::Kernels& kernels() {
#if defined(FASTGUIDE_CPU_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  if (avx2) return cpu::avx2::kernels;
#endif
  return cpu::base::kernels;
}

void parallel(int64_t b, int64_t e, int64_t grain, void* ctx, cpu::Body body) {
  at::parallel_for(b, e, grain, [&](int64_t b0, int64_t e0) { body(ctx, b0, e0); });
}

cpu::Elem elem_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::Elem::f32;
    case at::kDouble: return cpu::Elem::f64;
    case at::kHalf: return cpu::Elem::f16;
    case at::kBFloat16: return cpu::Elem::bf16;
    default: TORCH_CHECK(false, "group_norm_act: unsupported dtype ", t);
  }
}

cpu::Problem problem(const Shape& s, const at::Tensor& x, bool silu) {
  return {s.N, s.C, s.S, s.G, s.channels_last, silu, elem_of(x.scalar_type()),
          at::get_num_threads(), &parallel};
}

const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& x_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu, double eps) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const auto acc = stats_dtype(x);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::zeros({s.N, G}, x.options().dtype(acc));
  at::Tensor rstd = at::zeros({s.N, G}, x.options().dtype(acc));
  if (x.numel() == 0) return {y, mean, rstd};
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc), sc = as_acc(scale, acc),
                   sh = as_acc(shift, acc);
  kernels().forward(problem(s, x, silu), {ptr(w), ptr(b), ptr(sc), ptr(sh)}, eps, x.data_ptr(),
                    y.data_ptr(), mean.data_ptr(), rstd.data_ptr());
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  check_backward_inputs(dy_in, x_in, mean_in, rstd_in, s);
  const auto acc = stats_dtype(x_in);
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const at::Tensor dy = same_layout(dy_in, x);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto opts = x.options().dtype(acc);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::zeros({s.C}, opts), db = at::zeros({s.C}, opts);
  at::Tensor dsc = at::zeros({s.N, s.C}, opts), dsh = at::zeros({s.N, s.C}, opts);
  if (x.numel() == 0) return {dx, dw, db, dsc, dsh};
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc), sc = as_acc(scale, acc),
                   sh = as_acc(shift, acc);
  kernels().backward(problem(s, x, silu), {ptr(w), ptr(b), ptr(sc), ptr(sh)}, dy.data_ptr(),
                     x.data_ptr(), mean.data_ptr(), rstd.data_ptr(), dx.data_ptr(), dw.data_ptr(),
                     db.data_ptr(), dsc.data_ptr(), dsh.data_ptr());
  return {dx, dw, db, dsc, dsh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CPU, m) {
  m.impl("group_norm_act", &forward_cpu);
  m.impl("group_norm_act_backward", &backward_cpu);
}

}  // namespace fastguide::adagn
