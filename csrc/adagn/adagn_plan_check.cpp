// Checks of the CUDA AdaGN launch plans that need no GPU, exposed to the tests as
//   torch.ops.fastguide._adagn_plan(problem, device, check) -> int[]   (schema in ops.cpp)
// It builds the plans the CUDA ops would launch (adagn_plan.h) for a problem on a described
// device, and, with check=True, walks every CTA, thread and pack the kernels would touch, with
// the kernels' own index functions, counting errors: an element touched twice or never, a
// single-pass group split across units, a partial written twice or never, a plan outside its
// limits. Also the path switch of adagn_path.h (_adagn_set_path).
#include <ATen/ATen.h>

#include <atomic>
#include <vector>

#include "adagn/adagn_path.h"
#include "adagn/adagn_plan.h"

namespace fastguide::adagn {
namespace {
std::atomic<int> g_path{0};
}  // namespace

Path path() { return Path(g_path.load()); }

int64_t set_path(int64_t p) {
  TORCH_CHECK(p == 0 || p == 1, "_adagn_set_path: 0 (auto) or 1 (multi-pass), got ", p);
  return g_path.exchange(int(p));
}

namespace {

using namespace plan;

// Visit counts of the elements of x, or of the entries of a workspace.
struct Counts {
  std::vector<uint8_t> n;
  int64_t errors = 0;

  explicit Counts(int64_t size) : n(size_t(size), 0) {}
  void hit(int64_t i, int64_t count = 1) {
    for (int64_t j = i; j < i + count; ++j) {
      if (j < 0 || j >= int64_t(n.size())) {
        ++errors;
      } else if (n[j] < 255) {
        ++n[j];
      }
    }
  }
  // Every entry exactly once; resets for the next kernel.
  int64_t finish() {
    int64_t e = errors;
    for (auto& c : n) e += c != 1, c = 0;
    errors = 0;
    return e;
  }
};

// The channels-last single pass: rows held by each thread, groups inside the unit's tile.
int64_t check_fused_cl(const Problem& p, const Fused& f, int rows_cap, int64_t kmax) {
  const Tile& t = f.t;
  const int64_t Cg = p.C / p.G;
  int64_t e = 0;
  e += f.K < 1 || f.K > kmax || f.nr < 1 || f.nr > rows_cap || f.RC != f.nr * t.by;
  e += (f.K - 1) * f.RC >= p.S || f.K * f.RC < p.S;  // no empty CTA, every row held
  e += t.CT % Cg != 0 || t.CT / Cg > int64_t(kThreads) * p.V / 2 || t.bx * p.V != t.CT;
  e += int64_t(t.bx) * t.by > kThreads || t.tiles * t.CT < p.C || t.tiles > 65535 || p.N > 65535;
  Counts x(p.N * p.S * p.C);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t tile = 0; tile < t.tiles; ++tile)
      for (int64_t k = 0; k < f.K; ++k)
        for (int tid = 0; tid < kThreads; ++tid) {
          const int tx = tid % t.bx, ty = tid / t.bx;
          const int64_t c0 = cl_first_channel(tile, t.CT, tx, p.V), row0 = k * f.RC + ty;
          const int64_t rows = fused_rows_held(row0, p.S, f.nr, t.by, ty < t.by && c0 < p.C);
          for (int64_t r = 0; r < rows; ++r) x.hit(cl_offset(n, row0 + r * t.by, c0, p.S, p.C), p.V);
          if (rows > 0) {
            const int64_t gl = c0 / Cg - tile * t.CT / Cg, gl_end = (c0 + p.V - 1) / Cg - tile * t.CT / Cg;
            e += gl < 0 || gl_end >= t.CT / Cg;
          }
        }
  return e + x.finish();
}

int64_t check_fused_rows(const Problem& p, const Fused& f, int64_t kmax) {
  const int64_t Cg = p.C / p.G, Mp = Cg * p.S / p.V;
  int64_t e = 0;
  e += f.K < 1 || f.K > kmax || f.nr < 1 || f.nr > kFwdRows || f.RC != f.nr * kThreads;
  e += (f.K - 1) * f.RC >= Mp || f.K * f.RC < Mp || Cg > kTable || p.S % p.V != 0;
  e += Mp * p.V >= (int64_t(1) << 31);  // the kernel finds channels with 32-bit maths
  Counts x(p.N * p.C * p.S);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t g = 0; g < p.G; ++g)
      for (int64_t k = 0; k < f.K; ++k)
        for (int tid = 0; tid < kThreads; ++tid)
          for (int64_t r = 0; r < f.nr; ++r) {
            const int64_t pk = k * f.RC + tid + r * kThreads;
            if (pk >= Mp) continue;
            x.hit(rows_offset(n, g, pk, Cg, p.S, p.C, p.V), p.V);
            e += (pk * p.V) / p.S != (pk * p.V + p.V - 1) / p.S;  // one channel per pack
          }
  return e + x.finish();
}

