// CPU model of the tensor-core attention kernels' index maths (csrc/attention/tc_layout.h),
// built and run by tests/test_attention_tc_layout.py. It does NOT run the CUDA code: it checks
// that the very functions the kernels call (swizzled offsets, the copy map, the ldmatrix lane
// offsets and .trans flags, the accumulator and A-from-accumulator maps) compute the right
// products, through models of ldmatrix and mma.sync m16n8k16 written from the PTX ISA's
// fragment tables. Elements are small integers, so every product is exact.
//
// The warp routines below mirror gemm_xyT, gemm_pY, stage_acc, load_tile and store_tile of
// tc_common.cuh loop for loop. Exit status 0 when everything matches; prints what failed.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attention/cuda_params.h"
#include "attention/tc_config.h"
#include "attention/tc_layout.h"

using namespace fastguide::attention::tc;

static int failures = 0;
#define CHECK(cond, ...)                      \
  do {                                        \
    if (!(cond)) {                            \
      if (++failures <= 20) {                 \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);             \
        std::printf("\n");                    \
      }                                       \
    }                                         \
  } while (0)

using Smem = std::vector<int>;        // shared memory, one int per 16-bit element
using Regs = std::vector<std::array<std::array<int, 2>, 4>>;  // [lane][register][low, high]
using Acc = std::vector<std::array<long, 4>>;                 // [lane][element]
static std::mt19937 rng(1234);
static int small() { return int(rng() % 7) - 3; }

// ---- PTX models ---------------------------------------------------------------------------------

// ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lane 8 i + q gives the address of row q of matrix
// i; register i of lane l gets matrix i's (l / 4, 2 (l % 4) + j), or (2 (l % 4) + j, l / 4)
// transposed. Also counts bank conflicts: the 8 rows of a matrix must hit 8 distinct 16-byte
// groups of the 128-byte bank window (tiles start 128-byte aligned).
static int ldsm_conflicts = 0;
static Regs ldsm_x4(const Smem& sm, int base, const int (&off)[32], bool trans) {
  Regs out(32);
  for (int i = 0; i < 4; ++i) {
    int m[8][8];
    unsigned groups = 0;
    for (int q = 0; q < 8; ++q) {
      const int a = base + off[8 * i + q];
      CHECK(a % 8 == 0 && a >= 0 && a + 8 <= int(sm.size()), "ldmatrix row address %d", a);
      groups |= 1u << ((a / 8) % 8);
      for (int c = 0; c < 8; ++c) m[q][c] = sm[a + c];
    }
    if (__builtin_popcount(groups) != 8) ++ldsm_conflicts;
    for (int l = 0; l < 32; ++l)
      for (int j = 0; j < 2; ++j)
        out[l][i][j] = trans ? m[2 * (l % 4) + j][l / 4] : m[l / 4][2 * (l % 4) + j];
  }
  return out;
}

// mma.sync.aligned.m16n8k16.row.col: A element a_i of lane (g, t) is at row g + 8 for i in
// {2, 3, 6, 7}, column 2 t + (i & 1) + 8 for i >= 4; B element b_i at row 2 t + (i & 1) + 8 (i >= 2),
// column g; C element c_i at row g + 8 (i >= 2), column 2 t + (i & 1).
static void mma(Acc& c, const Regs& a, int ra, const Regs& b, int rb0, int rb1) {
  long A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int j = 0; j < 2; ++j) {
      A[g][2 * t + j] = a[l][ra + 0][j];
      A[g + 8][2 * t + j] = a[l][ra + 1][j];
      A[g][2 * t + 8 + j] = a[l][ra + 2][j];
      A[g + 8][2 * t + 8 + j] = a[l][ra + 3][j];
      B[2 * t + j][g] = b[l][rb0][j];
      B[2 * t + 8 + j][g] = b[l][rb1][j];
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
      long s = 0;
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      c[l][e] += s;
    }
  }
}

// ---- logical matrices and their global memory ---------------------------------------------------

