"""The CUDA attention kernels against the fp32 reference on the same GPU, forward and backward
with a random grad_out. Skipped without a GPU.

fp16/bf16 with head dims that are multiples of 8 up to 256 run on tensor cores and must land
within FWD_UNITS (forward) and BWD_UNITS (the whole dqkv) units of their dtype's rounding of
fp32 maths on the same rounded inputs (test_attention_tc_model.py explains the bounds); float32
and other head dims run the SIMT kernels and must land within 1e-5. The cases cover every head
dim 8..256 of the issue, every length (1, 7, 64, 65, 256, 1000, 1024, 4096), 1..16 heads, both
layouts and both channel orders, strided and misaligned views, without the full cross product,
so that the file runs in well under a minute."""
import pytest
import torch

from conftest import HAS_CUDA, cuda_kernels_built
from fastguide.ops import attention, attention_reference
from fastguide.ops.attention import attention_cuda_plan
from test_adagn import rel_err
from test_attention import make_qkv
from test_attention_tc_model import BWD_UNITS, FWD_UNITS, UNIT

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if HAS_CUDA and not cuda_kernels_built():
        pytest.fail("a GPU is present but fastguide was built without CUDA kernels")


def tolerances(dtype):
    if dtype == FP32:
        return 1e-5, 1e-5
    return FWD_UNITS * UNIT[dtype], BWD_UNITS * UNIT[dtype]


def cuda_qkv(n, heads, ch, length, dtype, layout, seed=0):
    return make_qkv(n, heads, ch, length, dtype=dtype, layout=layout, seed=seed).cuda()


def dense(t):
    return t.is_contiguous() or t.transpose(1, 2).is_contiguous()


