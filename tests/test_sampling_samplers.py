"""The samplers on problems with known answers.

Gaussian data y ~ N(μ, s²) has the exact denoiser D(x, σ) = μ + s²/(s² + σ²)·(x − μ) and the
exact probability-flow ODE solution x(σ) − μ ∝ √(s² + σ²), so sample statistics and the ODE
solvers' orders of convergence can be checked exactly. Also: σ-space DDIM/DDPM equal the discrete
ones, per-image seeds, no host syncs inside the loops, and the errors bad input must raise.
"""
import inspect
import math

import pytest
import torch

from fastguide.diffusion import (ADMDenoiser, GaussianDiffusion, LogSNRProcess, ModelVarType,
                                 create_gaussian_diffusion, edm_sigmas, named_betas)
from fastguide.sampling import (SAMPLERS, StackedRandomGenerator, ddim_sample_loop,
                                p_sample_loop, rank_batches, sample_ddim, sample_ddpm,
                                sample_dpmpp_2m, sample_euler, sample_heun,
                                sample_log_snr_ancestral)

MU, S = 0.3, 0.5


def gaussian_denoiser(x, sigma, **unused):
    c = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + S ** 2 / (S ** 2 + c ** 2) * (x - MU)


def exact_ode_solution(x_start, sigma_start):
    return MU + (x_start - MU) * S / math.sqrt(S ** 2 + sigma_start ** 2)