struct Mat {  // X[seq][dim] of one head part, with the kernels' zero padding beyond (L, d)
  int L, d;
  std::vector<int> v;
  int at(int s, int dd) const { return s < L && dd < d ? v[s * d + dd] : 0; }
};
static Mat random_mat(int L, int d) {
  Mat m{L, d, std::vector<int>(size_t(L) * d)};
  for (int& x : m.v) x = small();
  return m;
}

// The part as global memory in a layout: tokens (seq, dim) at seq * stride + dim, channel-major
// (seq, dim) at dim * stride + seq. Strides are padded past the extent, as inside qkv.
struct Global {
  bool tokens;
  int64_t stride;
  std::vector<int> mem;
};
static Global to_global(const Mat& x, bool tokens) {
  const int64_t stride = tokens ? x.d + 16 : ((x.L + 7) / 8) * 8 + 8;
  Global g{tokens, stride, std::vector<int>(size_t(stride) * (tokens ? x.L : x.d) + 64, 999)};
  for (int s = 0; s < x.L; ++s)
    for (int dd = 0; dd < x.d; ++dd) g.mem[tokens ? s * stride + dd : dd * stride + s] = x.v[s * x.d + dd];
  return g;
}

// ---- mirrors of tc_common.cuh -------------------------------------------------------------------

static int copy_conflicts = 0;

// load_tile: the thread loop of CopyMap, zero-fill, 8 elements a chunk.
template <class Tile, int kThreads>
static void load_tile(Smem& sm, int base, const Global& g, int seq0, int L, int d) {
  using M = CopyMap<Tile, kThreads>;
  const int64_t gbase = Tile::tokens ? seq0 * g.stride : seq0;
  const int rows = Tile::tokens ? L - seq0 : d, cols = Tile::tokens ? d : L - seq0;
  std::vector<int> hits(Tile::Stored::elems, 0);
  for (int warp = 0; warp < kThreads / 32; ++warp)
    for (int st = 0; st < M::steps; ++st)
      for (int k = 0; k < M::per_row; ++k) {
        unsigned groups[4] = {0, 0, 0, 0};
        for (int lane = 0; lane < 32; ++lane) {
          const int tid = 32 * warp + lane, r = M::row(tid, st), c = M::col(tid, k);
          if (!M::in_tile(r)) continue;
          CHECK(r < M::S::rows && c < M::S::cols, "copy map leaves the tile: %d %d", r, c);
          const bool valid = r < rows && c < cols;
          const int o = M::S::offset(r, c);
          groups[lane / 8] |= 1u << ((o / 8) % 8);
          for (int e = 0; e < 8; ++e) {
            sm[base + o + e] = valid ? g.mem[gbase + r * g.stride + c + e] : 0;
            ++hits[o + e];
          }
        }
        for (unsigned gr : groups)
          if (gr && __builtin_popcount(gr) != 8) ++copy_conflicts;
      }
  for (int h : hits) CHECK(h == 1, "copy map writes an element %d times", h);
}

// The stored tile holds X: Tile::offset(s, dd) = X[seq0 + s][dd] (zero beyond L, d).
template <class Tile>
static void check_tile(const Smem& sm, int base, const Mat& x, int seq0) {
  for (int s = 0; s < Tile::seq; ++s)
    for (int dd = 0; dd < Tile::dim; ++dd)
      CHECK(sm[base + Tile::offset(s, dd)] == x.at(seq0 + s, dd), "tile (%d, %d) tokens %d", s, dd,
            int(Tile::tokens));
}

static int lane_offsets_ok = 1;
template <class Tile>
static void check_block_rows(int s0, int d0) {  // the split offsets equal block_row()
  for (int lane = 0; lane < 32; ++lane) {
    const int i = lane >> 3, q = lane & 7;
    lane_offsets_ok &= Tile::a_offset(s0, d0, lane) == Tile::block_row(s0 + (i & 1) * 8, d0 + (i >> 1) * 8, q);
    lane_offsets_ok &= Tile::bt_offset(s0, d0, lane) == Tile::block_row(s0 + (i >> 1) * 8, d0 + (i & 1) * 8, q);
    lane_offsets_ok &= Tile::bn_offset(s0, d0, lane) == Tile::block_row(s0 + (i & 1) * 8, d0 + (i >> 1) * 8, q);
  }
}

