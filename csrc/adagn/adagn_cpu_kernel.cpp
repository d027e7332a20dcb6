// Fused AdaGN CPU kernels. Compiled once per instruction set with FG_ISA naming the namespace
// (base, avx2); see adagn_cpu_kernel.h for why nothing here may include ATen or use std
// containers. Everything but the exported table has internal linkage.
//
// Forward: two-pass statistics (mean, then centred squares) in fp32 lanes summed blockwise
// into double, then y = act(a * (x - mean) + b) with a = rstd*gamma*(1+scale),
// b = beta*(1+scale) + shift.
// Backward: with z = a*(x - mean) + b, dz = dy * act'(z), xhat = (x - mean)*rstd and per (n, c)
// S1 = sum_s dz, S2 = sum_s dz*xhat:
//   dshift = S1, dscale = gamma*S2 + beta*S1,
//   dbias = sum_n (1+scale)*S1, dweight = sum_n (1+scale)*S2,
//   dx = k*dz - rstd*(m1 + xhat*m2),  k = rstd*gamma*(1+scale),
//   m1, m2 = means over the group of gamma*(1+scale)*dz and gamma*(1+scale)*dz*xhat.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "adagn/adagn_cpu_kernel.h"
#include "common/cpu_math.h"

#ifndef FG_ISA
#error "compile with -DFG_ISA=<namespace>"
#endif

namespace fastguide::adagn::cpu {
namespace {

constexpr int64_t kBlock = 4096;  // elements summed in lanes before going to double
constexpr int kLanes = 8;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// ---- element types: storage S, accumulation A --------------------------------------------

struct F32 {
  using S = float;
  using A = float;
  static A load(S v) { return v; }
  static S store(A v) { return v; }
};
struct F64 {
  using S = double;
  using A = double;
  static A load(S v) { return v; }
  static S store(A v) { return v; }
};
struct BF16 {
  using S = uint16_t;
  using A = float;
  static A load(S v) {
    const uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static S store(A f) {  // round to nearest even; NaN stays a quiet NaN
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return f != f ? S(0x7fc0) : S(r);
  }
};
struct F16 {
  using S = _Float16;  // IEEE binary16: same bits as at::Half
  using A = float;
  static A load(S v) { return A(v); }
  static S store(A v) { return S(v); }
};

// ---- scratch and parallel loops --------------------------------------------------------------

template <typename T>
struct Buf {  // zero-initialised heap array (no std::vector: see the header)
  T* p;
  explicit Buf(int64_t n) : p(new T[n > 0 ? n : 1]()) {}
  ~Buf() { delete[] p; }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T& operator[](int64_t i) { return p[i]; }
  const T& operator[](int64_t i) const { return p[i]; }
};

template <typename F>
void thunk(void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); }

template <typename F>
void par(const Problem& p, int64_t n, int64_t grain, F f) {
  p.parallel(0, n, imax(grain, 1), &f, &thunk<F>);
}

// Spatial chunks for [N, S, C] work, so that N * chunks tasks keep every thread busy at batch 1.
int64_t chunks(const Problem& p) {
  const int64_t want = (4 * p.threads + p.N - 1) / imax(p.N, 1);
  return imax(1, imin(want, imax(p.S, 1)));
}

// sum over i < n of f(i), in kLanes independent fp32 lanes (vectorisable) per block of kBlock,
// the block sums added in double so long rows keep full accuracy. K sums at once.
template <int K, typename A, typename F>
void blocked_sum(int64_t n, F f, double (&out)[K]) {
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = imin(n, i0 + kBlock);
    A lane[K][kLanes] = {};
    int64_t i = i0;
    for (; i + kLanes <= i1; i += kLanes)
      for (int l = 0; l < kLanes; ++l) f(i + l, lane, l);
    for (; i < i1; ++i) f(i, lane, 0);
    for (int k = 0; k < K; ++k) {
      A s = 0;
      for (int l = 0; l < kLanes; ++l) s += lane[k][l];
      out[k] += double(s);
    }
  }
}

// ---- statistics ----------------------------------------------------------------------------

template <typename IO>
void stats_rows(const Problem& p, const typename IO::S* x, double eps, typename IO::A* mean,
                typename IO::A* rstd) {
  using A = typename IO::A;
  const int64_t M = p.C / p.G * p.S;  // each (n, g) is one contiguous span
  par(p, p.N * p.G, 32768 / imax(M, 1), [&](int64_t b, int64_t e) {
    for (int64_t ng = b; ng < e; ++ng) {
      const typename IO::S* __restrict xs = x + ng * M;
      double sum[1] = {0}, sq[1] = {0};
      blocked_sum<1, A>(M, [&](int64_t i, A (&lane)[1][kLanes], int l) { lane[0][l] += IO::load(xs[i]); }, sum);
      const A mu = A(sum[0] / double(M));
      blocked_sum<1, A>(M, [&](int64_t i, A (&lane)[1][kLanes], int l) {
        const A d = IO::load(xs[i]) - mu;
        lane[0][l] += d * d;
      }, sq);
      mean[ng] = mu;
      rstd[ng] = A(1.0 / std::sqrt(sq[0] / double(M) + eps));
    }
  });
}

// Per-(n, group) sums of (x - centre[n, c])^k over an [N, S, C] tensor (k = 1 or 2).
template <typename IO, int POWER>
void group_sums_cl(const Problem& p, const typename IO::S* x, const typename IO::A* centre,
                   double* out) {
  using A = typename IO::A;
  const int64_t K = chunks(p), C = p.C, G = p.G, Cg = C / G;
  Buf<double> part(p.N * K * G);
  par(p, p.N * K, 1, [&](int64_t b, int64_t e) {
    Buf<A> acc_buf(C);
    A* __restrict acc = acc_buf.p;
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / K, k = task % K;
      const A* __restrict ctr = centre + n * C;
      for (int64_t c = 0; c < C; ++c) acc[c] = 0;
      for (int64_t s = p.S * k / K; s < p.S * (k + 1) / K; ++s) {
        const typename IO::S* __restrict row = x + (n * p.S + s) * C;
        for (int64_t c = 0; c < C; ++c) {
          const A d = IO::load(row[c]) - ctr[c];
          acc[c] += POWER == 1 ? d : d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c) part[task * G + c / Cg] += double(acc[c]);
    }
  });
  for (int64_t i = 0; i < p.N * G; ++i) out[i] = 0;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t g = 0; g < G; ++g) out[n * G + g] += part[(n * K + k) * G + g];
}

