// Forward attention on tensor cores, FlashAttention-2's algorithm (Dao, 2023, Alg. 1).
//
// A block owns Br = 16 kWarps queries of one (n, head); warp w owns rows 16 w .. 16 w + 15 and
// keeps S = Q K^T (16 x Bc), P and O (16 x Dp) in mma accumulator registers. Per key tile j:
//   S = Q K_j^T;  m' = max(m, rowmax S);  P = 2^(S log2(e)/sqrt(d) - m' log2(e)/sqrt(d))
//   l = 2^(m - m') l + rowsum P;  O = 2^(m - m') O + P V_j
// (row max and sum over the 4 lanes of a quad: each row lives in one quad). K and V stream
// through a 2-stage cp.async pipeline: tile j + 1 loads while tile j is computed. At the end
// O / l goes through shared memory (Q's tile) to 16-byte coalesced stores in the output's
// layout, and lse = m / sqrt(d) + ln l.
//
// Cost per (n, head): 4 L^2 Dp tensor-core FLOPs; global reads: Q, K, V once per query block.
#pragma once
#include "attention/tc_common.cuh"

namespace fastguide::attention::tc {

// Blocks per multiprocessor the register allocation must allow: 16 warps a multiprocessor for
// small head dims (<= 128 registers at 8 warps, <= 170 at 4), else whatever the tile needs.
template <int Dp, int kWarps>
constexpr int fwd_min_blocks() {
  return Dp <= 64 ? (kWarps == 8 ? 2 : 3) : 1;
}

template <typename T, int Dp, int kWarps, int Bc, bool kTokens>
__global__ void __launch_bounds__(kWarps * 32, fwd_min_blocks<Dp, kWarps>())
    attn_fwd_tc_kernel(const FwdParams p) {
  constexpr int Br = 16 * kWarps, kThreads = 32 * kWarps;
  using QT = SeqTile<Br, Dp, kTokens>;
  using KT = SeqTile<Bc, Dp, kTokens>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_addr(smem);
  const auto sK = [&](int st) { return sQ + QT::bytes + st * 2 * KT::bytes; };
  const auto sV = [&](int st) { return sK(st) + KT::bytes; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * Br, h = blockIdx.y, n = blockIdx.z, L = p.L;
  const int64_t sx = kTokens ? p.vq.seq : p.vq.dim, so = kTokens ? p.vo.seq : p.vo.dim;
  const T* x = static_cast<const T*>(p.qkv) + n * p.vq.n;
  const T* xq = x + p.geo.channel(h, 0) * p.vq.dim;
  const T* xk = x + p.geo.channel(h, 1) * p.vq.dim;
  const T* xv = x + p.geo.channel(h, 2) * p.vq.dim;
  const auto load_kv = [&](int j, int st) {
    load_tile<KT, kThreads>(sK(st), xk, sx, j * Bc, L, p.d);
    load_tile<KT, kThreads>(sV(st), xv, sx, j * Bc, L, p.d);
  };
  load_tile<QT, kThreads>(sQ, xq, sx, q0, L, p.d);
  load_kv(0, 0);
  cp_async_commit();

  float o[Dp / 8][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8 of the warp
  const int nk = (L + Bc - 1) / Bc;
  for (int j = 0; j < nk; ++j) {
    const int st = j & 1;
    pipeline_enter<2>(j, nk, load_kv);  // tile j (and Q) landed; tile j + 1 in flight

    float s[Bc / 8][4];
    zero(s);
    gemm_xyT<T, QT, KT>(s, sQ, 16 * warp, sK(st), lane);
    if ((j + 1) * Bc > L) {  // keys beyond L: logit -inf, probability 0
#pragma unroll
      for (int nt = 0; nt < Bc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (j * Bc + 8 * nt + acc_col(lane, e) >= L) s[nt][e] = -INFINITY;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // online softmax of row g + 8 r
      float mx = m[r];
#pragma unroll
      for (int nt = 0; nt < Bc / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = quad_max(mx);
      // Every row has a valid key in every tile, so mx is finite; m[r] = -inf on the first tile.
      const float m_scaled = mx * p.scale_log2;
      const float alpha = exp2_approx(m[r] * p.scale_log2 - m_scaled);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < Bc / 8; ++nt)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[nt][e] = exp2_approx(fmaf(s[nt][e], p.scale_log2, -m_scaled));
          sum += s[nt][e];
        }
      l[r] = l[r] * alpha + sum;  // this lane's columns only; the quad is summed at the end
#pragma unroll
      for (int dn = 0; dn < Dp / 8; ++dn) o[dn][2 * r] *= alpha, o[dn][2 * r + 1] *= alpha;
    }
    gemm_pY<T, KT>(o, s, sV(st), lane);
    pipeline_leave<2>(j, nk, load_kv);
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    inv[r] = 1.f / l[r];
    const int row = q0 + 16 * warp + acc_row(lane, 2 * r);
    if (lane % 4 == 0 && row < L) p.lse[(int64_t(n) * p.H + h) * L + row] = m[r] * p.scale + logf(l[r]);
  }
  stage_acc<QT, T>(smem, o, 16 * warp, inv, lane);  // Q's tile is free: the loop ended in a barrier
  __syncthreads();
  T* y = static_cast<T*>(p.out) + n * p.vo.n + int64_t(h) * p.d * p.vo.dim;
  store_tile<QT, kThreads>(smem, y, so, q0, L, p.d);
}

template <typename T, int Dp, int kWarps, int Bc, bool kTokens>
constexpr int fwd_kernel_smem() {
  return SeqTile<16 * kWarps, Dp, kTokens>::bytes + 4 * SeqTile<Bc, Dp, kTokens>::bytes;
}

}  // namespace fastguide::attention::tc