class GaussianEps(torch.nn.Module):
    """The exact ε-prediction E[ε | x_t] for the same data under a 1000-step process; it gets
    original timesteps, like an ADM network. learned=True appends zero "variance" channels."""

    def __init__(self, schedule="linear", learned=False):
        super().__init__()
        self.alphas_cumprod = torch.cumprod(1 - named_betas(schedule, 1000), 0)
        self.learned = learned

    def forward(self, x, t, **unused):
        ab = self.alphas_cumprod[t.long()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S ** 2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learned else eps


def seeded_randn_like(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


def noise(num, dim=8, first_seed=0):
    return StackedRandomGenerator(range(first_seed, first_seed + num)).randn((num, dim),
                                                                              dtype=torch.float64)


def test_heun_matches_data_statistics():
    sigmas = edm_sigmas(64)
    z = noise(4000)
    x = sample_heun(gaussian_denoiser, z * sigmas[0], sigmas, disable=True)
    n = x.numel()
    assert abs(float(x.mean()) - MU) < 4 * S / math.sqrt(n)
    assert abs(float(x.std()) - S) < 4 * S / math.sqrt(2 * n)


def _ode_errors(sampler, steps):
    z = noise(256, 4)
    errors = []
    for n in steps:
        sigmas = edm_sigmas(n)
        x = sampler(gaussian_denoiser, z * sigmas[0], sigmas, disable=True)
        errors.append(float((x - exact_ode_solution(z * sigmas[0], float(sigmas[0]))).abs().max()))
    return errors


def test_heun_is_second_order_and_euler_first():
    heun = _ode_errors(sample_heun, [32, 64])
    euler = _ode_errors(sample_euler, [32, 64])
    dpm = _ode_errors(sample_dpmpp_2m, [32, 64])
    assert 3.3 < heun[0] / heun[1] < 5.0, heun    # about 4x when the steps double
    assert 1.7 < euler[0] / euler[1] < 2.3, euler  # about 2x
    assert 3.0 < dpm[0] / dpm[1] < 6.0, dpm       # DPM-Solver++(2M) is second order too


@pytest.mark.parametrize("name,kwargs", [
    ("ddpm", {}), ("ddim", {"eta": 0.5}), ("heun", {"S_churn": 40, "S_min": 0.05, "S_max": 50}),
    ("log_snr_ancestral", {"v": 0.3}), ("euler", {}), ("dpmpp_2m", {}),
])
def test_stochastic_and_other_samplers_converge(name, kwargs):
    sigmas = edm_sigmas(256)
    z = noise(1000)
    if name not in ("dpmpp_2m",):
        kwargs = {**kwargs, "randn_like": seeded_randn_like(1)}
    x = SAMPLERS[name](gaussian_denoiser, z * sigmas[0], sigmas, disable=True, **kwargs)
    assert abs(float(x.mean()) - MU) < 0.01
    assert abs(float(x.std()) - S) < 0.02


def test_log_snr_sampler_on_its_own_schedule():
    process = LogSNRProcess(-20.0, 20.0)
    lam = process.sampling_log_snrs(128)
    assert float(lam[0]) == pytest.approx(-20.0) and float(lam[-1]) == pytest.approx(20.0)
    assert bool((lam[1:] > lam[:-1]).all())
    sigmas = process.sampling_sigmas(128)
    z = noise(1000)
    x = sample_log_snr_ancestral(gaussian_denoiser, z * sigmas[0], sigmas, v=0.3,
                                 randn_like=seeded_randn_like(2), disable=True)
    assert abs(float(x.mean()) - MU) < 0.01 and abs(float(x.std()) - S) < 0.02
    # Training distribution: λ within bounds, and z_λ has unit variance for unit-variance data.
    lams = process.sample_log_snr(10000, generator=torch.Generator().manual_seed(0))
    assert float(lams.min()) >= -20.0 and float(lams.max()) <= 20.0
    data = torch.randn(10000, 16, generator=torch.Generator().manual_seed(1))
    assert float(process.q_sample(data, lams).var()) == pytest.approx(1.0, rel=0.03)


def _discrete_setup(schedule="cosine", respacing="25", var_type=ModelVarType.FIXED_SMALL):
    d = GaussianDiffusion.from_schedule(schedule, 1000, respacing, model_var_type=var_type)
    sigmas = torch.cat([d.sigmas.flip(0), torch.zeros(1, dtype=torch.float64)])
    return d, sigmas


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sigma_space_ddim_equals_discrete_ddim(eta):
    d, sigmas = _discrete_setup()
    model = GaussianEps("cosine")
    x_T = noise(16, 2 * 4 * 4).reshape(16, 2, 4, 4).float()
    recorded = torch.randn(d.num_timesteps, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    it = iter(recorded)
    discrete = ddim_sample_loop(d, model, x_T.shape, noise=x_T, clip_denoised=False, eta=eta,
                                randn_like=lambda x: next(it))
    it = iter(recorded)
    denoiser = ADMDenoiser(model, d)
    # x / √ᾱ is the σ-space sample; DDIM's noise σ_t·z becomes σ_up·z there.
    x = sample_ddim(denoiser, x_T / d.sqrt_alphas_cumprod[-1].float(), sigmas.float(), eta=eta,
                    randn_like=lambda x: next(it), disable=True)
    # fp32 schedule coefficients; the first step works at x/√ᾱ ~ 100.
    torch.testing.assert_close(x, discrete, rtol=5e-4, atol=5e-4)


def test_sigma_space_ddpm_equals_p_sample_loop():
    d, sigmas = _discrete_setup("linear", "50")
    model = GaussianEps("linear")
    x_T = noise(16, 2 * 4 * 4).reshape(16, 2, 4, 4).float()
    recorded = torch.randn(d.num_timesteps, 16, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    it = iter(recorded)
    discrete = p_sample_loop(d, model, x_T.shape, noise=x_T, clip_denoised=False,
                             randn_like=lambda x: next(it))
    it = iter(recorded)
    x = sample_ddpm(ADMDenoiser(model, d), x_T / d.sqrt_alphas_cumprod[-1].float(), sigmas.float(),
                    randn_like=lambda x: next(it), disable=True)
    torch.testing.assert_close(x, discrete, rtol=1e-4, atol=1e-4)


def test_adm_denoiser_rounds_and_drops_learned_sigma():
    d = create_gaussian_diffusion(learn_sigma=True, timestep_respacing="ddim10")
    seen = []

    class Spy(GaussianEps):
        def forward(self, x, t, **kwargs):
            seen.append(t)
            return super().forward(x, t)

    denoiser = ADMDenoiser(Spy(learned=True), d)
    table = d.sigmas.float()
    assert denoiser.sigma_min == pytest.approx(float(table[0]))
    assert denoiser.sigma_max == pytest.approx(float(table[-1]))
    torch.testing.assert_close(denoiser.round_sigma(table[3] * 1.01), table[3])
    x = torch.randn(3, 2, 4, 4)
    out = denoiser(x, torch.tensor([float(table[0]), float(table[5]), 1e4]))
    assert out.shape == x.shape
    assert seen[-1].tolist() == [0, 500, 900]  # original timesteps of the nearest steps
    with pytest.raises(ValueError, match="model output has shape"):
        ADMDenoiser(GaussianEps(learned=False), d)(x, torch.ones(3))


def test_same_images_at_any_batch_size():
    seeds = list(range(100, 107))
    sigmas = edm_sigmas(8)

    def run(batch_seeds, sampler, **kwargs):
        rng = StackedRandomGenerator(batch_seeds)
        x = rng.randn((len(batch_seeds), 3, 4, 4), dtype=torch.float64) * sigmas[0]
        return sampler(gaussian_denoiser, x, sigmas, randn_like=rng.randn_like, disable=True,
                       **kwargs)

    for sampler, kwargs in [(sample_heun, {"S_churn": 10}), (sample_ddpm, {}),
                            (sample_log_snr_ancestral, {"v": 0.3})]:
        together = run(seeds, sampler, **kwargs)
        alone = torch.cat([run([s], sampler, **kwargs) for s in seeds])
        assert torch.equal(together, alone)
        # And across 3 ranks with batches of at most 2.
        parts = {}
        for rank in range(3):
            for batch in rank_batches(seeds, 2, rank, 3):
                parts.update(zip(batch.tolist(), run(batch.tolist(), sampler, **kwargs)))
        assert torch.equal(torch.stack([parts[s] for s in seeds]), together)


def test_rank_batches_cover_every_seed_once():
    seeds = list(range(23))
    for world in (1, 2, 4):
        batches = [b for r in range(world) for b in rank_batches(seeds, 4, r, world)]
        assert sorted(s for b in batches for s in b.tolist()) == seeds
        assert max(len(b) for b in batches) <= 4


class _NoSync:
    """Make any device-to-host read (item, tolist, bool, float, int) raise while active."""
    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        def refuse(*args, **kwargs):
            raise AssertionError("host sync inside the sampling loop")
        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_sync_inside_the_loops():
    guard = _NoSync()
    active = []

    def denoiser(x, sigma, **kwargs):
        if not active:  # the σ list has been read by now: forbid syncs from here on
            active.append(guard.__enter__())
        return gaussian_denoiser(x, sigma)

    sigmas = edm_sigmas(6)
    x = torch.randn(2, 3, dtype=torch.float64) * sigmas[0]
    try:
        for name, sampler in SAMPLERS.items():
            kwargs = {"S_churn": 5.0} if name in ("heun", "euler") else {}
            sampler(denoiser, x, sigmas, disable=True, **kwargs)
            guard.__exit__(None, None, None)
            active.clear()
        d, _ = _discrete_setup("linear", "10", ModelVarType.LEARNED_RANGE)
        with guard:
            p_sample_loop(d, GaussianEps(learned=True), (2, 1, 2, 2), cond_fn=lambda x, t: x * 0)
            ddim_sample_loop(d, GaussianEps(learned=True), (2, 1, 2, 2), eta=0.5,
                             cond_fn=lambda x, t: x * 0)
    finally:
        guard.__exit__(None, None, None)


@pytest.mark.parametrize("sigmas", [[80.0, 10.0, 20.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0],
                                    [5.0, -1.0], [3.0], [[3.0, 2.0]], [float("nan"), 0.0]])
def test_bad_sigma_lists(sigmas):
    x = torch.zeros(2, 3)
    for sampler in SAMPLERS.values():
        with pytest.raises(ValueError, match="sigmas"):
            sampler(gaussian_denoiser, x, torch.tensor(sigmas), disable=True)


def test_non_monotone_message_names_the_step():
    with pytest.raises(ValueError, match=r"strictly decreasing, but sigmas\[1\] = 10"):
        sample_heun(gaussian_denoiser, torch.zeros(1, 2), [80.0, 10.0, 20.0, 0.0], disable=True)


def test_denoiser_output_of_wrong_shape():
    with pytest.raises(ValueError, match=r"denoiser output has shape \[2, 1\], expected \[2, 3\]"):
        sample_euler(lambda x, s: x[:, :1], torch.zeros(2, 3), edm_sigmas(3), disable=True)


def test_callback_and_progress_defaults():
    seen = []
    sample_heun(gaussian_denoiser, torch.zeros(1, 2, dtype=torch.float64), edm_sigmas(4),
                callback=seen.append, disable=True)
    assert [s["i"] for s in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    for sampler in SAMPLERS.values():  # tqdm progress bars are on by default
        assert inspect.signature(sampler).parameters["disable"].default is False


def test_edm_sigmas():
    sigmas = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert len(sigmas) == 19 and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(80.0) and float(sigmas[-2]) == pytest.approx(0.002)
    # ρ = 7: evenly spaced in σ^(1/7).
    roots = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(17))