// gemm_xyT: acc[16 x 8 kN] = X_w[m0..m0+15] . Y^T.
template <class ATile, class BTile>
static std::vector<Acc> gemm_xyT(const Smem& sm, int a_base, int m0, int b_base) {
  constexpr int kN = BTile::seq / 8;
  std::vector<Acc> acc(kN, Acc(32, {0, 0, 0, 0}));
  for (int kk = 0; kk < ATile::dim / 16; ++kk) {
    int off[32];
    for (int l = 0; l < 32; ++l) off[l] = ATile::a_offset(m0, 16 * kk, l);
    const Regs a = ldsm_x4(sm, a_base, off, ATile::a_trans);
    for (int nn = 0; nn < kN / 2; ++nn) {
      for (int l = 0; l < 32; ++l) off[l] = BTile::bt_offset(16 * nn, 16 * kk, l);
      const Regs b = ldsm_x4(sm, b_base, off, BTile::bt_trans);
      mma(acc[2 * nn], a, 0, b, 0, 1);
      mma(acc[2 * nn + 1], a, 0, b, 2, 3);
    }
  }
  return acc;
}

// gemm_pY: acc[16 x Dp] = P[16 x seq] . Y, P as accumulators (a_from_acc maps).
template <class Tile>
static std::vector<Acc> gemm_pY(const std::vector<Acc>& p, const Smem& sm, int base) {
  constexpr int kP = Tile::seq / 8, kD = Tile::dim / 8;
  std::vector<Acc> acc(kD, Acc(32, {0, 0, 0, 0}));
  for (int kk = 0; kk < kP / 2; ++kk) {
    Regs a(32);
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < 2; ++j) a[l][r][j] = int(p[a_from_acc_tile(kk, r)][l][a_from_acc_elem(r) + j]);
    for (int dn = 0; dn < kD / 2; ++dn) {
      int off[32];
      for (int l = 0; l < 32; ++l) off[l] = Tile::bn_offset(16 * kk, 16 * dn, l);
      const Regs b = ldsm_x4(sm, base, off, Tile::bn_trans);
      mma(acc[2 * dn], a, 0, b, 0, 1);
      mma(acc[2 * dn + 1], a, 0, b, 2, 3);
    }
  }
  return acc;
}

// stage_acc then store_tile: a warp's accumulator rows into the tile, the tile into global memory.
template <class Tile>
static void stage_acc(Smem& sm, const std::vector<Acc>& acc, int seq0) {
  for (int l = 0; l < 32; ++l)
    for (int nt = 0; nt < int(acc.size()); ++nt)
      for (int r = 0; r < 2; ++r) {
        const int s = seq0 + acc_row(l, 2 * r), dd = 8 * nt + acc_col(l, 2 * r);
        if (Tile::tokens)  // one 4-byte store: the pair must be adjacent and 4-byte aligned
          CHECK(Tile::offset(s, dd) + 1 == Tile::offset(s, dd + 1) && Tile::offset(s, dd) % 2 == 0,
                "staged pair not contiguous");
        sm.at(Tile::offset(s, dd)) = int(acc[nt][l][2 * r]);
        sm.at(Tile::offset(s, dd + 1)) = int(acc[nt][l][2 * r + 1]);
      }
}
template <class Tile, int kThreads>
static void store_tile(const Smem& sm, Global& g, int seq0, int L, int d) {
  using M = CopyMap<Tile, kThreads>;
  const int64_t gbase = Tile::tokens ? seq0 * g.stride : seq0;
  const int rows = Tile::tokens ? L - seq0 : d, cols = Tile::tokens ? d : L - seq0;
  for (int tid = 0; tid < kThreads; ++tid)
    for (int st = 0; st < M::steps; ++st)
      for (int k = 0; k < M::per_row; ++k) {
        const int r = M::row(tid, st), c = M::col(tid, k);
        if (!M::in_tile(r) || !(r < rows && c < cols)) continue;
        for (int e = 0; e < 8; ++e) g.mem[gbase + r * g.stride + c + e] = sm[M::S::offset(r, c) + e];
      }
}

