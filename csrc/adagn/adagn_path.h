// Which CUDA AdaGN path runs: the single pass wherever it applies (the default), or always the
// multi-pass kernels. A switch for tests and benchmarks (torch.ops.fastguide._adagn_set_path),
// so that both paths are checked on the same shapes.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fastguide::adagn {

enum class Path : int { kAuto = 0, kMultiPass = 1 };

Path path();

// The ops behind torch.ops.fastguide._adagn_set_path and _adagn_plan (adagn_plan_check.cpp).
int64_t set_path(int64_t path);
std::vector<int64_t> plan_op(at::IntArrayRef problem, at::IntArrayRef device, bool check);

}  // namespace fastguide::adagn
