// fastguide::attention_cuda_plan: which CUDA attention kernels and tiles a call would take on a
// device with the given limits (tc_config.h's make_plan, the function the CUDA dispatch calls).
// Needs no GPU, so tests check the tile choice for every supported device on any machine, and the
// benchmark records it.
#include <torch/library.h>

#include "attention/tc_config.h"

namespace fastguide::attention {
namespace {

std::string cuda_plan(c10::ScalarType dtype, int64_t head_dim, int64_t length, int64_t batch_heads,
                      int64_t smem_optin, int64_t num_sms, int64_t cc_major, int64_t cc_minor) {
  TORCH_CHECK(head_dim > 0 && length >= 0 && batch_heads >= 0 && smem_optin > 0 && num_sms > 0,
              "attention_cuda_plan: head_dim, smem_optin and num_sms must be positive");
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  const tc::DeviceLimits dev{int(smem_optin), int(num_sms), int(cc_major), int(cc_minor)};
  return tc::make_plan(half, head_dim, length, batch_heads, dev).why;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastguide, m) {
  m.def(
      "attention_cuda_plan(ScalarType dtype, int head_dim, int length, int batch_heads, "
      "int smem_optin, int num_sms, int cc_major, int cc_minor) -> str",
      &cuda_plan);
}

}  // namespace fastguide::attention