def check(x, heads, order, grad_layout=None, seed=1):
    """The ops on x with its exact strides (autograd and .clone() would make a non-dense view
    contiguous) against the reference, forward and backward; returns the gradient."""
    dtype, new = x.dtype, order == "new"
    fwd_tol, bwd_tol = tolerances(dtype)
    xr = x.detach().float().requires_grad_()
    out, lse = torch.ops.fastguide.attention(x, heads, new)
    ref = attention_reference(xr, heads, order)
    assert out.shape == ref.shape and out.dtype == dtype and lse.dtype == FP32
    if x.shape[2] > 1 and dense(x):
        assert out.transpose(1, 2).is_contiguous() == (not x.is_contiguous())  # qkv's layout
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= fwd_tol, f"forward {rel_err(out, ref):.3e} > {fwd_tol:.3e}"
    g = torch.randn(ref.shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda").to(dtype)
    if grad_layout == "tokens":
        g = g.transpose(1, 2).contiguous().transpose(1, 2)
    grad = torch.ops.fastguide.attention_backward(g, x, out, lse, heads, new)
    ref.backward(g.float())
    if dense(x):
        assert grad.stride() == x.stride()
    err = rel_err(grad, xr.grad)
    assert err <= bwd_tol, f"backward {err:.3e} > {bwd_tol:.3e}"
    return grad


def on_tensor_cores(dtype, ch, length, batch_heads):
    return attention_cuda_plan(dtype, ch, length, batch_heads).startswith("tensor cores")


# (head dim, L, heads, dtype, layout, order): every head dim of the issue once or twice, with the
# lengths, head counts, layouts and orders rotating through their values.
HEAD_DIM_CASES = [
    (8, 65, 2, BF16, "tokens", "legacy"),
    (16, 1000, 1, FP16, "contiguous", "new"),
    (24, 7, 4, BF16, "contiguous", "legacy"),
    (32, 1024, 8, FP16, "tokens", "new"),
    (40, 256, 16, BF16, "tokens", "new"),
    (48, 64, 2, FP16, "contiguous", "legacy"),
    (64, 4096, 4, BF16, "tokens", "legacy"),
    (80, 1, 1, FP16, "tokens", "new"),
    (96, 1000, 2, BF16, "contiguous", "new"),
    (128, 65, 8, FP16, "contiguous", "legacy"),
    (160, 256, 4, BF16, "tokens", "legacy"),
    (192, 1024, 1, FP16, "tokens", "new"),
    (256, 64, 2, BF16, "contiguous", "new"),
    (256, 1000, 1, FP16, "tokens", "legacy"),
    (128, 4096, 1, FP16, "contiguous", "new"),
    (64, 7, 16, FP16, "contiguous", "new"),
]


@pytest.mark.parametrize("ch,length,heads,dtype,layout,order", HEAD_DIM_CASES)
def test_head_dims(ch, length, heads, dtype, layout, order):
    assert on_tensor_cores(dtype, ch, length, 2 * heads)
    check(cuda_qkv(2, heads, ch, length, dtype, layout, seed=ch + length), heads, order)


@pytest.mark.parametrize("length", [1, 7, 64, 65, 256, 1000, 1024, 4096])
@pytest.mark.parametrize("layout", ["contiguous", "tokens"])
def test_lengths_at_adm_head_dim(length, layout):
    """ADM's head dim 64, 4 heads; bf16 and the other order on odd lengths, fp16 on even ones."""
    dtype, order = (BF16, "new") if length % 2 else (FP16, "legacy")
    check(cuda_qkv(2, 4, 64, length, dtype, layout, seed=length), 4, order)


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
def test_head_counts(heads):
    check(cuda_qkv(3, heads, 32, 200, BF16, "tokens", seed=heads), heads, "new")


@pytest.mark.parametrize("ch,length,heads,dtype", [
    (24, 65, 4, FP32), (64, 256, 2, FP32), (128, 7, 1, FP32), (256, 64, 2, FP32), (512, 33, 1, FP32),
    (8, 1000, 2, FP32), (60, 100, 2, BF16), (264, 40, 1, FP16), (3, 50, 2, FP16),
])
def test_simt_kernels(ch, length, heads, dtype):
    """float32 everywhere, and the fp16/bf16 head dims the tensor cores do not take."""
    assert not on_tensor_cores(dtype, ch, length, 2 * heads)
    for layout, order in (("contiguous", "legacy"), ("tokens", "new")):
        check(cuda_qkv(2, heads, ch, length, dtype, layout, seed=ch), heads, order)


def strided_views(dtype):
    """Views of larger tensors made on the device (moving or casting a non-dense view copies it)."""
    n, heads, ch, L = 2, 4, 64, 256
    c3 = 3 * heads * ch
    g = torch.Generator("cuda").manual_seed(5)

    def rand(*shape):
        return torch.randn(shape, generator=g, device="cuda").to(dtype)

    wide = rand(2 * n, c3, 2 * L)
    return {
        "channel slice (in place)": rand(n, c3 + 16, L)[:, 8:8 + c3, :],
        "tokens, padded rows (in place)": rand(n, L, c3 + 8)[:, :, :c3].transpose(1, 2),
        "every other batch (in place)": wide[::2, :, :L],
        "every other position (copied)": wide[:n, :, ::2],
        "misaligned tokens (copied)": rand(n, L, c3 + 1)[:, :, 1:].transpose(1, 2),
    }


@pytest.mark.parametrize("name", ["channel slice (in place)", "tokens, padded rows (in place)",
                                  "every other batch (in place)", "every other position (copied)",
                                  "misaligned tokens (copied)"])
@pytest.mark.parametrize("dtype", [BF16, FP32])
def test_strided_qkv(name, dtype):
    x = strided_views(dtype)[name]
    assert not dense(x)
    check(x, 4, "legacy")


@pytest.mark.parametrize("x_layout,grad_layout", [("tokens", "contiguous"), ("contiguous", "tokens")])
def test_grad_out_in_the_other_layout(x_layout, grad_layout):
    check(cuda_qkv(2, 4, 64, 256, BF16, x_layout), 4, "new", grad_layout=grad_layout)


@pytest.mark.parametrize("dtype,ch", [(BF16, 64), (FP16, 256), (FP32, 64)])
def test_backward_is_deterministic(dtype, ch):
    x = cuda_qkv(2, 4, ch, 1000, dtype, "tokens")
    out, lse = torch.ops.fastguide.attention(x, 4, False)
    g = torch.randn_like(out)
    grads = [torch.ops.fastguide.attention_backward(g, x, out, lse, 4, False) for _ in range(3)]
    assert all(torch.equal(grads[0], other) for other in grads[1:])


@pytest.mark.parametrize("dtype,ch,layout", [(BF16, 64, "tokens"), (FP16, 40, "contiguous"), (FP32, 64, "tokens")])
def test_every_output_element_is_written(dtype, ch, layout):
    """Outputs come from the caching allocator: fill blocks of their sizes with NaN and free them
    first, so that an element a kernel forgets keeps a NaN."""
    x = cuda_qkv(2, 4, ch, 200, dtype, layout)
    out0, lse0 = torch.ops.fastguide.attention(x, 4, True)
    for _ in range(2):
        junk = [torch.full_like(out0, float("nan")), torch.full_like(lse0, float("nan")),
                torch.full_like(x, float("nan"))]
        del junk
        out, lse = torch.ops.fastguide.attention(x, 4, True)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        junk = [torch.full_like(x, float("nan")), torch.full_like(lse0, float("nan"))]
        del junk
        grad = torch.ops.fastguide.attention_backward(torch.randn_like(out), x, out, lse, 4, True)
        assert torch.isfinite(grad).all()


def test_lse_matches_the_reference():
    x = cuda_qkv(2, 4, 64, 300, BF16, "tokens")
    _, lse = torch.ops.fastguide.attention(x, 4, False)
    q, k, _ = x.float().reshape(2, 4, 3, 64, 300).unbind(2)
    want = torch.logsumexp(torch.einsum("nhct,nhcs->nhts", q, k) / 8.0, -1)
    assert rel_err(lse, want) <= 1e-5


@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_large_logits_stay_finite(dtype):
    x = cuda_qkv(2, 8, 64, 1024, dtype, "tokens")
    x = (x.float() * 30).to(dtype)
    y = attention(x, 8, "new")
    assert torch.isfinite(y).all()
    assert rel_err(y, attention_reference(x, 8, "new")) <= tolerances(dtype)[0]


@pytest.mark.parametrize("dtype,layout", [(BF16, "tokens"), (FP16, "contiguous"), (FP32, "tokens")])
def test_autograd(dtype, layout):
    x = cuda_qkv(2, 4, 64, 130, dtype, layout)
    xf, xr = x.clone().requires_grad_(), x.float().requires_grad_()
    y, ref = attention(xf, 4, "new"), attention_reference(xr, 4, "new")
    g = torch.randn_like(ref)
    y.backward(g.to(dtype))
    ref.backward(g.to(dtype).float())
    assert xf.grad.stride() == x.stride()
    assert rel_err(y, ref) <= tolerances(dtype)[0] and rel_err(xf.grad, xr.grad) <= tolerances(dtype)[1]


def test_empty_inputs():
    for shape in ((0, 12, 5), (2, 12, 0)):
        x = torch.randn(shape, device="cuda", dtype=BF16, requires_grad=True)
        y = attention(x, 1)
        assert y.shape == (shape[0], 4, shape[2])
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_cuda_matches_cpu():
    x = make_qkv(2, 4, 64, 300, layout="tokens")
    assert rel_err(attention(x.cuda(), 4, "legacy").cpu(), attention(x, 4, "legacy")) <= 1e-5
    xb = x.to(BF16)
    assert rel_err(attention(xb.cuda(), 4, "legacy").cpu(), attention(xb, 4, "legacy")) <= tolerances(BF16)[0]


def test_plan_of_this_device():
    line = attention_cuda_plan(BF16, 64, 1024, 128)
    major = torch.cuda.get_device_capability()[0]
    assert line.startswith("tensor cores") == (major >= 8), line


def test_opcheck_cuda():
    x = cuda_qkv(2, 2, 64, 80, BF16, "tokens").requires_grad_()
    torch.library.opcheck(torch.ops.fastguide.attention.default, (x, 2, True))
    out, lse = torch.ops.fastguide.attention(x.detach(), 2, True)
    torch.library.opcheck(torch.ops.fastguide.attention_backward.default,
                          (torch.randn_like(out), x.detach(), out, lse, 2, True))
