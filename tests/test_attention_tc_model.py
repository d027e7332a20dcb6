"""A CPU model of the numerics of the tensor-core attention kernels (csrc/attention/tc_fwd.cuh,
tc_bwd.cuh) against the fp32 reference: key tiles with an online softmax in base 2 (1/sqrt(d)
folded into log2(e)), P and dS rounded to the input dtype before their matmuls, fp32
accumulation, and a backward from the saved log-sum-exp. It shows that the algorithm meets the
error bounds test_attention_cuda.py asserts on the GPU, and what they rest on.

It models the arithmetic only; it does not run, and does not verify, the CUDA code (the index
maths has its own CPU check in test_attention_tc_layout.py; the kernels are verified on a GPU).
"""
import math

import pytest
import torch

from test_adagn import rel_err

LOG2E = 1.4426950408889634

# Error bounds of the fp16/bf16 kernels, in units of the dtype's rounding u (2^-8 bf16, 2^-11
# fp16), as max |error| / max |reference| against fp32 maths on the same rounded inputs (for the
# gradient: over the whole dqkv; at L = 1, dq and dk are exactly 0). The model below lands at
# <= 1.4 u; the bounds leave room for other summation orders.
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FWD_UNITS, BWD_UNITS = 3, 6


def forward_model(q, k, v, block, dtype):
    """tc_fwd.cuh for one head: q, k, v [L, d]; block keys a tile. Returns (out, lse)."""
    length, d = q.shape
    c = LOG2E / math.sqrt(d)  # the scale folded into exp2's argument
    m, l = torch.full((length,), -math.inf), torch.zeros(length)
    o = torch.zeros(length, d)
    for j0 in range(0, length, block):
        s = q.float() @ k[j0:j0 + block].float().T  # a short last tile: columns beyond L absent
        m_new = torch.maximum(m, s.max(1).values)
        alpha = torch.exp2(m * c - m_new * c)
        p = torch.exp2(s * c - (m_new * c)[:, None])
        l = l * alpha + p.sum(1)
        o = o * alpha[:, None] + p.to(dtype).float() @ v[j0:j0 + block].float()
        m = m_new
    return (o / l[:, None]).to(dtype), m / math.sqrt(d) + torch.log(l)


def backward_model(q, k, v, out, lse, grad_out, dtype):
    """tc_bwd.cuh for one head (the tiling of a sum of products does not change the model)."""
    scale = 1 / math.sqrt(q.shape[1])
    D = (grad_out.float() * out.float()).sum(1)
    p = torch.exp2((q.float() @ k.float().T) * (scale * LOG2E) - (lse * LOG2E)[:, None])
    dv = p.to(dtype).float().T @ grad_out.float()
    ds = p * (grad_out.float() @ v.float().T - D[:, None])
    dq = scale * ds.to(dtype).float() @ k.float()
    dk = scale * ds.to(dtype).float().T @ q.float()
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


def reference(q, k, v, grad_out):
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    w = torch.softmax(q @ k.T / math.sqrt(q.shape[1]), -1)
    out = w @ v
    out.backward(grad_out.float())
    lse = torch.logsumexp(q.detach() @ k.detach().T / math.sqrt(q.shape[1]), -1)
    return out.detach(), lse, q.grad, k.grad, v.grad


def inputs(length, d, dtype, logit_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (logit_scale * torch.randn(length, d, generator=g)).to(dtype), (logit_scale * torch.randn(length, d, generator=g)).to(dtype)
    v, go = torch.randn(length, d, generator=g).to(dtype), torch.randn(length, d, generator=g).to(dtype)
    return q, k, v, go


@pytest.mark.parametrize("length,block", [(1, 64), (7, 64), (65, 64), (200, 32), (256, 64)])
def test_tiled_online_softmax_is_exact_in_fp32(length, block):
    """Without rounding, tiles, the base-2 exponent and the rescaling change nothing."""
    q, k, v, go = inputs(length, 40, torch.float32)
    out, lse = forward_model(q, k, v, block, torch.float32)
    ref_out, ref_lse, rq, rk, rv = reference(q, k, v, go)
    assert rel_err(out, ref_out) <= 1e-5 and rel_err(lse, ref_lse) <= 1e-5
    grad = torch.cat(backward_model(q, k, v, out, lse, go, torch.float32))
    assert rel_err(grad, torch.cat([rq, rk, rv])) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length,d,logit_scale", [(64, 64, 1.0), (1000, 32, 1.0), (512, 128, 1.0),
                                                  (300, 256, 1.0), (65, 8, 1.0), (512, 64, 3.0),
                                                  (512, 64, 0.3)])
def test_rounding_stays_within_the_documented_bounds(dtype, length, d, logit_scale):
    q, k, v, go = inputs(length, d, dtype, logit_scale, seed=length + d)
    out, lse = forward_model(q, k, v, 64 if d <= 128 else 32, dtype)
    ref_out, _, rq, rk, rv = reference(q, k, v, go)
    u = UNIT[dtype]
    assert rel_err(out, ref_out) <= FWD_UNITS * u
    grad = torch.cat(backward_model(q, k, v, out, lse, go, dtype))
    assert rel_err(grad, torch.cat([rq, rk, rv])) <= BWD_UNITS * u


def test_the_bounds_catch_a_wrong_scale():
    """The scale of a padded head dim (64 for d = 40) instead of the real one breaks the bound."""
    q, k, v, go = inputs(256, 40, torch.bfloat16)
    ref_out = reference(q, k, v, go)[0]
    wrong = forward_model(q * math.sqrt(40 / 64), k, v, 64, torch.bfloat16)[0]
    assert rel_err(wrong, ref_out) > FWD_UNITS * UNIT[torch.bfloat16]