// ---- one kernel's pair of tiles -----------------------------------------------------------------

// ATile (16 kWarps rows, warp w owns rows 16 w..) against BTile, as in the forward (Q, K, V), the
// dQ kernel (Q or dO against K or V) and the dK dV kernel (K or V against Q or dO).
template <class ATile, class BTile, int kThreads>
static void check_pair(bool tokens, int d, int La, int Lb, int seq0a, int seq0b) {
  const Mat x = random_mat(La, d), y = random_mat(Lb, d);
  const Global gx = to_global(x, tokens), gy = to_global(y, tokens);
  Smem sm(ATile::Stored::elems + BTile::Stored::elems, -7);
  const int a_base = 0, b_base = ATile::Stored::elems;
  load_tile<ATile, kThreads>(sm, a_base, gx, seq0a, La, d);
  load_tile<BTile, kThreads>(sm, b_base, gy, seq0b, Lb, d);
  check_tile<ATile>(sm, a_base, x, seq0a);
  check_tile<BTile>(sm, b_base, y, seq0b);
  for (int s0 = 0; s0 < ATile::seq; s0 += 16)
    for (int d0 = 0; d0 < ATile::dim; d0 += 16) check_block_rows<ATile>(s0, d0);
  for (int s0 = 0; s0 < BTile::seq; s0 += 16)
    for (int d0 = 0; d0 < BTile::dim; d0 += 16) check_block_rows<BTile>(s0, d0);

  Global out = to_global(random_mat(La, d), tokens);  // poisoned output
  std::vector<int> before = out.mem;
  Smem staged(ATile::Stored::elems, -7);
  for (int w = 0; w < kThreads / 32; ++w) {
    // S = X_w Y^T
    const std::vector<Acc> s = gemm_xyT<ATile, BTile>(sm, a_base, 16 * w, b_base);
    for (int l = 0; l < 32; ++l)
      for (int nt = 0; nt < BTile::seq / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
          const int i = seq0a + 16 * w + acc_row(l, e), j = seq0b + 8 * nt + acc_col(l, e);
          long want = 0;
          for (int k = 0; k < ATile::dim; ++k) want += long(x.at(i, k)) * y.at(j, k);
          CHECK(s[nt][l][e] == want, "S row %d col %d: %ld != %ld", i, j, s[nt][l][e], want);
        }
    // O = P Y with a random P [16 x Bseq]
    std::vector<Acc> p(BTile::seq / 8, Acc(32));
    for (auto& t : p)
      for (auto& lane : t)
        for (long& v : lane) v = small();
    const std::vector<Acc> o = gemm_pY<BTile>(p, sm, b_base);
    for (int l = 0; l < 32; ++l)
      for (int dn = 0; dn < BTile::dim / 8; ++dn)
        for (int e = 0; e < 4; ++e) {
          const int row = acc_row(l, e), col = 8 * dn + acc_col(l, e);
          long want = 0;
          for (int k = 0; k < BTile::seq; ++k) {  // P[row][k] from the accumulator layout
            const int nt = k / 8, lane = 4 * (row % 8) + (k % 8) / 2, el = 2 * (row / 8) + k % 2;
            want += p[nt][lane][el] * y.at(seq0b + k, col);
          }
          CHECK(o[dn][l][e] == want, "O row %d col %d: %ld != %ld", row, col, o[dn][l][e], want);
        }
    // stage X_w's own rows (as if it were the output) and store: round trip to global
    std::vector<Acc> xw(ATile::dim / 8, Acc(32));
    for (int l = 0; l < 32; ++l)
      for (int nt = 0; nt < ATile::dim / 8; ++nt)
        for (int e = 0; e < 4; ++e) xw[nt][l][e] = x.at(seq0a + 16 * w + acc_row(l, e), 8 * nt + acc_col(l, e));
    stage_acc<ATile>(staged, xw, 16 * w);
  }
  store_tile<ATile, kThreads>(staged, out, seq0a, La, d);
  for (int s = 0; s < La; ++s)
    for (int dd = 0; dd < d; ++dd) {
      const int64_t at = tokens ? s * out.stride + dd : dd * out.stride + s;
      const bool mine = s >= seq0a && s < seq0a + ATile::seq;
      CHECK(out.mem[at] == (mine ? x.at(s, dd) : before[at]), "stored (%d, %d)", s, dd);
    }
  for (size_t i = 0; i < out.mem.size(); ++i) {  // nothing written outside [0, L) x [0, d)
    const bool inside = tokens ? (int64_t(i) / out.stride < La && int64_t(i) % out.stride < d)
                               : (int64_t(i) / out.stride < d && int64_t(i) % out.stride < La);
    if (!inside) CHECK(out.mem[i] == before[i], "store wrote outside the matrix at %zu", i);
  }
}

