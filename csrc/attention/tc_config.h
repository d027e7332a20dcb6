// Tile configurations of the tensor-core attention kernels and the plan that picks one for a
// call from the device's limits. Plain C++ (no CUDA): the CUDA dispatch uses it, and so does the
// op fastguide::attention_cuda_plan, which tests and benchmarks call on any machine.
//
// Head dims are bucketed to a padded dim Dp (a template parameter): 32, 64, 96, 128, 160, 192,
// 256. Dims between are zero-padded on the way into shared memory (never stored back).
//
// Shared memory (bytes, 2-byte elements; S stages of the streamed operand pair):
//   forward  Q [Br x Dp] + S x (K + V) [Bc x Dp]                   Br = 16 warps
//   dQ       Q + dO [Br x Dp] + S x (K + V) [Bc x Dp]              Br = 16 warps
//   dK dV    K + V [Bc x Dp] + S x (Q + dO [Br x Dp] + lse, D [Br] fp32)   Bc = 16 warps
// Every configuration the plan may pick on any supported GPU fits the 101,376-byte opt-in of
// sm_86 / sm_89, except the forward's 8-warp Dp = 256 tile (128 KB), which is taken only where
// the device's opt-in allows it (sm_80: 163 KB, sm_90: 227 KB) and the 4-warp tile otherwise.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

namespace fastguide::attention::tc {

constexpr int kPortableSmem = 101376;  // opt-in limit of sm_86 / sm_89, the smallest of sm_8x/9x
constexpr int kDims[] = {32, 64, 96, 128, 160, 192, 256};

// Smallest bucket >= d, or 0 when d is beyond 256.
constexpr int padded_dim(int64_t d) {
  for (int dp : kDims)
    if (d <= dp) return dp;
  return 0;
}

struct Tiles {
  int dp;
  int fwd_bc;                          // keys per forward tile (Br = 64 or 128 by the plan)
  int dq_warps, dq_bc, dq_stages;      // dQ kernel: Br = 16 dq_warps queries, Bc keys a tile
  int kv_warps, kv_br, kv_stages;      // dK dV kernel: Bc = 16 kv_warps keys, Br queries a tile
  bool kv_split;                       // dK and dV in two launches (each Dp / 2 accumulators)
};

// Register budget per thread: fp32 accumulators of Dp / 2 (O, dQ, dK or dV) plus two
// 16 x tile logit blocks of tile / 2. Dp > 128 would need 2 x Dp / 2 = 160..256 registers of
// accumulators for dK and dV together, so those dims split them.
constexpr Tiles tiles_for(int dp) {
  const bool big = dp > 128;
  return Tiles{dp,
               big ? 32 : 64,
               4, big ? 32 : 64, dp == 256 ? 1 : 2,
               dp <= 64 ? 8 : 4, dp <= 64 ? 64 : 32, dp == 256 ? 1 : 2,
               big};
}

constexpr int fwd_smem(int dp, int warps, int bc) { return (16 * warps * dp + 2 * 2 * bc * dp) * 2; }
constexpr int dq_smem(int dp, int warps, int bc, int stages) {
  return (2 * 16 * warps * dp + stages * 2 * bc * dp) * 2;
}
constexpr int kv_smem(int dp, int warps, int br, int stages) {
  return 2 * 16 * warps * dp * 2 + stages * (2 * br * dp * 2 + 2 * br * 4);
}

constexpr bool portable(int dp) {
  const Tiles t = tiles_for(dp);
  return fwd_smem(dp, 4, t.fwd_bc) <= kPortableSmem &&
         (dp == 256 || fwd_smem(dp, 8, t.fwd_bc) <= kPortableSmem) &&
         dq_smem(dp, t.dq_warps, t.dq_bc, t.dq_stages) <= kPortableSmem &&
         kv_smem(dp, t.kv_warps, t.kv_br, t.kv_stages) <= kPortableSmem;
}
static_assert(portable(32) && portable(64) && portable(96) && portable(128) && portable(160) &&
                  portable(192) && portable(256),
              "a tile configuration exceeds the sm_86/89 shared-memory opt-in");

struct DeviceLimits {
  int smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int num_sms;
  int cc_major, cc_minor;
};

struct Plan {
  bool tc = false;       // tensor-core kernels; otherwise the SIMT kernels
  Tiles tiles{};
  int fwd_warps = 0;     // 8 (128 queries a block) or 4 (64)
  int simt_regs = 0;     // SIMT: registers per lane for the head dim, ceil(d / 32) rounded to 2^k
  std::string why;       // why the SIMT path, or the tile summary
};

constexpr int kMaxSimtDim = 512;

inline int simt_regs_for(int64_t d) {
  int r = 1;
  while (32 * r < d) r *= 2;
  return r;
}

// fp16/bf16 with d % 8 == 0 and d <= 256 on sm_80+ take the tensor cores; fp32 keeps the SIMT
// path (TF32 would land near 3e-4 relative error, outside the fp32 tolerance of 1e-5).
// batch_heads = N * heads: with fewer than one 128-query block per multiprocessor, or L <= 64,
// the forward takes 64-query blocks.
inline Plan make_plan(bool half_or_bf16, int64_t d, int64_t L, int64_t batch_heads,
                      const DeviceLimits& dev) {
  Plan p;
  p.simt_regs = simt_regs_for(d);
  if (!half_or_bf16) {
    p.why = "float32: SIMT kernels (TF32 tensor cores would miss the fp32 tolerance)";
    return p;
  }
  if (d % 8 != 0 || d > 256) {
    p.why = "head dim " + std::to_string(d) + " is not a multiple of 8 up to 256: SIMT kernels";
    return p;
  }
  if (dev.cc_major < 8) {
    p.why = "compute capability below 8.0 has no m16n8k16 bf16 mma: SIMT kernels";
    return p;
  }
  const Tiles t = tiles_for(padded_dim(d));
  const bool short_seq = L <= 64 || (L + 127) / 128 * batch_heads < dev.num_sms;
  const bool fits8 = fwd_smem(t.dp, 8, t.fwd_bc) <= dev.smem_optin;
  p.fwd_warps = short_seq || !fits8 ? 4 : 8;
  const int f = fwd_smem(t.dp, p.fwd_warps, t.fwd_bc), q = dq_smem(t.dp, t.dq_warps, t.dq_bc, t.dq_stages);
  const int kv = kv_smem(t.dp, t.kv_warps, t.kv_br, t.kv_stages);
  const int need = std::max({f, q, kv});
  if (need > dev.smem_optin) {
    p.why = "device shared-memory opt-in " + std::to_string(dev.smem_optin) + " < " +
            std::to_string(need) + " bytes: SIMT kernels";
    return p;
  }
  p.tc = true;
  p.tiles = t;
  p.why = "tensor cores: Dp " + std::to_string(t.dp) + ", forward " +
          std::to_string(16 * p.fwd_warps) + "x" + std::to_string(t.fwd_bc) + ", dQ " +
          std::to_string(16 * t.dq_warps) + "x" + std::to_string(t.dq_bc) + "/" +
          std::to_string(t.dq_stages) + " stage(s), dKdV " + std::to_string(16 * t.kv_warps) +
          "x" + std::to_string(t.kv_br) + "/" + std::to_string(t.kv_stages) + " stage(s)" +
          (t.kv_split ? " split" : " fused") + "; shared memory " + std::to_string(f) + "/" +
          std::to_string(q) + "/" + std::to_string(kv) + " bytes";
  return p;
}

}  // namespace fastguide::attention::tc
