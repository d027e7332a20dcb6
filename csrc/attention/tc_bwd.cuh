// Backward attention on tensor cores, FlashAttention-2's algorithm (Dao, 2023, Alg. 2) made
// deterministic: instead of atomically adding dQ from every key block, two kernels each own
// their outputs outright.
//   D_i  = rowsum(dO_i * O_i)                                     (attn_delta_kernel, SIMT)
//   P_ij = 2^(S_ij log2(e)/sqrt(d) - lse_i log2(e)),  S = Q K^T   (recomputed, no L x L memory)
//   dP = dO V^T,  dS = P * (dP - D)
//   dQ = dS K / sqrt(d)          attn_dq_tc_kernel: a block owns 16 kWarps queries, walks keys
//   dK = dS^T Q / sqrt(d), dV = P^T dO
//                                attn_dkdv_tc_kernel: a block owns 16 kWarps keys, walks queries
// Each sum runs in one fixed order, so results are bitwise reproducible. The price is the
// recomputation of S and dP in both kernels: 7 L^2 Dp-matmuls instead of FA2's 5 (10 -> 14 L^2 Dp
// FLOPs). P and dS are rounded to the input dtype for their matmuls, as in FA2.
//
// The dK dV kernel computes S^T = K Q^T directly (keys as rows), so P^T and dS^T are already
// mma A-operands and the per-query lse and D come from shared memory by column. With Dp > 128,
// dK and dV do not both fit registers; kMode then runs one of them per launch.
#pragma once
#include "attention/tc_common.cuh"

