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
from .ancestral import ancestral_sampler
from .base import denoise
from .samplers import edm_churn_sampler

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
    return edm_churn_sampler(denoiser, x, sigmas, extra_args, callback, disable, S_churn, S_min,
                             S_max, S_noise, randn_like, update=dpm_2_step)


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                           eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """Ancestral DPM-2: a DPM-2 step to σ_down, then noise of std σ_up (see ancestral.py).

    Options: eta (>= 0, default 1), S_noise (default 1), noise_sampler or randn_like (default
    torch.randn_like; StackedRandomGenerator.randn_like gives per-seed noise). Second order when
    eta = 0.
    """
    return ancestral_sampler(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                             noise_sampler, randn_like, dpm_2_step)
