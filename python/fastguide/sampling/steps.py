"""One update of each sampler, as small pure-PyTorch functions.

Each takes the current sample, what the network said about it, the schedule values of this step
(0-d or broadcastable tensors, or floats) and any fresh noise, and returns the next sample.
Loops (samplers.py, discrete.py, scheduler.py) only call the network and these functions, so a
fused kernel can replace any of them behind the same signature.

Discrete-process steps work on x_t = √ᾱ·x_0 + √(1 − ᾱ)·ε. σ-parameterised steps work on EDM's
x = x_0 + σ·ε with a denoiser output D ≈ E[x_0 | x].
"""
import torch

__all__ = ["ddpm_step", "ddim_sigma", "ddim_step", "euler_step", "churn_step", "heun_step",
           "ancestral_sigmas", "ancestral_step", "dpmpp_2m_step", "log_snr_ancestral_step"]


# ------------------------------------------------------------------------------------------------
# Discrete process (DDPM, DDIM). nonzero_mask is 0 where t == 0: no noise is added at the end.


def ddpm_step(mean, log_variance, noise, nonzero_mask):
    """Ancestral step x_{t−1} = μ + 1[t > 0]·exp(½·log Σ)·z (Ho et al. 2020, Algorithm 2)."""
    return mean + nonzero_mask * torch.exp(0.5 * log_variance) * noise


def ddim_sigma(alpha_bar, alpha_bar_prev, eta):
    """DDIM's σ_t = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}); η = 1 is DDPM's β̃_t."""
    return (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev))


def ddim_step(pred_xstart, eps, alpha_bar, alpha_bar_prev, eta, noise, nonzero_mask):
    """x_{t−1} = √ᾱ_{t−1}·x̂_0 + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·z (Song et al. 2021, eq. 12)."""
    sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
    # 1 − ᾱ_{t−1} − σ_t² >= 0 exactly, but rounds below 0 for η = 1 (ADM's sqrt gives NaN there).
    direction = torch.sqrt((1 - alpha_bar_prev - sigma ** 2).clamp_min(0))
    mean = pred_xstart * torch.sqrt(alpha_bar_prev) + direction * eps
    return mean + nonzero_mask * sigma * noise


# ------------------------------------------------------------------------------------------------
# σ-parameterised steps (EDM, k-diffusion). dx/dσ = (x − D(x, σ))/σ is the probability-flow ODE.


def euler_step(x, denoised, sigma, sigma_next):
    """One Euler step of the ODE from σ to σ_next."""
    d = (x - denoised) / sigma
    return x + (sigma_next - sigma) * d


def churn_step(x, sigma, sigma_hat, noise, S_noise=1.0):
    """EDM's stochastic churn: raise the noise level from σ to σ̂ >= σ with fresh noise."""
    return x + (sigma_hat ** 2 - sigma ** 2).sqrt() * S_noise * noise


def heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next):
    """Heun's correction (EDM Algorithm 1, line 7–8): average the slopes at both ends.

    x_next is the Euler prediction at σ_next, denoised_next the denoiser's output there.
    """
    d = (x - denoised) / sigma
    d_next = (x_next - denoised_next) / sigma_next
    return x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_next)


def ancestral_sigmas(sigma, sigma_next, eta=1.0):
    """Split the step σ → σ_next into a deterministic part to σ_down and fresh noise σ_up, with
    σ_down² + σ_up² = σ_next². η = 1 is the exact posterior (DDPM with Σ = β̃), η = 0 is DDIM."""
    sigma_up = torch.minimum(torch.as_tensor(sigma_next), torch.as_tensor(
        eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5))
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def ancestral_step(x, denoised, sigma, sigma_down, sigma_up, noise):
    """DDIM(η) / DDPM in σ-space: an Euler step to σ_down, then noise of std σ_up."""
    return euler_step(x, denoised, sigma, sigma_down) + sigma_up * noise


def dpmpp_2m_step(x, denoised, sigma, sigma_next, denoised_prev=None, sigma_prev=None):
    """DPM-Solver++(2M) (Lu et al. 2022), in log-σ time t = −log σ, h = t_next − t:

        x_next = (σ_next/σ)·x − (e^(−h) − 1)·D̂,   D̂ = (1 + 1/(2r))·D − 1/(2r)·D_prev,
        r = h_prev/h;  first order (D̂ = D) without a previous step, and when σ_next = 0.
    """
    t, t_next = -torch.log(torch.as_tensor(sigma)), -torch.log(torch.as_tensor(sigma_next))
    h = t_next - t
    if denoised_prev is not None:
        r = (t + torch.log(torch.as_tensor(sigma_prev))) / h
        denoised = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev
    return (sigma_next / sigma) * x - torch.expm1(-h) * denoised


def log_snr_ancestral_step(x, denoised, sigma, sigma_next, v, noise):
    """Ho & Salimans' ancestral step from λ to λ' > λ, written for x = z_λ/α_λ (σ = e^(−λ/2)).

    With r = e^(λ−λ') = σ_next²/σ², dividing the paper's μ̃ and variance by α_λ' gives
        x_next = r·x + (1 − r)·D + √var·z,
        var = (1 − r)·(σ_next²)^(1−v)·(σ²·(1 + σ_next²)/(1 + σ²))^v,
    i.e. (σ̃²)^(1−v)·(σ²_{λ|λ'})^v in the paper's terms. v = 0 is the DDPM posterior variance.
    """
    r = (sigma_next / sigma) ** 2
    log_var_tilde = torch.log(torch.as_tensor(sigma_next ** 2))
    log_var_reverse = torch.log(
        torch.as_tensor(sigma ** 2 * (1 + sigma_next ** 2) / (1 + sigma ** 2)))
    std = ((1 - r) * torch.exp((1 - v) * log_var_tilde + v * log_var_reverse)).sqrt()
    return r * x + (1 - r) * denoised + std * noise
