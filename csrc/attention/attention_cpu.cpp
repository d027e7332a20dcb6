// Multi-head attention on the CPU, blocked over queries so that memory stays O(heads * block * L)
// rather than O(L^2): per query block, one batched GEMM over all (n, head) for the logits, the
// softmax in place, one batched GEMM for the output, all in fp32 (fp64 for fp64 input). The
// GEMMs parallelise internally; nothing here runs inside another parallel region (a GEMM inside
// at::parallel_for oversubscribes the threads). The backward recomputes each block's
// probabilities from the saved log-sum-exp (flash-style) and accumulates dK, dV over blocks.
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "attention/attention.h"

namespace fastguide::attention {
namespace {

constexpr int64_t kBlockElems = int64_t(1) << 19;  // logits per block: 2 MB in fp32, cache-resident

at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Query rows per block for N*H heads of L keys.
int64_t block_rows(const Shape& s) {
  return std::clamp<int64_t>(kBlockElems / std::max<int64_t>(s.N * s.H * s.L, 1), 16, std::max<int64_t>(s.L, 16));
}

// [N*H, L, ch] contiguous copy of an [N, H, L, ch] view, in the accumulation dtype.
at::Tensor heads_major(const at::Tensor& v, const Shape& s, at::ScalarType acc) {
  return v.to(acc).reshape({s.N * s.H, s.L, s.ch});
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& qkv, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention", qkv, heads, new_order);
  const auto acc = acc_dtype(qkv);
  at::Tensor out = empty_in_layout(s, s.C, qkv);
  at::Tensor lse = at::empty({s.N, s.H, s.L}, qkv.options().dtype(acc));
  if (qkv.numel() == 0) return {out, lse};
  const double scale = 1.0 / std::sqrt(double(s.ch));
  const at::Tensor q = heads_major(part_view(qkv, s, 0), s, acc) * scale;  // scale the small side
  const at::Tensor kt = heads_major(part_view(qkv, s, 1), s, acc).transpose(1, 2);
  const at::Tensor v = heads_major(part_view(qkv, s, 2), s, acc);
  const at::Tensor O = heads_view(out, s);  // [N, H, L, ch], a view in either layout
  const at::Tensor lse3 = lse.view({s.N * s.H, s.L});
  const int64_t bq = block_rows(s);
  for (int64_t q0 = 0; q0 < s.L; q0 += bq) {
    const int64_t rows = std::min(bq, s.L - q0);
    at::Tensor S = at::bmm(q.narrow(1, q0, rows), kt);               // logits [NH, rows, L]
    const at::Tensor m = S.amax(2, true);
    S.sub_(m).exp_();                                                   // softmax numerators
    const at::Tensor l = S.sum(2, true);
    O.narrow(2, q0, rows).copy_(at::bmm(S, v).div_(l).view({s.N, s.H, rows, s.ch}));
    lse3.narrow(1, q0, rows).copy_((m + l.log()).squeeze(2));
  }
  return {out, lse};
}

at::Tensor backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                        const at::Tensor& lse, int64_t heads, bool new_order) {
  const Shape s = check_qkv("attention_backward", qkv, heads, new_order);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({s.N, s.C, s.L}),
              "attention_backward: grad_out and out must be [N, C, L]");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.N, s.H, s.L}), "attention_backward: lse must be [N, heads, L]");
  const auto acc = acc_dtype(qkv);
  at::Tensor grad = empty_in_layout(s, 3 * s.C, qkv);
  if (qkv.numel() == 0) return grad;
  const double scale = 1.0 / std::sqrt(double(s.ch));
  const at::Tensor q = heads_major(part_view(qkv, s, 0), s, acc) * scale;  // q / sqrt(ch)
  const at::Tensor k = heads_major(part_view(qkv, s, 1), s, acc);
  const at::Tensor v = heads_major(part_view(qkv, s, 2), s, acc);
  const at::Tensor go = heads_major(heads_view(grad_out, s), s, acc);
  const at::Tensor o = heads_major(heads_view(out, s), s, acc);
  const at::Tensor lse3 = lse.to(acc).reshape({s.N * s.H, s.L});
  const at::Tensor D = (go * o).sum(2);                                // rowsum(dO * O) [NH, L]
  at::Tensor dq = at::empty_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  const int64_t bq = block_rows(s);
  for (int64_t q0 = 0; q0 < s.L; q0 += bq) {
    const int64_t rows = std::min(bq, s.L - q0);
    const at::Tensor qb = q.narrow(1, q0, rows), gob = go.narrow(1, q0, rows);
    at::Tensor P = at::bmm(qb, k.transpose(1, 2)).sub_(lse3.narrow(1, q0, rows).unsqueeze(2)).exp_();
    dv.baddbmm_(P.transpose(1, 2), gob);
    at::Tensor dS = P.mul_(at::bmm(gob, v.transpose(1, 2)).sub_(D.narrow(1, q0, rows).unsqueeze(2)));  // P*(dP - D)
    dq.narrow(1, q0, rows).copy_(at::bmm(dS, k).mul_(scale));
    dk.baddbmm_(dS.transpose(1, 2), qb);  // qb already carries the 1/sqrt(ch)
  }
  const auto split = [&](const at::Tensor& t) { return t.view({s.N, s.H, s.L, s.ch}); };
  part_view(grad, s, 0).copy_(split(dq));
  part_view(grad, s, 1).copy_(split(dk));
  part_view(grad, s, 2).copy_(split(dv));
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastguide, CPU, m) {
  m.impl("attention", &forward_cpu);
  m.impl("attention_backward", &backward_cpu);
}

}  // namespace fastguide::attention