template <typename IO>
void stats_cl(const Problem& p, const typename IO::S* x, double eps, typename IO::A* mean,
              typename IO::A* rstd) {
  using A = typename IO::A;
  const int64_t NC = p.N * p.C, Cg = p.C / p.G;
  const double M = double(Cg * p.S);
  Buf<double> sum(p.N * p.G), sq(p.N * p.G);
  Buf<A> centre(NC);  // zeros for the first pass, then the group mean per channel
  group_sums_cl<IO, 1>(p, x, centre.p, sum.p);
  for (int64_t nc = 0; nc < NC; ++nc) centre[nc] = A(sum[(nc / p.C) * p.G + (nc % p.C) / Cg] / M);
  group_sums_cl<IO, 2>(p, x, centre.p, sq.p);
  for (int64_t ng = 0; ng < p.N * p.G; ++ng) {
    mean[ng] = A(sum[ng] / M);
    rstd[ng] = A(1.0 / std::sqrt(sq[ng] / M + eps));
  }
}

// ---- per-(n, c) coefficients ---------------------------------------------------------------

template <typename A>
struct Coef {  // [N, C] planes
  Buf<A> a, b, mean;
  explicit Coef(int64_t nc) : a(nc), b(nc), mean(nc) {}
};

template <typename A>
A param(const void* t, int64_t i, A absent) {
  return t ? static_cast<const A*>(t)[i] : absent;
}

