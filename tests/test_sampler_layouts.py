"""Sampler steps in any dense layout: x is read in place and the outputs take x's strides, the
other tensors are read through their own strides. Every result against the pure-PyTorch
references (themselves checked against guided-diffusion in test_sampler_ops.py), on the CPU
kernels and, with a GPU, on the CUDA kernels (16-byte packs and single elements, 32-bit maths)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from conftest import HAS_CUDA
from fastguide.ops import sampler as S
from test_adagn import ULP, rel_err, to_channels_last
from test_sampler_ops import tables

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])]


def permuted(t):
    """A dense layout that is neither contiguous nor channels-last: memory order [H, W, N, C]."""
    return t.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


LAYOUTS = {"contiguous": lambda t: t.contiguous(), "channels_last": to_channels_last, "permuted": permuted}


def make(b=3, c=4, hw=(6, 8), cfg=True, learned=True, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *hw, generator=g)
    mo = torch.randn(2 * b if cfg else b, 2 * c if learned else c, *hw, generator=g)
    if learned:
        mo[:, c:] = mo[:, c:].tanh()
    noise, grad = torch.randn(x.shape, generator=g), 0.3 * torch.randn(x.shape, generator=g)
    t = torch.tensor([0, 4, 9, 2, 7][:b])
    return [v.to(device, dtype) for v in (x, mo, noise, grad)] + [t]


def tol(dtype):
    return 1e-5 if dtype == torch.float32 else 2 * ULP[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_layout", list(LAYOUTS))
@pytest.mark.parametrize("other_layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ddpm_ddim_any_layout(device, x_layout, other_layout, dtype):
    ddpm, ddim = (t.to(device) for t in tables())
    x, mo, noise, grad, t = make(dtype=dtype, device=device)
    x = LAYOUTS[x_layout](x)
    mo, noise, grad = (LAYOUTS[other_layout](v) for v in (mo, noise, grad))
    for fused, ref, table, kw in ((S.ddpm_step, S.ddpm_step_reference, ddpm, {"learned_range": True}),
                                  (S.ddim_step, S.ddim_step_reference, ddim, {})):
        got = fused(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
        want = ref(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
        for a, r in zip(got, want):
            assert a.stride() == x.stride(), "outputs keep x's layout"
            assert rel_err(a, r) <= tol(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("learned", [True, False])
def test_parameterisations_and_clipping(device, prediction, clip, learned):
    ddpm, ddim = (t.to(device) for t in tables())
    x, mo, noise, grad, t = make(cfg=False, learned=learned, device=device, seed=1)
    x, mo = to_channels_last(x), to_channels_last(3 * mo)  # large outputs: clipping matters
    kw = dict(prediction=prediction, clip=clip)
    for a, r in zip(S.ddpm_step(x, mo, ddpm[t], noise, grad, learned_range=learned, **kw),
                    S.ddpm_step_reference(x, mo, ddpm[t], noise, grad, learned_range=learned, **kw)):
        assert rel_err(a, r) <= 1e-5 and a.stride() == x.stride()
    for a, r in zip(S.ddim_step(x, mo, ddim[t], noise, grad, **kw),
                    S.ddim_step_reference(x, mo, ddim[t], noise, grad, **kw)):
        assert rel_err(a, r) <= 1e-5
    x0 = S.ddpm_step(x, mo, ddpm[t], noise, learned_range=learned, **kw)[1]
    assert (x0.abs().max() <= 1) == clip or prediction == "x0" and not clip and x0.abs().max() <= 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_euler_heun_any_layout(device, x_layout, dtype):
    g = torch.Generator().manual_seed(2)
    x, d, x2, d2 = (torch.randn(3, 5, 4, 8, generator=g).to(device, dtype) for _ in range(4))
    x = LAYOUTS[x_layout](x)
    d2 = to_channels_last(d2)  # operands in their own layouts
    s, sn = torch.tensor([3.0, 2.0, 1.0], device=device), torch.tensor(0.5)
    e = S.euler_step(x, d, s, sn)
    h = S.heun_step(x, d, x2, d2, s, sn)
    assert e.stride() == x.stride() and h.stride() == x.stride()
    assert rel_err(e, S.euler_step_reference(x, d, s, sn)) <= tol(dtype)
    assert rel_err(h, S.heun_step_reference(x, d, x2, d2, s, sn)) <= tol(dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_3d_and_single_sample(device):
    ddpm, _ = (t.to(device) for t in tables())
    x, mo, noise, grad, t = make(b=1, hw=(3, 4, 5), device=device)
    x, mo = (v.to(memory_format=torch.channels_last_3d) for v in (x, mo))
    got = S.ddpm_step(x, mo, ddpm[t], noise, grad, cfg_scale=0.5)
    want = S.ddpm_step_reference(x, mo, ddpm[t], noise, grad, cfg_scale=0.5)
    assert got[0].stride() == x.stride() and rel_err(got[0], want[0]) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_non_dense_x_is_copied_to_contiguous(device):
    ddpm, _ = (t.to(device) for t in tables())
    x, mo, noise, grad, t = make(hw=(6, 16), device=device)
    xs, mos = x[..., ::2], mo[..., ::2]  # strided views: not dense
    sample, x0 = S.ddpm_step(xs, mos, ddpm[t], noise[..., ::2])
    want = S.ddpm_step_reference(xs, mos, ddpm[t], noise[..., ::2])
    assert sample.is_contiguous() and rel_err(sample, want[0]) <= 1e-5
    d = S.euler_step(xs, mos[:3, :4], torch.ones(3, device=device), 0.5)
    assert d.is_contiguous()


def test_channels_last_steps_make_no_copies():
    """The review found 2-4 full copies per channels-last step; now there are none."""
    ddpm, _ = tables()
    x, mo, noise, grad, t = make(hw=(16, 16))
    x, mo, noise, grad = map(to_channels_last, (x, mo, noise, grad))
    k, s, d = ddpm[t].contiguous(), torch.ones(3), mo[:3, :4]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ops.fastguide.ddpm_step(x, mo, k, grad, noise, 1.0, 0, True, True)
        torch.ops.fastguide.heun_step(x, d, x, noise, s, s)
    copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
    assert copies == []


@pytest.mark.parametrize("layout", ["channels_last", "permuted"])
def test_opcheck_layouts(layout):
    """The fake kernels give the strides the kernels give."""
    ddpm, ddim = tables()
    x, mo, noise, grad, t = make()
    x, noise = LAYOUTS[layout](x), LAYOUTS[layout](noise)
    s = torch.tensor([1.0, 0.5, 0.2])
    torch.library.opcheck(torch.ops.fastguide.ddpm_step.default, (x, mo, ddpm[t], grad, noise, 1.0, 0, True, True))
    torch.library.opcheck(torch.ops.fastguide.ddim_step.default, (x, mo, ddim[t], None, noise, 1.0, 1, False))
    torch.library.opcheck(torch.ops.fastguide.euler_step.default, (x, noise, s, s / 2))
    torch.library.opcheck(torch.ops.fastguide.heun_step.default, (x, noise, grad, x, s, s / 2))
