// Every fastguide operator schema, in one place. Kernels register per dispatch key in their
// own folders (adagn/, attention/, sampler/); fake kernels and autograd live in Python.
#include <torch/library.h>

#include "adagn/adagn_path.h"

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
  // For the tests (adagn/adagn_plan_check.cpp): the CUDA path switch (0 auto, 1 always the
  // multi-pass kernels; returns the previous setting), and the launch plans of a problem on a
  // described device with a walk of every element they touch (no GPU needed).
  m.def("_adagn_set_path(int path) -> int", &fastguide::adagn::set_path);
  m.def("_adagn_plan(int[] problem, int[] device, bool check) -> int[]", &fastguide::adagn::plan_op);

  // Fused sampler steps (sampler/sampler.h has the maths and the coefficient rows). x is
  // [B, C, *spatial]; model_output is [B or 2B, C or 2C, *spatial]: 2B rows are
  // [conditional; unconditional] for classifier-free guidance with cfg_scale w, 2C channels carry
  // a learned variance. coef is float32 [B, 8], gathered from the schedule on the device.
  // prediction: 0 eps, 1 x0, 2 v. grad is the classifier gradient, already times its scale.
  // Both return (sample, pred_xstart).
  m.def(
      "ddpm_step(Tensor x, Tensor model_output, Tensor coef, Tensor? grad, Tensor? noise, "
      "float cfg_scale, int prediction, bool learned_range, bool clip) -> (Tensor, Tensor)");
  m.def(
      "ddim_step(Tensor x, Tensor model_output, Tensor coef, Tensor? grad, Tensor? noise, "
      "float cfg_scale, int prediction, bool clip) -> (Tensor, Tensor)");
  // Multi-head self-attention softmax(q.k / sqrt(ch)) v on the output of ADM's qkv conv
  // (attention/attention.h: channel orders and layouts). Returns the output [N, C, L] in qkv's
  // layout and the log-sum-exp [N, heads, L] of the logits, which the backward reuses.
  m.def("attention(Tensor qkv, int num_heads, bool new_order) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, int num_heads, "
      "bool new_order) -> Tensor");
  // sigma-space ODE steps with per-sample float32 sigmas [B].
  m.def("euler_step(Tensor x, Tensor denoised, Tensor sigma, Tensor sigma_next) -> Tensor");
  m.def(
      "heun_step(Tensor x, Tensor denoised, Tensor x_next, Tensor denoised_next, Tensor sigma, "
      "Tensor sigma_next) -> Tensor");
}
