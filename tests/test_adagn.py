"""Fused AdaGN (group_norm_act) against its pure-PyTorch reference, on the CPU kernel
(and on the CUDA kernel when a GPU is present: see test_adagn_cuda.py)."""
import pytest
import torch
import torch.nn.functional as F

from fastguide.nn import GroupNormAct
from fastguide.ops import group_norm_act, group_norm_act_reference

# One unit in the last place, relative, of each low-precision format: the fused op and the
# reference both compute in fp32 from the same rounded inputs, so they can differ only where
# the fp32 result straddles a rounding boundary of the output format.
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_inputs(shape, groups, dtype=torch.float32, layout="contiguous", params=True,
                param_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[0], shape[1]
    # A non-zero mean and a non-unit std so that the statistics matter.
    x = (torch.randn(shape, generator=g) * 1.7 + 0.6).to(dtype)
    if layout == "channels_last":
        x = to_channels_last(x)
    if not params:
        return x, None, None, None, None
    w = (1 + 0.3 * torch.randn(c, generator=g)).to(param_dtype)
    b = (0.2 * torch.randn(c, generator=g)).to(param_dtype)
    s = (0.5 * torch.randn(n, c, generator=g)).to(param_dtype)
    sh = (0.5 * torch.randn(n, c, generator=g)).to(param_dtype)
    return x, w, b, s, sh


def to_channels_last(x):
    """Channels-last storage for any rank: memory order [N, *spatial, C]."""
    perm = (0, *range(2, x.dim()), 1)
    inv = [0] * x.dim()
    for i, p in enumerate(perm):
        inv[p] = i
    return x.permute(perm).contiguous().permute(inv)


SHAPES = [((2, 64, 8, 8), 32), ((3, 48, 5, 7), 8), ((2, 32, 17), 32), ((1, 16, 3, 4, 5), 4),
          ((4, 8, 1, 1), 1), ((2, 512, 4, 4), 32)]


@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("params", [True, False])
@pytest.mark.parametrize("act", ["silu", None])
def test_forward_fp32_matches_reference(shape, groups, layout, params, act):
    x, w, b, s, sh = make_inputs(shape, groups, layout=layout, params=params)
    y = group_norm_act(x, groups, w, b, s, sh, act=act)
    ref = group_norm_act_reference(x, groups, w, b, s, sh, act=act)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.stride() == x.stride(), "output keeps the input's memory layout"
    assert rel_err(y, ref) <= 1e-5


def test_reference_matches_guided_diffusion_chain():
    """The oracle itself against the chain ADM runs: GroupNorm32, then (1+scale)*h+shift, SiLU."""
    x, w, b, s, sh = make_inputs((2, 64, 6, 6), 32)
    chain = F.silu(F.group_norm(x, 32, w, b, 1e-5) * (1 + s[..., None, None]) + sh[..., None, None])
    assert rel_err(group_norm_act_reference(x, 32, w, b, s, sh), chain) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
def test_forward_low_precision(dtype, layout, param_dtype):
    pd = dtype if param_dtype == "same" else param_dtype
    x, w, b, s, sh = make_inputs((3, 64, 9, 9), 32, dtype, layout, param_dtype=pd)
    y = group_norm_act(x, 32, w, b, s, sh)
    ref = group_norm_act_reference(x, 32, w, b, s, sh)
    assert y.dtype == dtype
    # At most one ulp of the output format (plus an fp32-sized floor near zero).
    tol = ULP[dtype] * ref.float().abs() + 1e-5 * ref.float().abs().max()
    assert ((y.float() - ref.float()).abs() <= tol).all()


def test_statistics_are_fp32_not_low_precision():
    """A large common offset: E[x^2]-E[x]^2 in bf16 would lose the variance entirely."""
    g = torch.Generator().manual_seed(3)
    x = (300.0 + 4.0 * torch.randn(2, 32, 16, 16, generator=g)).to(torch.bfloat16)
    y = group_norm_act(x, 8, act=None)
    ref = group_norm_act_reference(x, 8, act=None)
    assert y.float().std() > 0.5  # normalised output, not collapsed
    assert ((y.float() - ref.float()).abs() <= ULP[torch.bfloat16] * ref.float().abs() + 1e-3).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", ["silu", None])
@pytest.mark.parametrize("shape,groups", [((3, 64, 6, 5), 32), ((2, 24, 11), 4)])
def test_backward_matches_reference_autograd(layout, act, shape, groups):
    inputs = make_inputs(shape, groups, layout=layout)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    fused = [t.detach().clone().requires_grad_() for t in inputs]
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    group_norm_act(fused[0], groups, *fused[1:], act=act).backward(grad)
    group_norm_act_reference(ref[0], groups, *ref[1:], act=act).backward(grad)
    for name, a, r in zip(["x", "weight", "bias", "scale", "shift"], fused, ref):
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        assert rel_err(a.grad, r.grad) <= 1e-5, name
    assert fused[0].grad.stride() == fused[0].stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_low_precision_with_fp32_params(dtype):
    x, w, b, s, sh = make_inputs((2, 32, 8, 8), 8, dtype, "channels_last")
    grad = torch.randn(x.shape).to(dtype)
    fused = [t.detach().clone().requires_grad_() for t in (x, w, b, s, sh)]
    group_norm_act(fused[0], 8, *fused[1:]).backward(grad)
    # The oracle: fp32 reference autograd from the same rounded inputs.
    ref = [t.detach().float().requires_grad_() for t in (x, w, b, s, sh)]
    group_norm_act_reference(ref[0], 8, *ref[1:]).backward(grad.float())
    assert fused[0].grad.dtype == dtype and fused[1].grad.dtype == torch.float32
    # dx is rounded once to the low-precision format; parameter grads stay fp32.
    assert rel_err(fused[0].grad, ref[0].grad) <= 2 * ULP[dtype]
    for a, r in zip(fused[1:], ref[1:]):
        assert rel_err(a.grad, r.grad) <= 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", ["silu", None])
def test_gradcheck_fp64(layout, act):
    inputs = make_inputs((2, 6, 3, 2), 3, torch.float64, layout, param_dtype=torch.float64)
    inputs = [t.requires_grad_() for t in inputs]

    def fn(x, w, b, s, sh):
        return group_norm_act(x, 3, w, b, s, sh, act=act)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_fp64_without_params():
    x = make_inputs((2, 4, 5), 2, torch.float64, params=False)[0].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: group_norm_act(t, 2), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("params", [True, False])
def test_opcheck(layout, params):
    x, w, b, s, sh = make_inputs((2, 16, 4, 3), 4, layout=layout, params=params)
    args = [t.requires_grad_() if t is not None else None for t in (x, w, b, s, sh)]
    torch.library.opcheck(torch.ops.fastguide.group_norm_act.default,
                          (args[0], 4, *args[1:], True, 1e-5))
    y, mean, rstd = torch.ops.fastguide.group_norm_act(x.detach(), 4, w, b, s, sh, True, 1e-5)
    torch.library.opcheck(torch.ops.fastguide.group_norm_act_backward.default,
                          (torch.randn_like(y), x.detach(), mean, rstd, 4,
                           *[t.detach() if t is not None else None for t in (w, b, s, sh)], True))


def test_torch_compile_fullgraph_forward_and_backward():
    x, w, b, s, sh = make_inputs((2, 32, 6, 6), 8, layout="channels_last")

    def block(x, w, b, s, sh):
        return group_norm_act(x * 2.0, 8, w, b, s, sh) + 1.0

    compiled = torch.compile(block, fullgraph=True)
    xs = [t.detach().clone().requires_grad_() for t in (x, w, b, s, sh)]
    xe = [t.detach().clone().requires_grad_() for t in (x, w, b, s, sh)]
    yc, ye = compiled(*xs), block(*xe)
    assert rel_err(yc, ye) <= 1e-6
    yc.square().sum().backward()
    ye.square().sum().backward()
    for a, r in zip(xs, xe):
        assert rel_err(a.grad, r.grad) <= 1e-5


def test_fake_tensor_shapes_on_meta():
    x = torch.empty(2, 64, 8, 8, device="meta").to(memory_format=torch.channels_last)
    y = group_norm_act(x, 32, scale=torch.empty(2, 64, device="meta"))
    assert y.shape == x.shape and y.device.type == "meta" and y.stride() == x.stride()


def test_non_dense_input_is_handled():
    x = torch.randn(2, 32, 8, 16)[..., ::2]  # a strided view, neither contiguous nor channels-last
    assert rel_err(group_norm_act(x, 8), group_norm_act_reference(x, 8)) <= 1e-5


def test_nan_passes_through_as_nan():
    x = torch.randn(2, 16, 4, 4)
    x[1, 5, 2, 2] = float("nan")  # channel 5 is in group 1 of 4 (4 channels a group)
    x.requires_grad_()
    y = group_norm_act(x, 4)
    assert torch.isnan(y[1, 4:8]).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[1, :4]).all() and torch.isfinite(y[1, 8:]).all()
    y.sum().backward()  # no crash; the NaN group's gradient is NaN, others finite
    assert torch.isfinite(x.grad[0]).all() and torch.isnan(x.grad[1, 4:8]).all()


def test_empty_batch():
    x = torch.randn(0, 16, 4, 4, requires_grad=True)
    s = torch.randn(0, 16)
    y = group_norm_act(x, 4, scale=s)
    assert y.shape == (0, 16, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_layer_fused_and_reference_agree_and_keep_groupnorm_keys():
    layer = GroupNormAct(64, 32)
    with torch.no_grad():
        layer.weight.normal_(1, 0.2)
        layer.bias.normal_(0, 0.2)
    assert set(layer.state_dict()) == set(torch.nn.GroupNorm(32, 64).state_dict())
    x = torch.randn(2, 64, 5, 5)
    s, sh = torch.randn(2, 64), torch.randn(2, 64)
    ref_layer = GroupNormAct(64, 32, backend="reference")
    ref_layer.load_state_dict(layer.state_dict())
    assert rel_err(layer(x, s, sh), ref_layer(x, s, sh)) <= 1e-5
    with pytest.raises(ValueError, match="backend"):
        GroupNormAct(64, 32, backend="triton")
