"""Ancestral sampling in σ-space, and its first-order member, Euler ancestral (k-diffusion's
euler_ancestral).

Each step σ → σ_next splits into a deterministic step of the probability-flow ODE down to
σ_down, then fresh noise of std σ_up, with σ_down² + σ_up² = σ_next² and

    σ_up = min(σ_next, η·σ_next·√(1 − σ_next²/σ²)).

η = 1 is the exact DDPM posterior q(x_next | x, x̂_0 = D) (Ho et al. 2020, with Σ = β̃, in
EDM's scale), η = 0 is the plain ODE solver. The deterministic part is any one-step solver:
Euler here (with η <= 1 this is DDIM(η) of sample_ddim, with the k-diffusion options S_noise and
noise_sampler), DPM-2 in dpm_2.py, DPM-Solver++(2S) in dpm_solver_pp.py.
"""
import torch

from .base import (ancestral_sigmas, check_number, check_sigmas, default_noise_sampler, denoise,
                   report)
from .progress import sampling_steps
from .steps import euler_step

__all__ = ["ancestral_sampler", "sample_euler_ancestral"]


def ancestral_sampler(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                      noise_sampler, randn_like, step_down):
    """The loop: D(x, σ), then step_down(denoiser, x, D, σ, σ_down, extra_args) (floats,
    σ_down > 0; an Euler step when σ_down = 0, which lands on D), then σ_up·S_noise·noise."""
    sigmas, values = check_sigmas(sigmas, x)
    eta = check_number("eta", eta, low=0)
    S_noise = check_number("S_noise", S_noise, low=0)
    noise = default_noise_sampler(x, noise_sampler, randn_like)
    extra_args = extra_args or {}
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoise(denoiser, x, sigmas[i], extra_args)
        report(callback, x=x, i=i, sigma=sigmas[i], sigma_hat=sigmas[i], denoised=denoised)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = euler_step(x, denoised, sigma, sigma_down)
        else:
            x = step_down(denoiser, x, denoised, sigma, sigma_down, extra_args)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * (S_noise * sigma_up)
    return x


def _euler_down(denoiser, x, denoised, sigma, sigma_down, extra_args):
    return euler_step(x, denoised, sigma, sigma_down)


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                           eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """Ancestral Euler sampling (first order; stochastic for eta > 0).

    Options: eta (>= 0, default 1: the DDPM posterior's noise), S_noise (noise scale, default 1),
    noise_sampler(σ, σ_next) -> N(0, I) like x, or randn_like (default torch.randn_like; pass
    StackedRandomGenerator.randn_like for per-seed, batch-independent noise). The step to σ = 0
    returns D.
    """
    return ancestral_sampler(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                             noise_sampler, randn_like, _euler_down)
