"""The diffusers-style scheduler adapter gives the same samples as the ADM-style loops and the
functional σ-space samplers it mirrors."""
import pytest
import torch

from fastguide.diffusion import (ADMDenoiser, GaussianDiffusion, ModelVarType,
                                 create_gaussian_diffusion, named_betas)
from fastguide.sampling import (DiffusionScheduler, ddim_sample_loop, p_sample_loop,
                                sample_dpmpp_2m)

MU, S = 0.3, 0.5


class GaussianEps(torch.nn.Module):
    """Exact ε-prediction for data N(μ, s²) under a 1000-step schedule (original timesteps),
    with zero learned-variance channels."""

    def __init__(self, schedule):
        super().__init__()
        self.alphas_cumprod = torch.cumprod(1 - named_betas(schedule, 1000), 0)

    def forward(self, x, t, **unused):
        ab = self.alphas_cumprod[torch.as_tensor(t).long()].to(x.dtype)
        ab = ab.reshape(-1, *([1] * (x.dim() - 1))).expand(x.shape[0], *([1] * (x.dim() - 1)))
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S ** 2 + 1 - ab)
        return torch.cat([eps, 0.3 * torch.tanh(x)], 1)


def _run_scheduler(scheduler, model, x, noises=None):
    for k, t in enumerate(scheduler.timesteps):
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, noise=None if noises is None else noises[k]).prev_sample
    return x


@pytest.fixture
def setup():
    full = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine")
    model = GaussianEps("cosine")
    x_T = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    return full, model, x_T


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_ddim_sample_loop(setup, eta):
    full, model, x_T = setup
    scheduler = DiffusionScheduler(full, sampler="ddim", eta=eta)
    scheduler.set_timesteps(25)
    spaced = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine",
                                       timestep_respacing="25")
    assert scheduler.timesteps.tolist() == spaced.timestep_map.flip(0).tolist()
    noises = torch.randn(25, *x_T.shape, generator=torch.Generator().manual_seed(1))
    it = iter(noises)
    expected = ddim_sample_loop(spaced, model, x_T.shape, noise=x_T, eta=eta,
                                randn_like=lambda x: next(it))
    torch.testing.assert_close(_run_scheduler(scheduler, model, x_T, noises), expected)


def test_ddpm_matches_p_sample_loop(setup):
    full, model, x_T = setup
    scheduler = DiffusionScheduler(full, sampler="ddpm")
    scheduler.set_timesteps(timestep_respacing="10,5")
    spaced = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine",
                                       timestep_respacing="10,5")
    noises = torch.randn(15, *x_T.shape, generator=torch.Generator().manual_seed(2))
    it = iter(noises)
    expected = p_sample_loop(spaced, model, x_T.shape, noise=x_T, randn_like=lambda x: next(it))
    torch.testing.assert_close(_run_scheduler(scheduler, model, x_T, noises), expected)


def test_dpmpp_2m_matches_the_functional_sampler(setup):
    _, model, x_T = setup
    full = GaussianDiffusion.from_schedule("cosine", 1000,
                                           model_var_type=ModelVarType.LEARNED_RANGE)
    scheduler = DiffusionScheduler(full, sampler="dpmpp_2m", clip_sample=False)
    scheduler.set_timesteps(20)
    spaced = GaussianDiffusion.from_schedule("cosine", 1000, "20",
                                             model_var_type=ModelVarType.LEARNED_RANGE)
    sigmas = torch.cat([spaced.sigmas.flip(0), torch.zeros(1, dtype=torch.float64)])
    x = x_T / spaced.sqrt_alphas_cumprod[-1].float()
    expected = sample_dpmpp_2m(ADMDenoiser(model, spaced), x, sigmas, disable=True)
    # fp32 throughout, and the first step works at x/√ᾱ ~ 100: agreement to ~1e-4 relative.
    torch.testing.assert_close(_run_scheduler(scheduler, model, x_T), expected,
                               rtol=1e-3, atol=1e-3)


def test_step_outputs_and_generator(setup):
    full, model, x_T = setup
    scheduler = DiffusionScheduler(full, sampler="ddpm")
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[0]
    out = scheduler.step(model(x_T, t), t, x_T, generator=torch.Generator().manual_seed(0))
    again = scheduler.step(model(x_T, t), t, x_T, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.prev_sample, again.prev_sample)
    assert out.pred_original_sample.abs().max() <= 1  # clip_sample
    prev, x0 = scheduler.step(model(x_T, t), int(t), x_T, return_dict=False,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(prev, out.prev_sample) and torch.equal(x0, out.pred_original_sample)
    noisy = scheduler.add_noise(x_T, torch.ones_like(x_T), torch.tensor([999, 0, 500, 10]))
    torch.testing.assert_close(noisy, full.q_sample(x_T, torch.tensor([999, 0, 500, 10]),
                                                    torch.ones_like(x_T)))


def test_scheduler_errors(setup):
    full, _, _ = setup
    with pytest.raises(ValueError, match="unknown sampler"):
        DiffusionScheduler(full, sampler="lms")
    with pytest.raises(ValueError, match="not respaced"):
        DiffusionScheduler(create_gaussian_diffusion(timestep_respacing="25"))
    with pytest.raises(ValueError, match="respacing"):
        DiffusionScheduler(full).set_timesteps(5000)