// A channels-last streaming kernel: rows s0 + ty + i * by of each split.
int64_t check_cl_stream(const Problem& p, const Tile& t, int64_t splits) {
  Counts x(p.N * p.S * p.C);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t tile = 0; tile < t.tiles; ++tile)
      for (int64_t sp = 0; sp < splits; ++sp)
        for (int tid = 0; tid < kThreads; ++tid) {
          const int tx = tid % t.bx, ty = tid / t.bx;
          const int64_t c0 = cl_first_channel(tile, t.CT, tx, p.V);
          if (ty >= t.by || c0 >= p.C) continue;
          for (int64_t row = cut(p.S, sp, splits) + ty; row < cut(p.S, sp + 1, splits); row += t.by)
            x.hit(cl_offset(n, row, c0, p.S, p.C), p.V);
        }
  return x.finish() + (splits > 65535 || t.tiles > 65535);
}

// The channels-last statistics' partials: (n, group, part) each written once.
int64_t check_cl_partials(const Problem& p, const Tile& t, int64_t splits) {
  const int64_t Cg = p.C / p.G, P = splits * t.tpg;
  Counts w(p.N * p.G * P);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t tile = 0; tile < t.tiles; ++tile)
      for (int64_t sp = 0; sp < splits; ++sp)
        for (int64_t gl = 0; gl < tile_groups(t, Cg); ++gl) {
          const int64_t g = tile_group(t, tile, gl, Cg);
          if (g < p.G) w.hit((n * p.G + g) * P + tile_part(t, tile, sp, splits));
        }
  return w.finish() + (P > kMaxPartials);
}

int64_t check_rows_stats(const Problem& p, int64_t splits) {
  const int64_t Cg = p.C / p.G, Mp = Cg * p.S / p.V;
  Counts x(p.N * p.C * p.S);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t g = 0; g < p.G; ++g)
      for (int64_t sp = 0; sp < splits; ++sp)
        for (int tid = 0; tid < kThreads; ++tid)
          for (int64_t pk = cut(Mp, sp, splits) + tid; pk < cut(Mp, sp + 1, splits); pk += kThreads)
            x.hit(rows_offset(n, g, pk, Cg, p.S, p.C, p.V), p.V);
  return x.finish() + (splits > kMaxPartials);
}

// Row segments: elements, and the per-(n, split, c) partials of the backward sums.
int64_t check_segments(const Problem& p, const Segments& s, bool partials) {
  Counts x(p.N * p.C * p.S), w(p.N * s.splits * p.C);
  for (int64_t blk = 0; blk < s.blocks; ++blk)
    for (int tid = 0; tid < kThreads; ++tid) {
      const int64_t row = segment_row(s, blk, tid, p.N * p.C);
      const int li = (tid % 32) % s.lpr;
      if (row < 0) continue;
      for (int64_t sp = 0; sp < s.splits; ++sp) {
        for (int64_t q = cut(s.packs, sp, s.splits) + li; q < cut(s.packs, sp + 1, s.splits); q += s.lpr)
          x.hit(row * p.S + q * p.V, p.V);
        if (li == 0) w.hit(((row / p.C) * s.splits + sp) * p.C + row % p.C);
      }
    }
  return x.finish() + (partials ? w.finish() : 0) + (s.splits > 65535) + (s.lpr * s.rpw != 32);
}

