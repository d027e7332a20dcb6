"""The CUDA sampler-step kernels against the CPU kernels (themselves checked against
guided-diffusion in test_sampler_ops.py). Skipped without a GPU."""
import pytest
import torch

from conftest import HAS_CUDA
from fastguide.ops import sampler as S
from test_adagn import rel_err
from test_sampler_ops import inputs, tables

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddpm_and_ddim_steps_cuda_match_cpu(layout, cfg, dtype):
    ddpm, ddim = tables()
    x, mo, noise, grad, t = inputs(cfg=cfg, learned=True, layout=layout, dtype=dtype)
    for fn, table, kw in ((S.ddpm_step, ddpm, {"learned_range": True}), (S.ddim_step, ddim, {})):
        cpu = fn(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
        gpu = fn(x.cuda(), mo.cuda(), table[t].cuda(), noise.cuda(), grad.cuda(), cfg_scale=1.5, **kw)
        for a, b in zip(gpu, cpu):
            assert a.stride() == b.stride()
            assert rel_err(a.cpu(), b) <= (1e-6 if dtype == torch.float32 else 2 * 2.0**-7)


def test_euler_heun_cuda_match_cpu():
    g = torch.Generator().manual_seed(0)
    x, d, x2, d2 = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(4))
    s, sn = torch.tensor([3.0, 2.0, 1.0]), torch.tensor(0.5)
    assert rel_err(S.euler_step(x.cuda(), d.cuda(), s.cuda(), sn.cuda()).cpu(), S.euler_step(x, d, s, sn)) <= 1e-6
    assert rel_err(S.heun_step(*(t.cuda() for t in (x, d, x2, d2)), s.cuda(), sn.cuda()).cpu(),
                   S.heun_step(x, d, x2, d2, s, sn)) <= 1e-6


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_steps_cuda_match_cpu_low_precision(layout, dtype):
    """Packed (16-byte) kernels against the CPU kernels, channels-last in and out."""
    ddpm, ddim = tables()
    x, mo, noise, grad, t = inputs(b=3, c=8, hw=(6, 8), cfg=True, learned=True, layout=layout, dtype=dtype)
    for fn, table, kw in ((S.ddpm_step, ddpm, {"learned_range": True}), (S.ddim_step, ddim, {})):
        cpu = fn(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
        gpu = fn(x.cuda(), mo.cuda(), table[t].cuda(), noise.cuda(), grad.cuda(), cfg_scale=1.5, **kw)
        for a, b in zip(gpu, cpu):
            assert a.stride() == x.stride()
            assert ((a.cpu().float() - b.float()).abs() <= 2.0**-7 * b.float().abs() + 1e-3).all()


@pytest.mark.parametrize("extra", [24, 32])  # rows of 2^30 + 12 (single elements), 2^30 + 16 (packs)
def test_euler_past_two_billion_elements_uses_64_bit_offsets(extra):
    """More than 2^31 elements: the 64-bit index kernels (their division is a double estimate and
    one correction step, also used by the CPU kernels)."""
    n = 2**31 + extra
    if torch.cuda.mem_get_info()[0] < 4 * 2 * n + (1 << 30):
        pytest.skip("needs ~17 GB of free GPU memory")
    x = torch.ones(2, n // 2, dtype=torch.float16, device="cuda")
    d = torch.zeros_like(x)
    x[1, -8:] = 2.0
    y = S.euler_step(x, d, torch.tensor([2.0, 4.0], device="cuda"), torch.tensor([1.0, 1.0], device="cuda"))
    # x + (sn - s) * (x - 0) / s = x * sn / s: 0.5 for sample 0, 0.25 (0.5 at the end) for sample 1
    assert y[0, :8].eq(0.5).all() and y[0, -8:].eq(0.5).all() and y[1, :8].eq(0.25).all()
    assert y[1, -8:].eq(0.5).all()