template <typename A>
void fold(const Problem& p, const Params& w, const A* mean, const A* rstd, Coef<A>& co) {
  const int64_t Cg = p.C / p.G;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t c = 0; c < p.C; ++c) {
      const int64_t nc = n * p.C + c, ng = n * p.G + c / Cg;
      const A s1 = A(1) + param<A>(w.scale, nc, A(0));
      co.a[nc] = rstd[ng] * param<A>(w.gamma, c, A(1)) * s1;
      co.b[nc] = param<A>(w.beta, c, A(0)) * s1 + param<A>(w.shift, nc, A(0));
      co.mean[nc] = mean[ng];
    }
}

// f(nc0, i0, len, stride_c): a run of `len` elements starting at flat index i0 whose
// coefficients start at nc0 and advance by stride_c (0 for an [N, C, S] row, 1 for an
// [N, S, C] row). Rows are spread over threads.
template <typename F>
void for_each_run(const Problem& p, F f) {
  if (!p.channels_last) {
    par(p, p.N * p.C, 16384 / imax(p.S, 1), [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) f(nc, nc * p.S, p.S, 0);
    });
  } else {
    par(p, p.N * p.S, 16384 / imax(p.C, 1), [&](int64_t b, int64_t e) {
      for (int64_t ns = b; ns < e; ++ns) f((ns / p.S) * p.C, ns * p.C, p.C, 1);
    });
  }
}

template <typename IO, bool SILU>
void apply(const Problem& p, const typename IO::S* x, typename IO::S* y, const Coef<typename IO::A>& co) {
  using A = typename IO::A;
  for_each_run(p, [&](int64_t nc0, int64_t i0, int64_t len, int64_t sc) {
    const A* __restrict a = co.a.p + nc0;
    const A* __restrict b = co.b.p + nc0;
    const A* __restrict m = co.mean.p + nc0;
    const typename IO::S* __restrict xs = x + i0;
    typename IO::S* __restrict ys = y + i0;
    if (sc == 0) {
      const A a0 = a[0], b0 = b[0], m0 = m[0];
      for (int64_t i = 0; i < len; ++i) ys[i] = IO::store(act<SILU>(a0 * (IO::load(xs[i]) - m0) + b0));
    } else {
      for (int64_t i = 0; i < len; ++i) ys[i] = IO::store(act<SILU>(a[i] * (IO::load(xs[i]) - m[i]) + b[i]));
    }
  });
}

template <typename IO>
void forward(const Problem& p, const Params& w, double eps, const void* xv, void* yv, void* mv,
             void* rv) {
  using A = typename IO::A;
  const auto* x = static_cast<const typename IO::S*>(xv);
  auto* y = static_cast<typename IO::S*>(yv);
  A* mean = static_cast<A*>(mv);
  A* rstd = static_cast<A*>(rv);
  if (p.channels_last) stats_cl<IO>(p, x, eps, mean, rstd);
  else stats_rows<IO>(p, x, eps, mean, rstd);
  Coef<A> co(p.N * p.C);
  fold(p, w, mean, rstd, co);
  if (p.silu) apply<IO, true>(p, x, y, co);
  else apply<IO, false>(p, x, y, co);
}

// ---- backward ------------------------------------------------------------------------------

