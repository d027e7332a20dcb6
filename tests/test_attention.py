"""fastguide.ops.attention against its pure-PyTorch fp32 reference (guided-diffusion's
arithmetic), forward and backward, on the CPU kernel; the CUDA kernels in test_attention_cuda.py."""
import re

import pytest
import torch

from fastguide.ops import attention, attention_reference
from test_adagn import rel_err


def make_qkv(n, heads, ch, length, dtype=torch.float32, layout="contiguous", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(n, 3 * heads * ch, length, generator=g)).to(dtype)
    if layout == "tokens":  # a transposed view of contiguous [N, L, 3C] tokens
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def check(x, heads, order, fwd_tol, bwd_tol, seed=1):
    xf = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, ref = attention(xf, heads, order), attention_reference(xr, heads, order)
    assert y.shape == ref.shape and y.dtype == x.dtype
    if x.shape[2] > 1:  # the output keeps qkv's layout (at L = 1 the two layouts coincide)
        assert y.transpose(1, 2).is_contiguous() == (not x.is_contiguous())
    assert rel_err(y, ref) <= fwd_tol
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed)).to(x.dtype)
    y.backward(g)
    ref.float().backward(g.float())
    assert xf.grad.stride() == x.stride()
    assert rel_err(xf.grad, xr.grad) <= bwd_tol


@pytest.mark.parametrize("length", [1, 7, 64, 65, 256, 1000, 1024])
@pytest.mark.parametrize("order", ["legacy", "new"])
@pytest.mark.parametrize("layout", ["contiguous", "tokens"])
def test_sequence_lengths(length, order, layout):
    check(make_qkv(2, 4, 32, length, layout=layout), 4, order, 1e-5, 1e-5)


@pytest.mark.parametrize("heads,ch", [(1, 64), (4, 64), (8, 32), (2, 128), (3, 24)])
def test_heads_and_head_dims(heads, ch):
    check(make_qkv(2, heads, ch, 100, layout="tokens"), heads, "legacy", 1e-5, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_low_precision_and_large_logits(dtype, scale):
    """x30 inputs give logits in the thousands: the softmax must stay finite and accurate."""
    x = make_qkv(2, 4, 64, 128, dtype=dtype, layout="tokens", scale=scale)
    y = attention(x, 4, "new")
    assert torch.isfinite(y).all()
    # fp32 maths on the same rounded inputs: one rounding of the output apart.
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert rel_err(y, attention_reference(x, 4, "new")) <= 2 * ulp


def test_gradcheck_fp64():
    x = make_qkv(1, 2, 3, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: attention(t, 2, "legacy"), (x,), eps=1e-6, atol=1e-7)
    y = make_qkv(1, 2, 3, 5, dtype=torch.float64, layout="tokens").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: attention(t, 2, "new"), (y,), eps=1e-6, atol=1e-7)


def test_matches_a_hand_computation():
    """An independent check of the oracle: one head, L = 2, written out by hand."""
    q, k, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    qkv = torch.cat([q.t().expand(2, 2), k.t(), v.t()]).unsqueeze(0)  # [1, 6, 2], legacy order
    logits = torch.tensor([2.0, 0.0]) / 2 ** 0.5                       # q.k_j / sqrt(ch)
    w = torch.softmax(logits, 0)
    expected = w[0] * v[0] + w[1] * v[1]
    assert torch.allclose(attention(qkv, 1, "legacy")[0, :, 0], expected, atol=1e-6)


def test_opcheck_and_compile():
    x = make_qkv(2, 2, 16, 9, layout="tokens").requires_grad_()
    torch.library.opcheck(torch.ops.fastguide.attention.default, (x, 2, False))
    out, lse = torch.ops.fastguide.attention(x.detach(), 2, True)
    torch.library.opcheck(torch.ops.fastguide.attention_backward.default,
                          (torch.randn_like(out), x.detach(), out, lse, 2, True))
    f = torch.compile(lambda t: attention(t, 2, "new") * 2, fullgraph=True)
    assert rel_err(f(x), attention(x, 2, "new") * 2) <= 1e-6


def test_memory_does_not_grow_with_l_squared_in_backward():
    """The backward keeps no L x L matrix: its saved tensors are qkv, out and lse only."""
    x = make_qkv(1, 1, 8, 512).requires_grad_()
    y = attention(x, 1, "legacy")
    saved = [t for t in y.grad_fn.saved_tensors] if hasattr(y.grad_fn, "saved_tensors") else []
    assert all(t.numel() <= 3 * 8 * 512 for t in saved)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: attention(torch.randn(2, 30, 5), 4), ValueError, "qkv has 30 channels, which 3 * num_heads = 12"),
    (lambda: attention(torch.randn(2, 12), 1), ValueError, "qkv must be [N, 3*C, L] (3-D)"),
    (lambda: attention(torch.randn(2, 12, 4, 4), 1), ValueError, "qkv must be [N, 3*C, L] (3-D)"),
    (lambda: attention(torch.randn(2, 12, 4), 0), ValueError, "num_heads must be a positive int"),
    (lambda: attention(torch.randn(2, 12, 4), 1, "sideways"), ValueError, "order must be one of"),
    (lambda: attention(torch.randn(2, 12, 4).long(), 1), TypeError, "qkv must be float32"),
])
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        call()


def test_backward_op_rejects_mismatched_tensors():
    x = make_qkv(1, 2, 8, 6)
    out, lse = torch.ops.fastguide.attention(x, 2, False)
    with pytest.raises(RuntimeError, match="grad_out and out must be"):
        torch.ops.fastguide.attention_backward(out[:, :4], x, out, lse, 2, False)