// problem: N, C, S, G, element size, channels_last, 16-byte aligned pointers.
// device: CTA targets of the single-pass forward, the single-pass backward and the streaming
// kernels, and whether clusters may be used (an sm_90 device).
// Returns: forward single pass (0/1), its K, nr, CT; the same for the backward; the multi-pass
// pack width, statistics splits, partials per group; the error count (with check).
}  // namespace

std::vector<int64_t> plan_op(at::IntArrayRef problem, at::IntArrayRef device, bool check) {
  TORCH_CHECK(problem.size() == 7 && device.size() == 4,
              "_adagn_plan: problem = [N, C, S, G, elem_size, channels_last, aligned], "
              "device = [fused_fwd_ctas, fused_bwd_ctas, stream_ctas, clusters]");
  const int64_t N = problem[0], C = problem[1], S = problem[2], G = problem[3], elem = problem[4];
  const bool cl = problem[5] != 0, aligned = problem[6] != 0;
  TORCH_CHECK(N > 0 && C > 0 && S > 0 && G > 0 && C % G == 0 && (elem == 2 || elem == 4),
              "_adagn_plan: bad problem");
  const int v16 = int(16 / elem);
  const int V = aligned && (cl ? C : S) % v16 == 0 ? v16 : 1;
  const Problem p{N, C, S, G, cl, V};
  const int64_t kmax = device[3] ? kMaxCluster : 1;
  const Fused ff = cl ? fused_cl(p, kFwdRows, kmax, device[0]) : fused_rows(p, kFwdRows, kmax, device[0]);
  const Fused fb = cl ? fused_cl(p, kBwdRows, kmax, device[1]) : Fused{};
  const Problem pm{N, C, S, G, cl, multipass_width(p)};
  int64_t splits = 0, P = 0, errors = 0;
  if (cl) {
    const Tile t = widest_tile(pm);
    splits = cl_stats_splits(pm, t, device[2]);
    P = splits * t.tpg;
    if (check) {
      errors += t.CT == 0 || t.bx * pm.V != t.CT || int64_t(t.bx) * t.by > kThreads;
      errors += t.tpg > 1 ? (C / G) % t.CT != 0 : t.CT % (C / G) != 0;
      errors += check_cl_stream(pm, t, splits) + check_cl_partials(pm, t, splits);
      errors += check_cl_stream(pm, t, cl_splits(pm, t, device[2], 65535));  // apply, dx
      const int64_t sb = cl_splits(pm, t, device[2], kMaxPartials);           // backward sums
      errors += check_cl_stream(pm, t, sb) + (sb > kMaxPartials);
    }
  } else {
    splits = P = rows_stats_splits(pm, device[2]);
    if (check) {
      errors += check_rows_stats(pm, splits);
      errors += check_segments(pm, segments(pm, device[2], 65535), false);          // apply, dx
      errors += check_segments(pm, segments(pm, device[2], kMaxPartials), true);    // sums
    }
  }
  if (check && ff.ok) errors += cl ? check_fused_cl(p, ff, kFwdRows, kmax) : check_fused_rows(p, ff, kmax);
  if (check && fb.ok) errors += check_fused_cl(p, fb, kBwdRows, kmax);
  return {ff.ok, ff.K, ff.nr, ff.t.CT, fb.ok, fb.K, fb.nr, fb.t.CT, pm.V, splits, P, errors};
}

}  // namespace fastguide::adagn
