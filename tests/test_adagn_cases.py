"""group_norm_act on the cases a review found untested, against the float32 reference with
autograd, on the CPU kernel and (when a GPU is present) the CUDA kernels: fp16 backward,
act=None, parameters in x's dtype, channels-last storage at a misaligned address, one sample
with many groups, one group, and scale/shift as strided views of one projection."""
import pytest
import torch

from conftest import HAS_CUDA
from fastguide.ops import group_norm_act, group_norm_act_reference
from test_adagn import ULP, rel_err, to_channels_last

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])]


# Without a GPU there is no multi-pass case to make (the CPU kernel has one path).
@pytest.fixture(autouse=True, params=["auto", "multipass"] if HAS_CUDA else ["auto"])
def cuda_path(request):
    """On CUDA every case runs on both paths: the single pass where it applies, and the
    multi-pass kernels (the switch is CUDA's; CPU cases run once)."""
    device = request.node.callspec.params.get("device", "cpu")
    if request.param == "multipass" and device == "cpu":
        pytest.skip("the multi-pass switch is CUDA's: the CPU kernel has one path")
    if device == "cpu":
        yield
        return
    previous = torch.ops.fastguide._adagn_set_path(0 if request.param == "auto" else 1)
    yield
    torch.ops.fastguide._adagn_set_path(previous)


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def run_both(x, groups, w, b, s, sh, act="silu", grad=None, seed=0):
    """Fused op and fp32 reference autograd from the same rounded inputs: outputs and grads."""
    grad = grad if grad is not None else torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)
    fused = leaves(x, w, b, s, sh)
    y = group_norm_act(fused[0], groups, *fused[1:], act=act)
    y.backward(grad)
    ref = [None if t is None else t.detach().float().requires_grad_() for t in (x, w, b, s, sh)]
    r = group_norm_act_reference(ref[0], groups, *ref[1:], act=act)
    r.backward(grad.float())
    return y, r, fused, ref


def assert_close(y, r, fused, ref, dtype):
    if dtype == torch.float32:
        assert rel_err(y, r) <= 1e-5
        assert rel_err(fused[0].grad, ref[0].grad) <= 1e-4
    else:
        tol = ULP[dtype] * r.float().abs() + 1e-5 * r.float().abs().max()
        assert ((y.float() - r.float()).abs() <= tol).all()
        assert rel_err(fused[0].grad, ref[0].grad) <= 4 * ULP[dtype]
    for a, b in zip(fused[1:], ref[1:]):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype
            # Parameter gradients are sums over N*S terms, accumulated in fp32, rounded once.
            assert rel_err(a.grad, b.grad) <= (1e-4 if a.dtype == torch.float32 else 2 * ULP[a.dtype])


def inputs(shape, dtype, device, param_dtype=torch.float32, layout="channels_last", seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=g) * 1.5 + 0.4).to(dtype)
    if layout == "channels_last":
        x = to_channels_last(x)
    params = [1 + 0.3 * torch.randn(c, generator=g), 0.2 * torch.randn(c, generator=g),
              0.4 * torch.randn(n, c, generator=g), 0.4 * torch.randn(n, c, generator=g)]
    return [x.to(device)] + [p.to(device, param_dtype) for p in params]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("act", ["silu", None])
