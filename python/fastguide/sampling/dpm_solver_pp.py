"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion
probabilistic models"): exponential integrators on the data prediction D(x, σ), in time
λ = −log σ (EDM's scale: α = 1), with h = λ_next − λ = log(σ/σ_next).

Their SDE forms follow from the reverse SDE with an extra noise rate η (η = 0 is the
probability-flow ODE, η = 1 the DDPM posterior): in λ, dx = −(1+η)·(x − D)·dλ + noise, whose
exact solution over one step, with k = 1 + η and a = k·h, is

    x_next = e^(−a)·x + ∫_0^h k·e^(−k(h−τ))·D(λ+τ) dτ + σ_next·√(1 − e^(−2ηh))·z.    (★)

Expanding D(λ+τ) = D + τ·D' + τ²/2·D'' + ... gives the weights
    ∫ k·e^(−k(h−τ)) dτ = 1 − e^(−a),
    ∫ k·e^(−k(h−τ))·τ dτ = h·φ₂(a),        φ₂(a) = 1 + (e^(−a) − 1)/a,
    ∫ k·e^(−k(h−τ))·τ²/2 dτ = h²·φ₃(a),     φ₃(a) = ½ − φ₂(a)/a,
and the multistep solvers estimate h·D' and h²·D'' from the previous steps' D (DPM-Solver++(2M),
(3M)); the singlestep ones (2S, SDE) from an extra network call inside the step.

The step to σ = 0 is x = D (λ = ∞: the first-order step lands on the denoiser's output).
"""
import math

import torch

from .ancestral import ancestral_sampler
from .base import ancestral_sigmas, check_choice, check_number, check_sigmas, denoise, report
from .noise import brownian_noise_sampler
from .progress import sampling_steps

__all__ = ["phi_2", "phi_3", "first_order_step", "dpmpp_2s_step", "dpmpp_2m_sde_step",
           "dpmpp_3m_sde_step", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
           "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"]


def phi_2(a):
    return 1 + math.expm1(-a) / a


def phi_3(a):
    return 0.5 - phi_2(a) / a


def first_order_step(x, denoised, sigma, sigma_to):
    """DPM-Solver++(1) (= DDIM) from σ to σ_to, floats: x_to = (σ_to/σ)·x + (1 − σ_to/σ)·D."""
    if sigma_to == 0:
        return denoised
    h = math.log(sigma / sigma_to)
    return math.exp(-h) * x - math.expm1(-h) * denoised


def _check_noise_options(eta, S_noise):
    return check_number("eta", eta, low=0), check_number("S_noise", S_noise, low=0)


def dpmpp_2s_step(denoiser, x, denoised, sigma, sigma_to, extra_args):
    """DPM-Solver++(2S) from σ to σ_to (Lu et al., Algorithm 1, r = ½): a first-order step to
    the midpoint σ_s = √(σ·σ_to), then the full first-order step with D there."""
    sigma_s = math.sqrt(sigma * sigma_to)
    x_s = first_order_step(x, denoised, sigma, sigma_s)
    return first_order_step(x, denoise(denoiser, x_s, sigma_s, extra_args), sigma, sigma_to)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                              eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """Ancestral sampling with DPM-Solver++(2S) steps to σ_down, then noise of std σ_up
    (ancestral.py). Two network calls a step; second order when eta = 0.

    Options: eta (>= 0, default 1), S_noise (default 1), noise_sampler or randn_like (default
    torch.randn_like; StackedRandomGenerator.randn_like gives per-seed noise).
    """
    return ancestral_sampler(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                             noise_sampler, randn_like, dpmpp_2s_step)


@torch.no_grad()
def sample_dpmpp_sde(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                     eta=1.0, S_noise=1.0, r=0.5, noise_sampler=None, randn_like=None):
    """Stochastic DPM-Solver++ (k-diffusion's dpmpp_sde): singlestep, two calls a step.

    With λ_s = λ + r·h: an ancestral first-order step to σ_s, D there, then an ancestral step
    σ → σ_next with D̂ = (1 − 1/(2r))·D + 1/(2r)·D_s (DPM-Solver++(2S) when eta = 0: second
    order). The noise of both substeps comes from one Brownian path (noise.py).

    Options: eta (>= 0, default 1), S_noise (default 1), r (in (0, 1), default ½),
    noise_sampler, or randn_like (default torch.randn_like), which seeds a per-image Brownian
    tree (StackedRandomGenerator.randn_like: batch-independent).
    """
    sigmas, values = check_sigmas(sigmas, x)
    eta, S_noise = _check_noise_options(eta, S_noise)
    r = check_number("r", r, low=0, high=1, low_open=True, high_open=True)
    noise = brownian_noise_sampler(x, values, noise_sampler, randn_like) if eta > 0 else None
    extra_args = extra_args or {}
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoise(denoiser, x, sigmas[i], extra_args)
        report(callback, x=x, i=i, sigma=sigmas[i], sigma_hat=sigmas[i], denoised=denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_s = sigma * (sigma_next / sigma) ** r  # λ_s = λ + r·h
        x_s = _ancestral(x, denoised, sigma, sigma_s, eta, S_noise, noise)
        denoised_s = denoise(denoiser, x_s, sigma_s, extra_args)
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_s
        x = _ancestral(x, denoised_d, sigma, sigma_next, eta, S_noise, noise)
    return x


def _ancestral(x, denoised, sigma, sigma_next, eta, S_noise, noise):
    # A first-order step to σ_down plus σ_up of the Brownian increment over [σ_next, σ].
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x = first_order_step(x, denoised, sigma, sigma_down)
    return x + noise(sigma, sigma_next) * (S_noise * sigma_up) if sigma_up > 0 else x


def dpmpp_2m_sde_step(x, denoised, sigma, sigma_next, eta, history, solver_type="midpoint"):
    """(★) with D linear in λ through the last two D's (no noise term). Floats σ, σ_next > 0;
    history = [(D_1, h_1)] of the previous step (h_1 its λ-length), or [] for the first step.

    heun:     the exact weight h·φ₂(a) of D' ≈ (D − D_1)/h_1;
    midpoint: the DPM-Solver++(2M) weight ½·(1 − e^(−a))·h (Lu et al., Algorithm 2).
    """
    h = math.log(sigma / sigma_next)
    a = (1 + eta) * h
    x = math.exp(-a) * x - math.expm1(-a) * denoised
    if history:
        (d_1, h_1), = history[:1]
        weight = phi_2(a) if solver_type == "heun" else -0.5 * math.expm1(-a)
        x = x + (weight * h / h_1) * (denoised - d_1)
    return x


def dpmpp_3m_sde_step(x, denoised, sigma, sigma_next, eta, history):
    """(★) with D interpolated through up to three D's (no noise term); history = [(D_1, h_1),
    (D_2, h_2)] of the previous steps, newest first (h_j: the λ-length of step −j).

    With the quadratic through (λ−h₁−h₂, D_2), (λ−h₁, D_1), (λ, D) (Newton's divided
    differences f₀₁ = (D − D_1)/h₁, f₁₂ = (D_1 − D_2)/h₂, f₀₁₂ = (f₀₁ − f₁₂)/(h₁ + h₂)):
        h·D' = h·(f₀₁ + h₁·f₀₁₂),   h²·D'' = 2·h²·f₀₁₂,
        x_next = e^(−a)·x + (1 − e^(−a))·D + φ₂(a)·h·D' + φ₃(a)·h²·D''.
    With one previous step, D is linear: h·D' = h·f₀₁ (DPM-Solver++(2M), heun weights).
    """
    if len(history) < 2:
        return dpmpp_2m_sde_step(x, denoised, sigma, sigma_next, eta, history, "heun")
    h = math.log(sigma / sigma_next)
    a = (1 + eta) * h
    (d_1, h_1), (d_2, h_2) = history[:2]
    f_01 = (denoised - d_1) / h_1
    f_12 = (d_1 - d_2) / h_2
    f_012 = (f_01 - f_12) / (h_1 + h_2)
    x = math.exp(-a) * x - math.expm1(-a) * denoised
    return x + (phi_2(a) * h) * (f_01 + h_1 * f_012) + (2 * phi_3(a) * h * h) * f_012


def _multistep_sde(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                   noise_sampler, randn_like, step, history_length):
    """The multistep loop: D(x, σ), step(x, D, σ, σ_next, η, history), then the noise of (★),
    σ_next·√(1 − e^(−2ηh))·S_noise·z, z from a per-image Brownian tree by default."""
    sigmas, values = check_sigmas(sigmas, x)
    eta, S_noise = _check_noise_options(eta, S_noise)
    noise = brownian_noise_sampler(x, values, noise_sampler, randn_like) if eta > 0 else None
    extra_args = extra_args or {}
    history = []  # [(D, λ-length of its step)], newest first
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoise(denoiser, x, sigmas[i], extra_args)
        report(callback, x=x, i=i, sigma=sigmas[i], sigma_hat=sigmas[i], denoised=denoised)
        if sigma_next == 0:
            x = denoised
            continue
        x = step(x, denoised, sigma, sigma_next, eta, history)
        h = math.log(sigma / sigma_next)
        if eta > 0:
            std = sigma_next * math.sqrt(-math.expm1(-2 * eta * h))
            x = x + noise(sigma, sigma_next) * (S_noise * std)
        history = [(denoised, h)] + history[:history_length - 1]
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                        eta=1.0, S_noise=1.0, solver_type="midpoint", noise_sampler=None,
                        randn_like=None):
    """DPM-Solver++(2M) SDE: multistep, one call a step; second order (eta = 0: the ODE).

    Options: eta (>= 0, default 1), S_noise (default 1), solver_type ("midpoint", default, or
    "heun": how D' enters, see dpmpp_2m_sde_step), noise_sampler, or randn_like (default
    torch.randn_like), which seeds a per-image Brownian tree (batch-independent with
    StackedRandomGenerator.randn_like).
    """
    check_choice("solver_type", solver_type, ("midpoint", "heun"))

    def step(x, denoised, sigma, sigma_next, eta, history):
        return dpmpp_2m_sde_step(x, denoised, sigma, sigma_next, eta, history, solver_type)
    return _multistep_sde(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                          noise_sampler, randn_like, step, history_length=1)


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                        eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """DPM-Solver++(3M) SDE: multistep, one call a step; third order for eta = 0 (the ODE),
    after warm-up steps of orders 1 and 2.

    Unlike k-diffusion's dpmpp_3m_sde, whose D'' term carries half the Taylor weight (measured
    globally second order on the ODE), the weight here is the exact φ₃(a)·h²·D''.

    Options: eta (>= 0, default 1), S_noise (default 1), noise_sampler, or randn_like (default
    torch.randn_like), which seeds a per-image Brownian tree (batch-independent with
    StackedRandomGenerator.randn_like).
    """
    return _multistep_sde(denoiser, x, sigmas, extra_args, callback, disable, eta, S_noise,
                          noise_sampler, randn_like, dpmpp_3m_sde_step, history_length=2)