// S1 = sum dz, S2 = sum dz * (x - mean) (times rstd later), per (n, c).
template <typename IO, bool SILU>
void dz_sums(const Problem& p, const typename IO::S* dy, const typename IO::S* x,
             const Coef<typename IO::A>& co, double* S1, double* S2) {
  using A = typename IO::A;
  if (!p.channels_last) {
    par(p, p.N * p.C, 16384 / imax(p.S, 1), [&](int64_t b0, int64_t e0) {
      for (int64_t nc = b0; nc < e0; ++nc) {
        const A a = co.a[nc], b = co.b[nc], m = co.mean[nc];
        const typename IO::S* __restrict xs = x + nc * p.S;
        const typename IO::S* __restrict gs = dy + nc * p.S;
        double out[2] = {0, 0};
        blocked_sum<2, A>(p.S, [&](int64_t i, A (&lane)[2][kLanes], int l) {
          const A xc = IO::load(xs[i]) - m;
          const A dz = IO::load(gs[i]) * act_grad<SILU>(a * xc + b);
          lane[0][l] += dz;
          lane[1][l] += dz * xc;
        }, out);
        S1[nc] = out[0];
        S2[nc] = out[1];
      }
    });
    return;
  }
  const int64_t K = chunks(p), C = p.C;
  Buf<double> p1(p.N * K * C), p2(p.N * K * C);
  par(p, p.N * K, 1, [&](int64_t b0, int64_t e0) {
    Buf<A> acc1_buf(C), acc2_buf(C);
    A* __restrict acc1 = acc1_buf.p;
    A* __restrict acc2 = acc2_buf.p;
    for (int64_t task = b0; task < e0; ++task) {
      const int64_t n = task / K, k = task % K;
      const A* __restrict a = co.a.p + n * C;
      const A* __restrict b = co.b.p + n * C;
      const A* __restrict m = co.mean.p + n * C;
      for (int64_t c = 0; c < C; ++c) acc1[c] = acc2[c] = 0;
      for (int64_t s = p.S * k / K; s < p.S * (k + 1) / K; ++s) {
        const typename IO::S* __restrict xs = x + (n * p.S + s) * C;
        const typename IO::S* __restrict gs = dy + (n * p.S + s) * C;
        for (int64_t c = 0; c < C; ++c) {
          const A xc = IO::load(xs[c]) - m[c];
          const A dz = IO::load(gs[c]) * act_grad<SILU>(a[c] * xc + b[c]);
          acc1[c] += dz;
          acc2[c] += dz * xc;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        p1[task * C + c] = acc1[c];
        p2[task * C + c] = acc2[c];
      }
    }
  });
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double t1 = 0, t2 = 0;
      for (int64_t k = 0; k < K; ++k) t1 += p1[(n * K + k) * C + c], t2 += p2[(n * K + k) * C + c];
      S1[n * C + c] = t1;
      S2[n * C + c] = t2;
    }
}

template <typename A>
struct DxCoef {  // dx = k*dz + m2r*(x - mean) + q, per (n, c)
  Buf<A> k, q, m2r;
  explicit DxCoef(int64_t nc) : k(nc), q(nc), m2r(nc) {}
};

// Parameter gradients and dx coefficients from S1 and S2 (S2 still lacks its rstd factor).
template <typename A>
void finalize_backward(const Problem& p, const Params& w, const A* rstd, const double* S1,
                       double* S2, A* dw, A* db, A* dsc, A* dsh, DxCoef<A>& dc) {
  const int64_t C = p.C, G = p.G, Cg = C / G;
  const double M = double(Cg * p.S);
  for (int64_t c = 0; c < C; ++c) dw[c] = db[c] = 0;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      const double r = rstd[n * G + g];
      double m1 = 0, m2 = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const int64_t nc = n * C + c;
        S2[nc] *= r;
        const double gam = param<A>(w.gamma, c, A(1)), bet = param<A>(w.beta, c, A(0));
        const double s1 = 1.0 + param<A>(w.scale, nc, A(0));
        dsh[nc] = A(S1[nc]);
        dsc[nc] = A(gam * S2[nc] + bet * S1[nc]);
        dw[c] += A(s1 * S2[nc]);
        db[c] += A(s1 * S1[nc]);
        m1 += gam * s1 * S1[nc];
        m2 += gam * s1 * S2[nc];
      }
      m1 /= M;
      m2 /= M;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const int64_t nc = n * C + c;
        const double gs = param<A>(w.gamma, c, A(1)) * (1.0 + param<A>(w.scale, nc, A(0)));
        dc.k[nc] = A(r * gs);
        dc.q[nc] = A(-r * m1);
        dc.m2r[nc] = A(-r * r * m2);
      }
    }
}