def test_fp16_backward(device, layout, act):
    x, w, b, s, sh = inputs((2, 64, 9, 9), torch.float16, device, layout=layout)
    y, r, fused, ref = run_both(x, 32, w, b, s, sh, act)
    assert y.dtype == torch.float16 and fused[0].grad.stride() == x.stride()
    assert_close(y, r, fused, ref, torch.float16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_act_none_is_the_affine_norm(device, dtype):
    """act=None returns z itself: compared with the reference and, at fp32, with F.group_norm."""
    x, w, b, s, sh = inputs((3, 32, 6, 5), dtype, device)
    y, r, fused, ref = run_both(x, 8, w, b, s, sh, act=None)
    assert_close(y, r, fused, ref, dtype)
    if dtype == torch.float32:
        plain = torch.nn.functional.group_norm(x, 8, w, b)
        shape = (3, 32, 1, 1)
        assert rel_err(y, plain * (1 + s.view(shape)) + sh.view(shape)) <= 1e-5
        assert y.min() < 0  # no activation was applied


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_parameters_in_x_dtype(device, dtype):
    x, w, b, s, sh = inputs((2, 64, 8, 8), dtype, device, param_dtype=dtype)
    y, r, fused, ref = run_both(x, 32, w, b, s, sh)
    assert_close(y, r, fused, ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_storage_at_a_misaligned_address(device, dtype):
    """Channels-last x whose data starts one element past a 16-byte boundary."""
    n, c, h, w_ = 2, 64, 7, 6
    base = torch.randn(n * h * w_ * c + 1).to(device, dtype)
    x = base[1:].view(n, h, w_, c).permute(0, 3, 1, 2)
    assert x.data_ptr() % 16 != 0 and not x.is_contiguous()
    _, w, b, s, sh = inputs((n, c, h, w_), dtype, device)
    y, r, fused, ref = run_both(x, 32, w, b, s, sh)
    assert y.stride() == x.stride()
    assert_close(y, r, fused, ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_one_sample_many_groups(device, layout):
    """N = 1, the sampling case: every group's statistics come from many splits on CUDA."""
    x, w, b, s, sh = inputs((1, 256, 48, 48), torch.float32, device, layout=layout)
    y, r, fused, ref = run_both(x, 32, w, b, s, sh)
    assert_close(y, r, fused, ref, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_group(device, layout, dtype):
    x, w, b, s, sh = inputs((2, 48, 10, 10), dtype, device, layout=layout)
    y, r, fused, ref = run_both(x, 1, w, b, s, sh)
    assert_close(y, r, fused, ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_shift_as_strided_views(device, dtype):
    """scale, shift = emb.chunk(2, dim=1), as ADM's ResBlock passes them: read in place, and the
    gradient reaches emb through both views."""
    n, c = 3, 64
    x = inputs((n, c, 6, 6), dtype, device)[0]
    emb = (0.3 * torch.randn(n, 2 * c, generator=torch.Generator().manual_seed(4))).to(device)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    e1, x1 = emb.clone().requires_grad_(), x.clone().requires_grad_()
    scale, shift = e1.chunk(2, dim=1)
    assert scale.stride() == (2 * c, 1) and not scale.is_contiguous()
    y = group_norm_act(x1, 32, None, None, scale, shift)
    y.backward(grad)
    e2, x2 = emb.clone().requires_grad_(), x.float().requires_grad_()
    r = group_norm_act_reference(x2, 32, None, None, *e2.chunk(2, dim=1))
    r.backward(grad.float())
    tol = 1e-5 if dtype == torch.float32 else 2 * ULP[dtype]
    assert rel_err(y, r) <= tol and rel_err(x1.grad, x2.grad) <= 4 * tol
    assert rel_err(e1.grad, e2.grad) <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_scale_as_a_transposed_view(device):
    x, w, b, s, sh = inputs((4, 32, 5, 5), torch.float32, device)
    st = s.t().contiguous().t()  # [N, C] with strides (1, N)
    assert st.stride() == (1, 4)
    y, r, fused, ref = run_both(x, 8, w, b, st, sh)
    assert_close(y, r, fused, ref, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_same_inputs_same_bits(device):
    """No atomics, no run-time choices: two calls agree to the bit, forward and backward."""
    x, w, b, s, sh = inputs((2, 128, 16, 16), torch.bfloat16, device)
    out = []
    for _ in range(2):
        y, _, fused, _ = run_both(x, 32, w, b, s, sh)
        out.append([y] + [t.grad for t in fused])
    for a, b_ in zip(*out):
        assert torch.equal(a, b_)
