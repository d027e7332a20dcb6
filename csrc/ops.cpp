// Every fastguide operator schema, in one place. Kernels register per dispatch key in their
// own folders (adagn/, attention/, sampler/); fake kernels and autograd live in Python.
#include <torch/library.h>

TORCH_LIBRARY(fastguide, m) {
  // Fused adaptive GroupNorm: y = act((GroupNorm(x)*weight + bias) * (1 + scale) + shift).
  // Returns y (dtype and layout of x) and the per-(n, group) mean and rstd (fp32; fp64 for fp64 x).
  m.def(
      "group_norm_act(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, "
      "Tensor? shift, bool silu, float eps) -> (Tensor, Tensor, Tensor)");
  // Its backward. Returns dx (like x) and dweight [C], dbias [C], dscale [N, C], dshift [N, C]
  // in the statistics dtype; absent parameters act as weight=1, bias=0, scale=0, shift=0.
  m.def(
      "group_norm_act_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int num_groups, "
      "Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, bool silu) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
