// Launch plans of the CUDA AdaGN kernels and the index maths those kernels use. Pure C++ (no
// CUDA, no ATen), so the CPU build compiles it too and the tests check on any machine that each
// plan covers every element exactly once (adagn_plan_check.cpp).
//
// Two paths (adagn_cuda.cu picks one per call):
//   single pass  an (n, channel tile) unit of channels-last x, or an (n, group) slab of
//                contiguous x, is held in registers by K CTAs (one thread-block cluster on
//                sm_90, K = 1 elsewhere): x is read once and y written once (backward: x and
//                grad_y read once, grad_x written once).
//   multi pass   statistics, then a parallel finalize, then the elementwise pass; x is read twice.
// Units, in the order the grids enumerate them:
//   channels-last  [N, S, C]: a tile of CT = bx * V channels (whole groups, or whole parts of
//                  one group wider than a tile) by rows; thread (tx, ty) owns V channels and the
//                  rows ty, ty + by, ...
//   contiguous     [N, C, S]: an (n, group) slab is Cg * S consecutive elements = Mp packs; the
//                  row-segment kernels give each row (n, c) to lpr lanes of a warp.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>

#include "common/hd.h"

namespace fastguide::adagn::plan {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kFwdRows = 16;      // packs a thread holds in the single-pass forward (64 registers)
constexpr int kBwdRows = 6;       // the same for the backward, which holds x and grad_y
constexpr int kMaxCluster = 8;    // the portable cluster size
constexpr int kMaxPartials = 64;  // the split cap of the multi-pass statistics
constexpr int kUnroll = 4;        // independent loads in flight per thread in streaming loops
constexpr int kTable = 1024;      // channels a contiguous single-pass CTA keeps coefficients for
constexpr int kMinFusedCg = 2;    // single-pass tiles hold at most kThreads * V / 2 groups

FG_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Start of part k of n items cut into `parts` (parts differ in size by at most one).
FG_HD int64_t cut(int64_t n, int64_t k, int64_t parts) { return n * k / parts; }

struct Problem {
  int64_t N, C, S, G;  // batch, channels, spatial size, groups
  bool channels_last;  // memory [N, S, C] rather than [N, C, S]
  int V;               // elements per access: 16 / sizeof(T) (16-byte packs), or 1
};

// ---- channels-last tiles --------------------------------------------------------------------

struct Tile {
  int64_t CT = 0;  // channels per tile (bx * V)
  int bx = 0;      // threads across the tile's channels, V channels each
  int by = 0;      // threads across rows
  int64_t tiles = 0;  // tiles per sample
  int64_t tpg = 1;    // tiles per group when a group is wider than a tile, else 1
};

inline Tile make_tile(const Problem& p, int64_t CT) {
  Tile t;
  const int64_t Cg = p.C / p.G;
  t.CT = CT;
  t.bx = int(CT / p.V);
  t.by = kThreads / t.bx;
  t.tiles = ceil_div(p.C, CT);
  t.tpg = Cg > CT ? Cg / CT : 1;
  return t;
}

// Groups (or group parts) in a tile, the group of slot gl and the partial index of a split.
FG_HD int64_t tile_groups(const Tile& t, int64_t Cg) { return t.tpg > 1 ? 1 : t.CT / Cg; }
FG_HD int64_t tile_group(const Tile& t, int64_t tile, int64_t gl, int64_t Cg) {
  return t.tpg > 1 ? tile / t.tpg : tile * t.CT / Cg + gl;
}
FG_HD int64_t tile_part(const Tile& t, int64_t tile, int64_t split, int64_t splits) {
  return t.tpg > 1 ? (tile % t.tpg) * splits + split : split;
}
FG_HD int64_t cl_offset(int64_t n, int64_t row, int64_t c, int64_t S, int64_t C) {
  return (n * S + row) * C + c;
}

// Tiles of whole groups: CT a multiple of lcm(V, Cg) that divides C, at most kThreads packs.
inline int64_t group_lcm(const Problem& p) { return std::lcm(int64_t(p.V), p.C / p.G); }
inline int64_t max_whole(const Problem& p) {
  const int64_t L = group_lcm(p);
  return L > int64_t(kThreads) * p.V ? 0 : std::min(p.C / L, int64_t(kThreads) * p.V / L);
}

// The widest tile: whole groups if possible, else the widest part of a group (CT | Cg, V | CT).
// CT = 0 means no tile exists at this V (the caller then takes V = 1, where one always does).
inline Tile widest_tile(const Problem& p) {
  const int64_t Cg = p.C / p.G, L = group_lcm(p);
  for (int64_t m = max_whole(p); m >= 1; --m)
    if ((p.C / L) % m == 0) return make_tile(p, m * L);
  if (Cg % p.V) return Tile{};
  for (int64_t d = std::min<int64_t>(kThreads, Cg / p.V); d >= 1; --d)
    if ((Cg / p.V) % d == 0) return make_tile(p, d * p.V);
  return Tile{};
}

// ---- single pass ------------------------------------------------------------------------------

struct Fused {
  bool ok = false;
  Tile t;            // channels-last: the tile
  int64_t K = 1;     // CTAs per unit: the cluster size
  int64_t nr = 0;    // packs per thread
  int64_t RC = 0;    // rows (channels-last) or packs (contiguous) per CTA: step * nr
  int64_t units = 0; // N * tiles or N * G
};

// K as large as the occupancy target asks (more CTAs for small batches), within [kmin, kfull];
// then the fewest packs per thread that cover `extent` with K CTAs, and K again for that.
inline Fused finish(Fused f, int64_t extent, int64_t step, int64_t kmin, int64_t kfull,
                    int64_t target) {
  int64_t K = std::clamp<int64_t>(ceil_div(target, f.units), kmin, std::max(kmin, kfull));
  f.nr = ceil_div(ceil_div(extent, K), step);
  f.RC = step * f.nr;
  f.K = ceil_div(extent, f.RC);
  f.ok = true;
  return f;
}

// Channels-last: among tiles of whole groups whose unit fits in kmax CTAs, the widest that
// reaches `target` CTAs, else the one that gives the most CTAs. Rows of 16 bytes (half a memory
// sector; the neighbouring tile reads the other half) only when no wider tile fits.
inline Fused fused_cl(const Problem& p, int rows_cap, int64_t kmax, int64_t target) {
  Fused best;
  if (!p.channels_last || p.V == 1 || p.C % p.V || p.C / p.G < kMinFusedCg) return best;
  const int64_t L = group_lcm(p), mmax = max_whole(p);
  int64_t best_most = 0, best_kmin = 0, best_kfull = 0;
  for (int narrow = 0; narrow < 2 && !best.ok; ++narrow) {
    for (int64_t m = mmax; m >= 1; --m) {
      if ((p.C / L) % m) continue;
      const Tile t = make_tile(p, m * L);
      if ((t.bx < 2 && m != mmax) != bool(narrow)) continue;
      const int64_t kmin = ceil_div(p.S, int64_t(t.by) * rows_cap);
      if (kmin > kmax) continue;
      const int64_t kfull = std::min(kmax, ceil_div(p.S, t.by));
      const int64_t units = p.N * t.tiles, most = units * kfull;
      if (most > best_most) {
        best.t = t, best.units = units, best_most = most, best_kmin = kmin, best_kfull = kfull;
        best.ok = true;
      }
      if (most >= target) break;
    }
  }
  if (!best.ok) return best;
  return finish(best, p.S, best.t.by, best_kmin, best_kfull, target);
}

// Channels-last single pass: thread (tx, ty) of CTA k of unit (n, tile) holds channels
// c0 .. c0 + V - 1 of rows k * RC + ty + r * by for r < the count this returns (0 for a thread
// past C, past the tile's rows or past the last row).
FG_HD int64_t cl_first_channel(int64_t tile, int64_t CT, int tx, int V) {
  return tile * CT + int64_t(tx) * V;
}
FG_HD int64_t fused_rows_held(int64_t row0, int64_t S, int64_t nr, int by, bool cols) {
  return cols && row0 < S ? std::min(nr, (S - row0 + by - 1) / by) : 0;
}

// Contiguous: the (n, group) slab of Mp packs over K CTAs of kThreads threads.
inline Fused fused_rows(const Problem& p, int rows_cap, int64_t kmax, int64_t target) {
  Fused f;
  const int64_t Cg = p.C / p.G;
  if (p.channels_last || p.V == 1 || p.S % p.V || Cg > kTable) return f;
  const int64_t Mp = Cg * p.S / p.V;
  const int64_t kmin = ceil_div(Mp, int64_t(kThreads) * rows_cap);
  if (kmin > kmax) return f;
  f.units = p.N * p.G;
  return finish(f, Mp, kThreads, kmin, std::min(kmax, ceil_div(Mp, kThreads)), target);
}

// Contiguous single pass: the pack a thread holds and the channel it belongs to.
FG_HD int64_t rows_offset(int64_t n, int64_t g, int64_t pack, int64_t Cg, int64_t S, int64_t C,
                          int V) {
  return (n * C + g * Cg) * S + pack * V;
}

// ---- multi pass -------------------------------------------------------------------------------

// Splits of each of `units` so that the grid reaches `target` CTAs, at most `most`.
inline int64_t splits_for(int64_t units, int64_t target, int64_t most) {
  return std::clamp<int64_t>(ceil_div(target, units), 1, std::max<int64_t>(1, most));
}

// The pack width of the multi-pass kernels: 16-byte packs need a tile at that width.
inline int multipass_width(const Problem& p) {
  return p.V > 1 && p.channels_last && widest_tile(p).CT == 0 ? 1 : p.V;
}

// Channels-last streaming grids (splits, tiles, N): splits of each (n, tile)'s rows. The
// statistics' splits are capped: each (n, group) gets at most kMaxPartials partials.
inline int64_t cl_splits(const Problem& p, const Tile& t, int64_t target, int64_t cap) {
  return splits_for(p.N * t.tiles, target, std::min(cap, ceil_div(p.S, t.by)));
}
inline int64_t cl_stats_splits(const Problem& p, const Tile& t, int64_t target) {
  return cl_splits(p, t, target, kMaxPartials / t.tpg);
}

// Contiguous statistics (splits, G, N): splits of each (n, group) slab's Mp packs.
inline int64_t rows_stats_splits(const Problem& p, int64_t target) {
  const int64_t Mp = p.C / p.G * p.S / p.V;
  return splits_for(p.N * p.G, target, std::min<int64_t>(ceil_div(Mp, kThreads), kMaxPartials));
}

// Row segments (contiguous layout, elementwise and per-channel kernels): lpr lanes per row of
// S / V packs, rpw rows per warp, kWarps warps per CTA, rows cut into `splits` along S.
struct Segments {
  int lpr = 32, rpw = 1;
  int64_t packs = 0, rows_per_block = 0, blocks = 0, splits = 1;
};

inline Segments segments(const Problem& p, int64_t target, int64_t cap) {
  Segments s;
  s.packs = p.S / p.V;
  s.lpr = 1;
  while (s.lpr < 32 && s.lpr < s.packs) s.lpr *= 2;
  s.rpw = 32 / s.lpr;
  s.rows_per_block = int64_t(kWarps) * s.rpw;
  s.blocks = ceil_div(p.N * p.C, s.rows_per_block);
  s.splits = splits_for(s.blocks, target, std::min(cap, ceil_div(s.packs, s.lpr)));
  return s;
}

// Row r of segment kernels' CTA `block`, for thread `tid` (-1 past the last row).
FG_HD int64_t segment_row(const Segments& s, int64_t block, int tid, int64_t rows) {
  const int64_t r = (block * kWarps + tid / 32) * s.rpw + (tid % 32) / s.lpr;
  return r < rows ? r : -1;
}

}  // namespace fastguide::adagn::plan
