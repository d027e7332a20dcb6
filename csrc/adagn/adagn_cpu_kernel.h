// The CPU AdaGN kernels' interface. The kernels see raw pointers only, so their file includes
// no ATen and can be compiled once per instruction set (baseline and AVX2) without two copies
// of any inline library function clashing at link time. adagn_cpu.cpp picks one at run time.
#pragma once
#include <cstdint>

namespace fastguide::adagn::cpu {

enum class Elem : int { f32, f64, f16, bf16 };

// at::parallel_for, handed in by the caller.
using Body = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFor = void (*)(int64_t begin, int64_t end, int64_t grain, void* ctx, Body body);

struct Problem {
  int64_t N, C, S, G;    // batch, channels, spatial size, groups
  bool channels_last;    // memory is [N, S, C] rather than [N, C, S]
  bool silu;
  Elem elem;
  int threads;
  ParallelFor parallel;
};

// weight [C], bias [C], scale [N, C], shift [N, C] in the statistics dtype (float, or double
// for f64 input); null when absent. Gradients are written in that dtype too.
struct Params {
  const void *gamma, *beta, *scale, *shift;
};

struct Kernels {
  void (*forward)(const Problem&, const Params&, double eps, const void* x, void* y, void* mean,
                  void* rstd);
  void (*backward)(const Problem&, const Params&, const void* dy, const void* x, const void* mean,
                   const void* rstd, void* dx, void* dweight, void* dbias, void* dscale,
                   void* dshift);
};

namespace base { extern const Kernels kernels; }
namespace avx2 { extern const Kernels kernels; }

}  // namespace fastguide::adagn::cpu