template <typename IO, bool SILU>
void write_dx(const Problem& p, const typename IO::S* dy, const typename IO::S* x,
              typename IO::S* dx, const Coef<typename IO::A>& co, const DxCoef<typename IO::A>& dc) {
  using A = typename IO::A;
  for_each_run(p, [&](int64_t nc0, int64_t i0, int64_t len, int64_t sc) {
    const typename IO::S* __restrict xs = x + i0;
    const typename IO::S* __restrict gs = dy + i0;
    typename IO::S* __restrict out = dx + i0;
    const A *__restrict a = co.a.p + nc0, *__restrict b = co.b.p + nc0, *__restrict m = co.mean.p + nc0;
    const A *__restrict k = dc.k.p + nc0, *__restrict q = dc.q.p + nc0, *__restrict m2r = dc.m2r.p + nc0;
    if (sc == 0) {
      const A a0 = a[0], b0 = b[0], m0 = m[0], k0 = k[0], q0 = q[0], r0 = m2r[0];
      for (int64_t i = 0; i < len; ++i) {
        const A xc = IO::load(xs[i]) - m0;
        out[i] = IO::store(k0 * IO::load(gs[i]) * act_grad<SILU>(a0 * xc + b0) + r0 * xc + q0);
      }
    } else {
      for (int64_t i = 0; i < len; ++i) {
        const A xc = IO::load(xs[i]) - m[i];
        out[i] = IO::store(k[i] * IO::load(gs[i]) * act_grad<SILU>(a[i] * xc + b[i]) + m2r[i] * xc + q[i]);
      }
    }
  });
}

template <typename IO>
void backward(const Problem& p, const Params& w, const void* dyv, const void* xv, const void* mv,
              const void* rv, void* dxv, void* dwv, void* dbv, void* dscv, void* dshv) {
  using A = typename IO::A;
  using S = typename IO::S;
  const S* dy = static_cast<const S*>(dyv);
  const S* x = static_cast<const S*>(xv);
  const A* mean = static_cast<const A*>(mv);
  const A* rstd = static_cast<const A*>(rv);
  const int64_t NC = p.N * p.C;
  Coef<A> co(NC);
  fold(p, w, mean, rstd, co);
  Buf<double> S1(NC), S2(NC);
  if (p.silu) dz_sums<IO, true>(p, dy, x, co, S1.p, S2.p);
  else dz_sums<IO, false>(p, dy, x, co, S1.p, S2.p);
  DxCoef<A> dc(NC);
  finalize_backward(p, w, rstd, S1.p, S2.p, static_cast<A*>(dwv), static_cast<A*>(dbv),
                    static_cast<A*>(dscv), static_cast<A*>(dshv), dc);
  if (p.silu) write_dx<IO, true>(p, dy, x, static_cast<S*>(dxv), co, dc);
  else write_dx<IO, false>(p, dy, x, static_cast<S*>(dxv), co, dc);
}

// ---- dtype dispatch --------------------------------------------------------------------------

void forward_any(const Problem& p, const Params& w, double eps, const void* x, void* y, void* m,
                 void* r) {
  switch (p.elem) {
    case Elem::f32: return forward<F32>(p, w, eps, x, y, m, r);
    case Elem::f64: return forward<F64>(p, w, eps, x, y, m, r);
    case Elem::f16: return forward<F16>(p, w, eps, x, y, m, r);
    case Elem::bf16: return forward<BF16>(p, w, eps, x, y, m, r);
  }
}

void backward_any(const Problem& p, const Params& w, const void* dy, const void* x, const void* m,
                  const void* r, void* dx, void* dw, void* db, void* dsc, void* dsh) {
  switch (p.elem) {
    case Elem::f32: return backward<F32>(p, w, dy, x, m, r, dx, dw, db, dsc, dsh);
    case Elem::f64: return backward<F64>(p, w, dy, x, m, r, dx, dw, db, dsc, dsh);
    case Elem::f16: return backward<F16>(p, w, dy, x, m, r, dx, dw, db, dsc, dsh);
    case Elem::bf16: return backward<BF16>(p, w, dy, x, m, r, dx, dw, db, dsc, dsh);
  }
}

}  // namespace

namespace FG_ISA {
extern const Kernels kernels = {&forward_any, &backward_any};
}

}  // namespace fastguide::adagn::cpu
