"""A hypothesis fuzz of group_norm_act against the reference over shapes, groups, layouts and
dtypes: N in [1, 8], G in {1, 8, 32}, C a multiple of G up to 512, H, W in [1, 64]."""
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastguide.ops import group_norm_act, group_norm_act_reference
from test_adagn import ULP, make_inputs, rel_err

BUDGET = 1 << 17  # elements per example, so that 200 examples run in seconds on 2 cores


@st.composite
def cases(draw):
    n = draw(st.integers(1, 8))
    g = draw(st.sampled_from([1, 8, 32]))
    h, w = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    k_max = max(1, min(512 // g, BUDGET // (n * g * h * w)))
    c = g * draw(st.integers(1, k_max))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    layout = draw(st.sampled_from(["contiguous", "channels_last"]))
    params = draw(st.booleans())
    act = draw(st.sampled_from(["silu", None]))
    return (n, c, h, w), g, dtype, layout, params, act, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fuzz_forward_and_backward(case):
    shape, g, dtype, layout, params, act, seed = case
    x, w, b, s, sh = make_inputs(shape, g, dtype, layout, params=params, seed=seed)
    y = group_norm_act(x, g, w, b, s, sh, act=act)
    ref = group_norm_act_reference(x, g, w, b, s, sh, act=act)
    assert y.dtype == dtype and y.stride() == x.stride()
    if dtype == torch.float32:
        # A group of one element normalises to exactly 0 (x - mean), so absolute error there.
        assert rel_err(y, ref) <= 1e-5 or (y - ref).abs().max() <= 1e-6
    else:
        tol = ULP[dtype] * ref.float().abs() + 1e-5 * ref.float().abs().max() + 1e-6
        assert ((y.float() - ref.float()).abs() <= tol).all()
    # dx against fp32 reference autograd from the same rounded inputs.
    xf = x.detach().requires_grad_()
    xr = x.detach().float().requires_grad_()
    # grad_y independent of x (a grad_y proportional to xhat would be projected to ~0).
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    group_norm_act(xf, g, w, b, s, sh, act=act).backward(grad)
    up = [None if t is None else t.float() for t in (w, b, s, sh)]
    group_norm_act_reference(xr, g, *up, act=act).backward(grad.float())
    # dx's natural scale is |grad_y| * rstd * |weight * (1 + scale)|; for degenerate groups
    # (one element, or constant) dx itself is ~0 while the terms that cancel are that large.
    xg = x.float().reshape(shape[0], g, -1)
    rstd = (xg.var(dim=2, unbiased=False) + 1e-5).rsqrt().max().item()
    factor = 1.0 if not params else (w.abs().max() * (1 + s).abs().max()).item()
    scale = max(xr.grad.abs().max().item(), grad.float().abs().max().item() * rstd * factor * 1e-2)
    limit = (1e-4 if dtype == torch.float32 else 4 * ULP[dtype]) * scale + 1e-6
    assert (xf.grad.float() - xr.grad).abs().max().item() <= limit
