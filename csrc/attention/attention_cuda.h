// What the CUDA attention translation units share: the launchers of the tensor-core kernels
// (tc_launch.cuh, instantiated per padded head dim in inst/*.cu) and of the SIMT kernels
// (attention_simt.cu), and the per-device limits, queried once.
#pragma once
#include <cuda_runtime.h>

#include "attention/cuda_params.h"
#include "attention/tc_config.h"

namespace fastguide::attention {

constexpr int kMaxDevices = 64;

// Shared-memory opt-in, multiprocessor count and compute capability of a device, cached.
const tc::DeviceLimits& device_limits(int device);

namespace tc {
// T is c10::Half or c10::BFloat16; warps 4 or 8 (see make_plan); N = batch.
template <typename T, int Dp>
void launch_fwd(const FwdParams& p, bool tokens, int warps, int N, cudaStream_t stream);
// dQ, dK and dV; p.delta must hold rowsum(dO * O).
template <typename T, int Dp>
void launch_bwd(const BwdParams& p, bool tokens, int N, cudaStream_t stream);
}  // namespace tc

namespace simt {
// T is float, c10::Half or c10::BFloat16; any strides; head dim up to 32 regs.
template <typename T>
void launch_fwd(const FwdParams& p, int regs, int N, cudaStream_t stream);
template <typename T>
void launch_bwd(const BwdParams& p, int regs, int N, cudaStream_t stream);
// delta[n, h, i] = sum_d dO[n, h d + d', i] O[n, h d + d', i], any strides.
template <typename T>
void launch_delta(const void* out, View vo, const void* gout, View vg, float* delta, int L, int H,
                  int d, int N, cudaStream_t stream);
}  // namespace simt

}  // namespace fastguide::attention