// A tile starting at seq0 = one tile in, with L ending inside it (channel-major: L % 8 == 0),
// and the head dim d padded below Dp when that is a multiple of 8.
template <class ATile, class BTile, int kThreads>
static void check_config(int dp) {
  // for_each_chunk's int offset row * stride + col, for any stride the host lets through
  // (< kMaxTcStride), fits 32 bits in every stored layout of both tiles.
  for (int rows : {ATile::seq, ATile::dim, BTile::seq, BTile::dim})
    CHECK(int64_t(rows - 1) * (fastguide::attention::kMaxTcStride - 1) + 256 <= INT32_MAX,
          "a tile of %d stored rows overflows 32-bit offsets at stride kMaxTcStride - 1", rows);
  for (bool tokens : {true, false}) {
    for (int d : {dp, dp - 8, dp - 16}) {
      if (d < 8 || padded_dim(d) != dp) continue;
      const int La = ATile::seq + (tokens ? ATile::seq / 2 + 3 : ATile::seq / 2 + 8);
      const int Lb = BTile::seq + (tokens ? 5 : 8);
      if (tokens)
        check_pair<SeqTile<ATile::seq, ATile::dim, true>, SeqTile<BTile::seq, BTile::dim, true>, kThreads>(
            true, d, La, Lb, ATile::seq, BTile::seq);
      else
        check_pair<SeqTile<ATile::seq, ATile::dim, false>, SeqTile<BTile::seq, BTile::dim, false>, kThreads>(
            false, d, La, Lb, ATile::seq, BTile::seq);
    }
  }
}

// Every tile pair the launchers instantiate for one padded dim (tc_launch.cuh, tc_config.h).
template <int Dp>
static void check_dim() {
  constexpr Tiles t = tiles_for(Dp);
  check_config<SeqTile<128, Dp, true>, SeqTile<t.fwd_bc, Dp, true>, 256>(Dp);  // forward, 8 warps
  check_config<SeqTile<64, Dp, true>, SeqTile<t.fwd_bc, Dp, true>, 128>(Dp);   // forward, 4 warps
  check_config<SeqTile<16 * t.dq_warps, Dp, true>, SeqTile<t.dq_bc, Dp, true>, 32 * t.dq_warps>(Dp);
  check_config<SeqTile<16 * t.kv_warps, Dp, true>, SeqTile<t.kv_br, Dp, true>, 32 * t.kv_warps>(Dp);
  std::printf("Dp %3d: ok so far (%d failures)\n", Dp, failures);
}

int main() {
  check_dim<32>();
  check_dim<64>();
  check_dim<96>();
  check_dim<128>();
  check_dim<160>();
  check_dim<192>();
  check_dim<256>();
  CHECK(lane_offsets_ok, "a split lane offset differs from block_row()");
  CHECK(ldsm_conflicts == 0, "%d ldmatrix phases with bank conflicts", ldsm_conflicts);
  CHECK(copy_conflicts == 0, "%d cp.async write phases with bank conflicts", copy_conflicts);
  std::printf("ldmatrix bank conflicts: %d, cp.async write phases with conflicts: %d\n", ldsm_conflicts,
              copy_conflicts);
  std::printf(failures ? "FAILED: %d\n" : "all index checks passed\n", failures);
  return failures ? 1 : 0;
}
