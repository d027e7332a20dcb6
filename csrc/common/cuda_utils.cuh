// Small CUDA helpers: 16-byte packs, warp reductions, fast activation maths, parameters read
// in place, and launch geometry from the occupancy API.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

namespace fastguide::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// V consecutive elements loaded as one access (16 bytes when V * sizeof(T) == 16). Stores go
// through Words / store_f below.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}


// 16 bytes of T held as four 32-bit words, element j converted to float at each use. Kernels
// that keep many packs in registers across several passes hold them this way and call
// keep_packed between passes: otherwise the compiler keeps every converted float alive (twice
// the registers) and spills.
template <typename T>
struct Words {
  static constexpr int V = 16 / sizeof(T);
  uint4 w;

  __device__ __forceinline__ uint32_t word(int i) const {
    return i == 0 ? w.x : (i == 1 ? w.y : (i == 2 ? w.z : w.w));
  }
  __device__ __forceinline__ float get(int j) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(word(j));
    } else {
      const uint32_t u = word(j / 2);
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        return __uint_as_float(j % 2 ? (u & 0xffff0000u) : (u << 16));
      } else {
        float f;
        const unsigned short h = (unsigned short)(j % 2 ? (u >> 16) : (u & 0xffffu));
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
      }
    }
  }
  static __device__ __forceinline__ Words load(const T* p) {
    return {*reinterpret_cast<const uint4*>(p)};
  }
  // Words from V floats, each rounded to T (to nearest even, as T(float) does).
  static __device__ __forceinline__ Words of(const float (&f)[V]) {
    uint32_t u[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (sizeof(T) == 4) {
        u[i] = __float_as_uint(f[i]);
      } else {
        u[i] = uint32_t(T(f[2 * i]).x) | (uint32_t(T(f[2 * i + 1]).x) << 16);
      }
    }
    return {make_uint4(u[0], u[1], u[2], u[3])};
  }
  // One 16-byte store, in PTX: written as a uint4 assignment, nvcc split some of these into
  // four 32-bit stores (seen in the SASS of the multi-pass kernels).
  __device__ __forceinline__ void store(T* p) const {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w.x), "r"(w.y), "r"(w.z),
                 "r"(w.w)
                 : "memory");
  }
};

// V elements of T as floats, and back (rounded to T): one 16-byte access when V > 1.
template <typename T, int V>
__device__ __forceinline__ void load_f(const T* p, float (&f)[V]) {
  if constexpr (V == 1) {
    f[0] = float(*p);
  } else {
    static_assert(V * sizeof(T) == 16, "packs are 16 bytes");
    const Words<T> w = Words<T>::load(p);
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = w.get(j);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_f(T* p, const float (&f)[V]) {
  if constexpr (V == 1) {
    *p = T(f[0]);
  } else {
    Words<T>::of(f).store(p);
  }
}

// An empty barrier the compiler must assume changes w: values derived from it before cannot be
// reused after it.
__device__ __forceinline__ void keep_packed(uint4& w) {
  asm volatile("" : "+r"(w.x), "+r"(w.y), "+r"(w.z), "+r"(w.w));
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

// Compute capability major * 10 + minor of the current device.
inline int capability() {
  static int cached[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (dev < 64) cached[dev] = major * 10 + minor;
  return major * 10 + minor;
}

// A per-(device, kernel) memo of a host-side query (occupancy, binary version): cudaFunc*
// queries cost microseconds, a launch should not pay them every time.
template <typename Kernel, typename Query>
int kernel_memo(Kernel kernel, int key, Query query) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int>, int> memo;
  const int dev = c10::cuda::current_device();
  const auto k = std::make_tuple(dev, reinterpret_cast<const void*>(kernel), key);
  std::lock_guard<std::mutex> lock(mu);
  const auto it = memo.find(k);
  if (it != memo.end()) return it->second;
  const int v = query();
  memo.emplace(k, v);
  return v;
}

// CTAs of `kernel` resident on the whole device at once (its occupancy times the SM count):
// the grid size of a streaming kernel that loops, so that no partial last wave is left.
template <typename Kernel>
int64_t resident_ctas(Kernel kernel, int threads) {
  const int per_sm = kernel_memo(kernel, threads, [&] {
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0));
    return std::max(n, 1);
  });
  return int64_t(per_sm) * num_sms();
}

// The architecture the device code of `kernel` was compiled for (90 for sm_90): the lower of the
// machine code's and its PTX's. Machine code the driver JIT-compiles from older PTX (an
// "8.0+PTX" build on an sm_90 device) reports binaryVersion 90 but was compiled with
// __CUDA_ARCH__ 800; ptxVersion says so.
template <typename Kernel>
int binary_version(Kernel kernel) {
  return kernel_memo(kernel, -1, [&] {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    return std::min(attr.binaryVersion, attr.ptxVersion);
  });
}

// 1 / x in one MUFU instruction (rcp.approx: ~1 ulp). For x = inf it gives 0.
__device__ __forceinline__ float fast_rcp(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// sigmoid(z) = 1 / (1 + e^-z) with the fast exponential and reciprocal: e^-z overflows to inf
// for z < -88, and the reciprocal then gives exactly 0, the right limit.
__device__ __forceinline__ float sigmoidf(float z) { return fast_rcp(1.f + __expf(-z)); }

template <bool SILU>
__device__ __forceinline__ float act(float z) {
  return SILU ? z * sigmoidf(z) : z;
}

// silu'(z) = s * (1 + z * (1 - s)), s = sigmoid(z).
template <bool SILU>
__device__ __forceinline__ float act_grad(float z) {
  if (!SILU) return 1.f;
  const float s = sigmoidf(z);
  return s * (1.f + z * (1.f - s));
}

// A [C] or [N, C] tensor read in place through its strides (chunk views of one [N, 2C]
// projection included), in float32 or the kernel's dtype T, or absent. at<T>(n, c) is element
// [c] or [n, c] as float. Two dtypes, not three, keep the read to one predicated load.
struct ParamRef {
  const void* p = nullptr;
  int64_t s0 = 0, s1 = 0;  // strides of n (0 for a [C] tensor) and of c, in elements
  bool f32 = true;         // float32, else the kernel's dtype

  template <typename T>
  __device__ __forceinline__ float at(int64_t n, int64_t c, float absent) const {
    if (p == nullptr) return absent;
    const int64_t i = n * s0 + c * s1;
    if constexpr (std::is_same_v<T, float>) {
      return static_cast<const float*>(p)[i];
    } else {
      return f32 ? static_cast<const float*>(p)[i] : float(static_cast<const T*>(p)[i]);
    }
  }
};

// t must be float32 or x's dtype (the ops' checks say so).
inline ParamRef param_ref(const std::optional<at::Tensor>& t, at::ScalarType x_dtype) {
  ParamRef r;
  if (!t.has_value()) return r;
  const at::Tensor& v = *t;
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == x_dtype,
              "parameters must be float32 or x's dtype ", x_dtype, ", got ", v.scalar_type());
  r.p = v.data_ptr();
  r.s0 = v.dim() == 2 ? v.stride(0) : 0;
  r.s1 = v.stride(v.dim() - 1);
  r.f32 = v.scalar_type() == at::kFloat;
  return r;
}

}  // namespace fastguide::cuda

// Dispatch over the dtypes the CUDA kernels support (float64 stays on the CPU).
#define FG_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                   \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__) \
                             AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
