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
