"""DPM-2: the second-order midpoint step of DPM-Solver-2 (Lu et al. 2022, "DPM-Solver",
Algorithm 1 with r₁ = ½) written on EDM's ODE dx/dσ = (x − D(x, σ))/σ, inside Karras et al.'s
Algorithm 2 (churn) or an ancestral split, as k-diffusion's dpm_2 / dpm_2_ancestral do.

One step σ → σ_next with d(x, σ) = (x − D(x, σ))/σ:

    σ_mid  = √(σ·σ_next)                      (the midpoint in log σ, i.e. in λ = −log σ)
    x_mid  = x + (σ_mid − σ)·d(x, σ)          (Euler to the midpoint)
    x_next = x + (σ_next − σ)·d(x_mid, σ_mid)  (the full step with the midpoint's slope)

Two network calls a step; the step to σ = 0 is an Euler step (one call), which lands on D.
"""
import torch

from . import steps
from .base import (ancestral_sigmas, check_number, check_sigmas, churn_gamma,
                   default_noise_sampler, denoise, report)
from .progress import sampling_steps

__all__ = ["dpm_2_step", "sample_dpm_2", "sample_dpm_2_ancestral"]


def dpm_2_step(denoiser, x, denoised, sigma, sigma_next, extra_args):
    """The midpoint step above, given D(x, σ); σ, σ_next > 0 (floats or 0-d tensors)."""
    sigma_mid = (sigma * sigma_next) ** 0.5
    x_mid = steps.euler_step(x, denoised, sigma, sigma_mid)
    denoised_mid = denoise(denoiser, x_mid, sigma_mid, extra_args)
    return x + (sigma_next - sigma) * (x_mid - denoised_mid) / sigma_mid


@torch.no_grad()
def sample_dpm_2(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, S_churn=0.0,
                 S_min=0.0, S_max=float("inf"), S_noise=1.0, randn_like=None):
    """DPM-2 with EDM's optional churn: second order (deterministic when S_churn = 0).

    Options: S_churn, S_min, S_max, S_noise (EDM's churn, as in sample_heun: noise is added on
    S_min <= σ <= S_max, at most (√2 − 1)·σ a step), randn_like for the churn noise.
    """
    sigmas, values = check_sigmas(sigmas, x)
    S_churn = check_number("S_churn", S_churn, low=0)
    S_noise = check_number("S_noise", S_noise, low=0)
    extra_args = extra_args or {}
    randn_like = randn_like or torch.randn_like
    round_sigma = getattr(denoiser, "round_sigma", None)
    num_steps = len(values) - 1
    for i in sampling_steps(num_steps, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(values[i], num_steps, S_churn, S_min, S_max)
        sigma_hat = sigma
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            if round_sigma is not None:
                sigma_hat = round_sigma(sigma_hat).to(sigmas)
            x = steps.churn_step(x, sigma, sigma_hat, randn_like(x), S_noise)
        denoised = denoise(denoiser, x, sigma_hat, extra_args)
        report(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised)
        if values[i + 1] == 0:
            x = steps.euler_step(x, denoised, sigma_hat, sigma_next)
        else:
            x = dpm_2_step(denoiser, x, denoised, sigma_hat, sigma_next, extra_args)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                           eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """Ancestral DPM-2: a DPM-2 step to σ_down, then noise of std σ_up (see ancestral.py).

    Options: eta (>= 0, default 1), S_noise (default 1), noise_sampler or randn_like (default
    torch.randn_like; StackedRandomGenerator.randn_like gives per-seed noise). Second order when
    eta = 0.
    """
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
            x = steps.euler_step(x, denoised, sigma, sigma_down)
        else:
            x = dpm_2_step(denoiser, x, denoised, sigma, sigma_down, extra_args)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * (S_noise * sigma_up)
    return x
