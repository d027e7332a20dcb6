// The CUDA AdaGN ops: checks, allocation, and the choice between the single-pass kernels
// (adagn_fused.cu) and the multi-pass ones (adagn_stream.cu). adagn_cuda.cuh has the formulas,
// adagn_plan.h the launch plans.
//
// Forward: 1 launch (single pass) or 3; backward: 2 or 4. No workspace is zero-filled and no
// parameter is copied: scale and shift are read in place through their strides (the model passes
// the two halves of one [N, 2C] projection), in float32 or x's dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "adagn/adagn.h"
#include "adagn/adagn_cuda.cuh"
#include "adagn/adagn_path.h"

namespace fastguide::adagn {
namespace {

void check_cuda_inputs(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": x is on ", x.device(), " but another argument is on a CUDA device");
  TORCH_CHECK(x.scalar_type() != at::kDouble, op,
              ": float64 is supported on the CPU only; use float32, float16 or bfloat16 on CUDA");
  TORCH_CHECK(x.size(0) <= 65535, op, ": the CUDA kernels take batches of at most 65535, got ", x.size(0));
  TORCH_CHECK(x.size(1) <= 65535, op, ": the CUDA kernels take at most 65535 channels, got ", x.size(1));
  TORCH_CHECK(x.numel() < (int64_t(1) << 40), op, ": x is too large");
}

Dims dims_of(const Shape& s, const at::Tensor& x, double eps, const std::optional<at::Tensor>& weight,
             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
             const std::optional<at::Tensor>& shift) {
  const auto t = x.scalar_type();
  return {s.N, s.C, s.S, s.G, s.Cg(), s.channels_last, float(eps),
          {cuda::param_ref(weight, t), cuda::param_ref(bias, t), cuda::param_ref(scale, t),
           cuda::param_ref(shift, t)}};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& x_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu, double eps) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  check_cuda_inputs("group_norm_act", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return {y, at::zeros({s.N, G}, fopts), at::zeros({s.N, G}, fopts)};
  at::Tensor mean = at::empty({s.N, G}, fopts), rstd = at::empty({s.N, G}, fopts);
  const Dims d = dims_of(s, x, eps, weight, bias, scale, shift);
  if (path() == Path::kMultiPass || !forward_fused(x, y, mean, rstd, d, silu))
    forward_multipass(x, y, mean, rstd, d, silu);
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, int64_t G, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  const Shape s = check_inputs(x_in, G, weight, bias, scale, shift);
  check_backward_inputs(dy_in, x_in, mean_in, rstd_in, s);
  check_cuda_inputs("group_norm_act_backward", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = s.channels_last ? x_in : x_in.contiguous();
  const at::Tensor dy = same_layout(dy_in, x);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(x);
  if (x.numel() == 0)
    return {dx, at::zeros({s.C}, fopts), at::zeros({s.C}, fopts), at::zeros({s.N, s.C}, fopts),
            at::zeros({s.N, s.C}, fopts)};
  at::Tensor dw = at::empty({s.C}, fopts), db = at::empty({s.C}, fopts);
  at::Tensor dsc = at::empty({s.N, s.C}, fopts), dsh = at::empty({s.N, s.C}, fopts);
  at::Tensor sums = at::empty({s.N, s.C, 2}, fopts);
  const Dims d = dims_of(s, x, 0.0, weight, bias, scale, shift);
  if (path() == Path::kMultiPass || !backward_fused(dy, x, mean, rstd, dx, dsc, dsh, sums, d, silu))
    backward_multipass(dy, x, mean, rstd, dx, dsc, dsh, sums, d, silu);
  backward_params(x, sums, dw, db, d);
  return {dx, dw, db, dsc, dsh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CUDA, m) {
  m.impl("group_norm_act", &forward_cuda);
  m.impl("group_norm_act_backward", &backward_cuda);
}

}  // namespace fastguide::adagn