namespace fastguide::attention::tc {

enum KvMode : int { kBoth = 0, kOnlyDK = 1, kOnlyDV = 2 };

template <typename T, int Dp, int kWarps, int Bc, int kStages, bool kTokens>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_dq_tc_kernel(const BwdParams p) {
  constexpr int Br = 16 * kWarps, kThreads = 32 * kWarps;
  using QT = SeqTile<Br, Dp, kTokens>;
  using KT = SeqTile<Bc, Dp, kTokens>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_addr(smem), sdO = sQ + QT::bytes;
  const auto sK = [&](int st) { return sdO + QT::bytes + st * 2 * KT::bytes; };
  const auto sV = [&](int st) { return sK(st) + KT::bytes; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * Br, h = blockIdx.y, n = blockIdx.z, L = p.L;
  const int64_t sx = kTokens ? p.vq.seq : p.vq.dim, sg = kTokens ? p.vg.seq : p.vg.dim;
  const int64_t sd = kTokens ? p.vd.seq : p.vd.dim;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const T* xk = x + p.geo.channel(h, 1) * p.vq.dim;
  const T* xv = x + p.geo.channel(h, 2) * p.vq.dim;
  const T* go = static_cast<const T*>(p.gout) + n * p.vg.n + int64_t(h) * p.d * p.vg.dim;
  const auto load_kv = [&](int j, int st) {
    load_tile<KT, kThreads>(sK(st), xk, sx, j * Bc, L, p.d);
    load_tile<KT, kThreads>(sV(st), xv, sx, j * Bc, L, p.d);
  };
  load_tile<QT, kThreads>(sQ, x + p.geo.channel(h, 0) * p.vq.dim, sx, q0, L, p.d);
  load_tile<QT, kThreads>(sdO, go, sg, q0, L, p.d);
  load_kv(0, 0);
  cp_async_commit();

  const int64_t nh = int64_t(n) * p.H + h;
  float lse2[2], dlt[2];  // lse log2(e) and D of rows g, g + 8
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = q0 + 16 * warp + acc_row(lane, 2 * r);
    lse2[r] = row < L ? p.lse[nh * L + row] * 1.4426950408889634f : 0.f;
    dlt[r] = row < L ? p.delta[nh * L + row] : 0.f;
  }

  float dq[Dp / 8][4];
  zero(dq);
  const int nk = (L + Bc - 1) / Bc;
  for (int j = 0; j < nk; ++j) {
    const int st = kStages == 2 ? (j & 1) : 0;
    pipeline_enter<kStages>(j, nk, load_kv);

    float s[Bc / 8][4], dp[Bc / 8][4];
    zero(s);
    zero(dp);
    gemm_xyT<T, QT, KT>(s, sQ, 16 * warp, sK(st), lane);
    gemm_xyT<T, QT, KT>(dp, sdO, 16 * warp, sV(st), lane);
#pragma unroll
    for (int nt = 0; nt < Bc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const bool valid = j * Bc + 8 * nt + acc_col(lane, e) < L;
        const float pr = valid ? exp2_approx(fmaf(s[nt][e], p.scale_log2, -lse2[r])) : 0.f;
        s[nt][e] = pr * (dp[nt][e] - dlt[r]);  // dS
      }
    gemm_pY<T, KT>(dq, s, sK(st), lane);
    pipeline_leave<kStages>(j, nk, load_kv);
  }

  const float mul[2] = {p.scale, p.scale};
  stage_acc<QT, T>(smem, dq, 16 * warp, mul, lane);
  __syncthreads();
  T* y = static_cast<T*>(p.gqkv) + n * p.vd.n + p.geo.channel(h, 0) * p.vd.dim;
  store_tile<QT, kThreads>(smem, y, sd, q0, L, p.d);
}

template <typename T, int Dp, int kWarps, int Br, int kStages, int kMode, bool kTokens>
__global__ void __launch_bounds__(kWarps * 32, 1) attn_dkdv_tc_kernel(const BwdParams p) {
  constexpr int Bc = 16 * kWarps, kThreads = 32 * kWarps;
  constexpr bool kDK = kMode != kOnlyDV, kDV = kMode != kOnlyDK;
  using KT = SeqTile<Bc, Dp, kTokens>;
  using QT = SeqTile<Br, Dp, kTokens>;
  constexpr int kStageBytes = 2 * QT::bytes + 2 * Br * 4;  // Q, dO, lse, D
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sK = smem_addr(smem), sV = sK + KT::bytes;
  const auto sQ = [&](int st) { return sV + KT::bytes + st * kStageBytes; };
  const auto sdO = [&](int st) { return sQ(st) + QT::bytes; };
  const auto lse_at = [&](int st) {
    return reinterpret_cast<const float*>(smem + 2 * KT::bytes + st * kStageBytes + 2 * QT::bytes);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k0 = blockIdx.x * Bc, h = blockIdx.y, n = blockIdx.z, L = p.L;
  const int64_t sx = kTokens ? p.vq.seq : p.vq.dim, sg = kTokens ? p.vg.seq : p.vg.dim;
  const int64_t sd = kTokens ? p.vd.seq : p.vd.dim;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const T* xq = x + p.geo.channel(h, 0) * p.vq.dim;
  const T* go = static_cast<const T*>(p.gout) + n * p.vg.n + int64_t(h) * p.d * p.vg.dim;
  const int64_t nh = int64_t(n) * p.H + h;
  const auto load_q = [&](int i, int st) {
    load_tile<QT, kThreads>(sQ(st), xq, sx, i * Br, L, p.d);
    load_tile<QT, kThreads>(sdO(st), go, sg, i * Br, L, p.d);
    const uint32_t s_lse = sdO(st) + QT::bytes;
    for (int c = threadIdx.x; c < 2 * Br; c += kThreads) {  // lse then D, one float a thread
      const int row = i * Br + c % Br;
      const float* src = (c < Br ? p.lse : p.delta) + nh * L;
      cp_async4(s_lse + 4 * c, row < L ? src + row : src, row < L);
    }
  };
  load_tile<KT, kThreads>(sK, x + p.geo.channel(h, 1) * p.vq.dim, sx, k0, L, p.d);
  if constexpr (kDK)
    load_tile<KT, kThreads>(sV, x + p.geo.channel(h, 2) * p.vq.dim, sx, k0, L, p.d);
  load_q(0, 0);
  cp_async_commit();

  float dk[kDK ? Dp / 8 : 2][4], dv[kDV ? Dp / 8 : 2][4];
  zero(dk);
  zero(dv);
  const int nq = (L + Br - 1) / Br;
  for (int i = 0; i < nq; ++i) {
    const int st = kStages == 2 ? (i & 1) : 0;
    pipeline_enter<kStages>(i, nq, load_q);

    const float* lse = lse_at(st);
    const float* dlt = lse + Br;
    float s[Br / 8][4];  // S^T: this warp's 16 keys x Br queries, then P^T
    zero(s);
    gemm_xyT<T, KT, QT>(s, sK, 16 * warp, sQ(st), lane);
#pragma unroll
    for (int nt = 0; nt < Br / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * nt + acc_col(lane, e);
        const bool valid = i * Br + col < L;
        s[nt][e] = valid ? exp2_approx(fmaf(s[nt][e], p.scale_log2, -lse[col] * 1.4426950408889634f)) : 0.f;
      }
    if constexpr (kDV) gemm_pY<T, QT>(dv, s, sdO(st), lane);  // dV += P^T dO
    if constexpr (kDK) {
      float dp[Br / 8][4];  // dP^T = V dO^T, then dS^T
      zero(dp);
      gemm_xyT<T, KT, QT>(dp, sV, 16 * warp, sdO(st), lane);
#pragma unroll
      for (int nt = 0; nt < Br / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * nt + acc_col(lane, e);
          dp[nt][e] = s[nt][e] * (dp[nt][e] - dlt[col]);
        }
      gemm_pY<T, QT>(dk, dp, sQ(st), lane);  // dK += dS^T Q
    }
    pipeline_leave<kStages>(i, nq, load_q);
  }

  // K's and V's tiles are free: stage dK (times 1/sqrt(d)) and dV there, then store both.
  T* y = static_cast<T*>(p.gqkv) + n * p.vd.n;
  if constexpr (kDK) {
    const float mul[2] = {p.scale, p.scale};
    stage_acc<KT, T>(smem, dk, 16 * warp, mul, lane);
  }
  if constexpr (kDV) {
    const float one[2] = {1.f, 1.f};
    stage_acc<KT, T>(smem + (kDK ? KT::bytes : 0), dv, 16 * warp, one, lane);
  }
  __syncthreads();
  if constexpr (kDK)
    store_tile<KT, kThreads>(smem, y + p.geo.channel(h, 1) * p.vd.dim, sd, k0, L, p.d);
  if constexpr (kDV)
    store_tile<KT, kThreads>(smem + (kDK ? KT::bytes : 0), y + p.geo.channel(h, 2) * p.vd.dim,
                             sd, k0, L, p.d);
}

template <int Dp, int kWarps, int Bc, int kStages, bool kTokens>
constexpr int dq_kernel_smem() {
  return 2 * SeqTile<16 * kWarps, Dp, kTokens>::bytes + kStages * 2 * SeqTile<Bc, Dp, kTokens>::bytes;
}
template <int Dp, int kWarps, int Br, int kStages, bool kTokens>
constexpr int dkdv_kernel_smem() {
  return 2 * SeqTile<16 * kWarps, Dp, kTokens>::bytes +
         kStages * (2 * SeqTile<Br, Dp, kTokens>::bytes + 2 * Br * 4);
}

}  // namespace fastguide::attention::tc
