// How the sampler-step kernels walk x in any dense layout without copying it: they visit x's
// elements in memory order (so x and the outputs, which take x's strides, are read and written
// as one contiguous run, in 16-byte packs where possible) and find every other operand's element
// through that operand's own strides. Shared by the CPU and CUDA kernels.
//
// Element i of a dense x has coordinate (i / stride[d]) % size[d] along each dim d; operand k's
// element with the same coordinates is at sum_d coord[d] * st[k][d]. Dims of size 1 are dropped
// and neighbouring dims that x and every operand lay out as one run are merged first, so a
// contiguous or channels-last step decodes 2 or 3 coordinates per pack.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastguide::sampler {

constexpr int kMaxDims = 8;      // x.dim() at most (checked)
constexpr int kMaxOperands = 3;  // DDPM/DDIM: model_output, grad, noise; Heun: d, x_next, d_next

struct Walk {
  int nd = 0;          // dims left after dropping and merging
  int batch = -1;      // which of them is the sample index (-1 when there is one sample)
  int inner = -1;      // which has x stride 1 (-1 when x has one element)
  int64_t size[kMaxDims] = {}, stride[kMaxDims] = {};  // x's
  double inv_size[kMaxDims] = {}, inv_stride[kMaxDims] = {};  // their reciprocals (div64)
  int64_t st[kMaxOperands][kMaxDims] = {};             // the operands'
};

// floor(i / d) for 0 <= i < 2^52 without a 64-bit integer division (a subroutine call on the
// GPU): the double estimate is off by at most one, and one step corrects it.
FG_HD int64_t div64(int64_t i, int64_t d, double inv) {
  int64_t q = int64_t(double(i) * inv);
  const int64_t r = i - q * d;
  return q + (r >= d) - (r < 0);
}

// i's coordinate along a dim of x: (i / stride) % size.
template <typename I>
FG_HD I coordinate(const Walk& w, int d, I i) {
  if constexpr (sizeof(I) == 8) {
    const int64_t q = div64(i, w.stride[d], w.inv_stride[d]);
    return q - div64(q, w.size[d], w.inv_size[d]) * w.size[d];
  } else {
    return (i / I(w.stride[d])) % I(w.size[d]);
  }
}

// Offsets of operands 0 .. nops - 1 and the sample index b of x's element i.
template <typename I>
FG_HD void walk_offsets(const Walk& w, I i, int nops, I* off, I& b) {
  b = 0;
  for (int k = 0; k < kMaxOperands; ++k) off[k] = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d < w.nd) {
      const I co = coordinate<I>(w, d, i);
      if (d == w.batch) b = co;
#pragma unroll
      for (int k = 0; k < kMaxOperands; ++k)
        if (k < nops) off[k] += co * I(w.st[k][d]);
    }
  }
}

}  // namespace fastguide::sampler
