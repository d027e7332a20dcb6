// Small CUDA helpers: 16-byte packs, warp reductions, launch geometry.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace fastguide::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// V consecutive elements moved as one access (16 bytes when V * sizeof(T) == 16).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Multiprocessor count of the current device (queried once per device).
inline int num_sms() {
  static int cached[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) cached[dev] = n;
  return n;
}

__device__ __forceinline__ float sigmoidf(float z) { return 1.f / (1.f + __expf(-z)); }

template <bool SILU>
__device__ __forceinline__ float act(float z) {
  return SILU ? z * sigmoidf(z) : z;
}

template <bool SILU>
__device__ __forceinline__ float act_grad(float z) {
  if (!SILU) return 1.f;
  const float s = sigmoidf(z);
  return s * (1.f + z * (1.f - s));
}

}  // namespace fastguide::cuda

// Dispatch over the dtypes the CUDA kernels support (float64 stays on the CPU).
#define FG_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                   \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__) \
                             AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
