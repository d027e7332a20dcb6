// Launchers of the tensor-core attention kernels for one padded head dim Dp, explicitly
// instantiated per Dp in inst/*.cu (so that the GPU host's many cores compile them in parallel).
// The dynamic shared-memory attribute is set once per kernel and device, not on every call.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <mutex>

#include "attention/attention_cuda.h"
#include "attention/tc_bwd.cuh"
#include "attention/tc_config.h"
#include "attention/tc_fwd.cuh"

namespace fastguide::attention::tc {

// Raises kernel's dynamic shared-memory limit to bytes, once per device; each kernel
// instantiation calls this from its own launcher, so each has its own flags.
template <typename Kernel>
void set_smem_once(std::once_flag (&once)[kMaxDevices], Kernel kernel, int bytes) {
  const int dev = c10::cuda::current_device();
  const auto set = [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  };
  if (dev < kMaxDevices) std::call_once(once[dev], set);
  else set();
}

inline unsigned blocks(int L, int rows) { return unsigned((int64_t(L) + rows - 1) / rows); }

template <typename T, int Dp, int kWarps, bool kTokens>
void fwd_one(const FwdParams& p, int N, cudaStream_t stream) {
  constexpr int Bc = tiles_for(Dp).fwd_bc;
  constexpr int bytes = fwd_kernel_smem<T, Dp, kWarps, Bc, kTokens>();
  static_assert(bytes == fwd_smem(Dp, kWarps, Bc), "tc_config.h and the kernel disagree");
  static std::once_flag once[kMaxDevices];
  const auto kernel = attn_fwd_tc_kernel<T, Dp, kWarps, Bc, kTokens>;
  set_smem_once(once, kernel, bytes);
  kernel<<<dim3(blocks(p.L, 16 * kWarps), p.H, N), 32 * kWarps, bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int Dp>
void launch_fwd(const FwdParams& p, bool tokens, int warps, int N, cudaStream_t stream) {
  if (warps == 8) {
    if (tokens) fwd_one<T, Dp, 8, true>(p, N, stream);
    else fwd_one<T, Dp, 8, false>(p, N, stream);
  } else {
    if (tokens) fwd_one<T, Dp, 4, true>(p, N, stream);
    else fwd_one<T, Dp, 4, false>(p, N, stream);
  }
}

template <typename T, int Dp, bool kTokens>
void dq_one(const BwdParams& p, int N, cudaStream_t stream) {
  constexpr Tiles t = tiles_for(Dp);
  constexpr int bytes = dq_kernel_smem<Dp, t.dq_warps, t.dq_bc, t.dq_stages, kTokens>();
  static_assert(bytes == dq_smem(Dp, t.dq_warps, t.dq_bc, t.dq_stages), "tc_config.h and the kernel disagree");
  static std::once_flag once[kMaxDevices];
  const auto kernel = attn_dq_tc_kernel<T, Dp, t.dq_warps, t.dq_bc, t.dq_stages, kTokens>;
  set_smem_once(once, kernel, bytes);
  kernel<<<dim3(blocks(p.L, 16 * t.dq_warps), p.H, N), 32 * t.dq_warps, bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int Dp, int kMode, bool kTokens>
void dkdv_one(const BwdParams& p, int N, cudaStream_t stream) {
  constexpr Tiles t = tiles_for(Dp);
  constexpr int bytes = dkdv_kernel_smem<Dp, t.kv_warps, t.kv_br, t.kv_stages, kTokens>();
  static_assert(bytes == kv_smem(Dp, t.kv_warps, t.kv_br, t.kv_stages), "tc_config.h and the kernel disagree");
  static std::once_flag once[kMaxDevices];
  const auto kernel = attn_dkdv_tc_kernel<T, Dp, t.kv_warps, t.kv_br, t.kv_stages, kMode, kTokens>;
  set_smem_once(once, kernel, bytes);
  kernel<<<dim3(blocks(p.L, 16 * t.kv_warps), p.H, N), 32 * t.kv_warps, bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int Dp, bool kTokens>
void bwd_layout(const BwdParams& p, int N, cudaStream_t stream) {
  dq_one<T, Dp, kTokens>(p, N, stream);
  if constexpr (tiles_for(Dp).kv_split) {
    dkdv_one<T, Dp, kOnlyDK, kTokens>(p, N, stream);
    dkdv_one<T, Dp, kOnlyDV, kTokens>(p, N, stream);
  } else {
    dkdv_one<T, Dp, kBoth, kTokens>(p, N, stream);
  }
}

template <typename T, int Dp>
void launch_bwd(const BwdParams& p, bool tokens, int N, cudaStream_t stream) {
  if (tokens) bwd_layout<T, Dp, true>(p, N, stream);
  else bwd_layout<T, Dp, false>(p, N, stream);
}

}  // namespace fastguide::attention::tc

// Explicit instantiations for one Dp (inst/*.cu).
#define FG_ATTN_TC_FWD(DP)                                                                        \
  namespace fastguide::attention::tc {                                                           \
  template void launch_fwd<c10::Half, DP>(const FwdParams&, bool, int, int, cudaStream_t);       \
  template void launch_fwd<c10::BFloat16, DP>(const FwdParams&, bool, int, int, cudaStream_t);   \
  }
#define FG_ATTN_TC_BWD(DP)                                                                        \
  namespace fastguide::attention::tc {                                                           \
  template void launch_bwd<c10::Half, DP>(const BwdParams&, bool, int, cudaStream_t);            \
  template void launch_bwd<c10::BFloat16, DP>(const BwdParams&, bool, int, cudaStream_t);        \
  }
