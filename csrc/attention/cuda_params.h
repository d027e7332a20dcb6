// Parameter blocks of the CUDA attention kernels (tensor-core and SIMT), passed by value.
#pragma once
#include <cstdint>

#include "attention/tc_layout.h"  // FG_HD

namespace fastguide::attention {

// Largest row stride (elements) the tensor-core kernels take in place: a tile spans at most 256
// stored rows, so offsets inside it stay below 2^31. Larger strides go through a copy.
constexpr int64_t kMaxTcStride = (int64_t(1) << 31) / 512;

// A logical [N, K, L] tensor as element strides of batch, sequence position and channel.
struct View {
  int64_t n, seq, dim;
};

// Head h's part p (0 q, 1 k, 2 v) starts at this channel of qkv (attention.h has the orders).
struct HeadGeo {
  int64_t C, ch;
  bool new_order;
  FG_HD int64_t channel(int64_t h, int p) const {
    return new_order ? p * C + h * ch : (h * 3 + p) * ch;
  }
};

struct FwdParams {
  const void* qkv;
  View vq;
  void* out;  // [N, C, L], channel h * ch + d
  View vo;
  float* lse;  // [N, H, L], natural log
  int L, H, d;
  HeadGeo geo;
  float scale, scale_log2;  // 1 / sqrt(d) and log2(e) / sqrt(d)
};

struct BwdParams {
  const void* qkv;
  View vq;
  const void* gout;  // dO [N, C, L]
  View vg;
  void* gqkv;  // dqkv [N, 3C, L]
  View vd;
  const float* lse;    // [N, H, L], natural log
  const float* delta;  // [N, H, L], rowsum(dO * O)
  int L, H, d;
  HeadGeo geo;
  float scale, scale_log2;
};

}  // namespace fastguide::attention
