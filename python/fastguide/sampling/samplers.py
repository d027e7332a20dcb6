"""The functional core: samplers in k-diffusion's style, for any denoiser D(x, σ, **extra_args).

    x = sample_heun(denoiser, noise * sigmas[0], sigmas, extra_args={"y": labels})

sigmas is a strictly decreasing list of N+1 noise levels, usually ending in 0 (edm_sigmas does
this). x starts at σ_0. The network sees sigma as a [B] tensor. Guidance is a wrapper around
the denoiser (guidance.py, cfg.py), so every sampler here supports it.

No sampler asks the device anything inside its loop: the σ list is read once before it, to
decide the control flow (the last step, churn), and the arithmetic uses tensors on x's device.
Noise comes from randn_like (per-image generators: rng.StackedRandomGenerator.randn_like).
"""
import torch

from .. import ops
from . import steps
from .base import check_number, check_sigmas, churn_gamma as _churn_gamma, denoise as _denoise
from .base import report as _callback
from .progress import sampling_steps

__all__ = ["sample_euler", "sample_heun", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
           "sample_log_snr_ancestral", "check_sigmas"]


_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _euler(x, denoised, sigma, sigma_next):
    """The Euler update, as one fused kernel where it applies (float64 stays in PyTorch)."""
    if x.dtype in _FUSED_DTYPES:
        return ops.euler_step(x, denoised, sigma, sigma_next)
    return steps.euler_step(x, denoised, sigma, sigma_next)


def _heun(x, denoised, x_next, denoised_next, sigma, sigma_next):
    if x.dtype in _FUSED_DTYPES:
        return ops.heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next)
    return steps.heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next)


def _heun_update(denoiser, x, denoised, sigma, sigma_next, extra_args):
    # EDM Algorithm 2, lines 5–8: Euler to σ_next, then the average of both slopes.
    x_next = _euler(x, denoised, sigma, sigma_next)
    denoised_next = _denoise(denoiser, x_next, sigma_next, extra_args)
    return _heun(x, denoised, x_next, denoised_next, sigma, sigma_next)


def edm_churn_sampler(denoiser, x, sigmas, extra_args, callback, disable, S_churn, S_min, S_max,
                      S_noise, randn_like, update=None):
    """EDM's Algorithm 2: optional churn (raise σ to σ̂ with fresh noise), then one step from σ̂
    to σ_next: update(denoiser, x, D(x, σ̂), σ̂, σ_next, extra_args), or Euler (update None,
    and always for the step to σ = 0). Shared by euler, heun and dpm_2."""
    sigmas, values = check_sigmas(sigmas, x)
    check_number("S_churn", S_churn, low=0)
    check_number("S_noise", S_noise, low=0)
    extra_args = extra_args or {}
    randn_like = randn_like or torch.randn_like
    round_sigma = getattr(denoiser, "round_sigma", None)
    num_steps = len(values) - 1
    for i in sampling_steps(num_steps, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = _churn_gamma(values[i], num_steps, S_churn, S_min, S_max)
        sigma_hat = sigma
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            if round_sigma is not None:
                sigma_hat = round_sigma(sigma_hat).to(sigmas)
            x = steps.churn_step(x, sigma, sigma_hat, randn_like(x), S_noise)
        denoised = _denoise(denoiser, x, sigma_hat, extra_args)
        if update is not None and values[i + 1] > 0:
            x_next = update(denoiser, x, denoised, sigma_hat, sigma_next, extra_args)
        else:
            x_next = _euler(x, denoised, sigma_hat, sigma_next)
        _callback(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised)
        x = x_next
    return x


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, S_churn=0.0,
                 S_min=0.0, S_max=float("inf"), S_noise=1.0, randn_like=None):
    """Euler's method on the probability-flow ODE, with EDM's optional churn (first order).

    Options: S_churn, S_min, S_max, S_noise (EDM's churn, as in sample_heun), randn_like for
    the churn noise.
    """
    return edm_churn_sampler(denoiser, x, sigmas, extra_args, callback, disable, S_churn, S_min,
                             S_max, S_noise, randn_like)


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, S_churn=0.0,
                S_min=0.0, S_max=float("inf"), S_noise=1.0, randn_like=None):
    """EDM's 2nd-order Heun sampler (Algorithm 2); the step to σ = 0 is an Euler step.

    Options: S_churn > 0 adds noise on S_min <= σ <= S_max, at most √2 − 1 times σ per step,
    scaled by S_noise; randn_like draws it (default torch.randn_like; per-seed noise with
    StackedRandomGenerator.randn_like).
    """
    return edm_churn_sampler(denoiser, x, sigmas, extra_args, callback, disable, S_churn, S_min,
                             S_max, S_noise, randn_like, update=_heun_update)


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, eta=0.0,
                randn_like=None):
    """DDIM(η) in σ-space. η = 0 is Euler's method; on a discrete process's σ list, this equals
    the discrete DDIM sampler on x/√ᾱ (without x_0 clipping).

    Options: eta (default 0), randn_like for the noise when eta > 0 (default torch.randn_like).
    """
    sigmas, values = check_sigmas(sigmas, x)
    check_number("eta", eta, low=0)
    extra_args = extra_args or {}
    randn_like = randn_like or torch.randn_like
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _callback(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma, denoised=denoised)
        if eta == 0 or values[i + 1] == 0:
            x = _euler(x, denoised, sigma, sigma_next)
        else:
            sigma_down, sigma_up = steps.ancestral_sigmas(sigma, sigma_next, eta)
            x = steps.ancestral_step(x, denoised, sigma, sigma_down, sigma_up, randn_like(x))
    return x


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                randn_like=None):
    """DDPM's ancestral sampler with Σ = β̃ (the posterior variance), in σ-space: DDIM, η = 1.

    Options: randn_like for the noise (default torch.randn_like).
    """
    return sample_ddim(denoiser, x, sigmas, extra_args, callback, disable, eta=1.0,
                       randn_like=randn_like)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, extra_args=None, callback=None, disable=False):
    """DPM-Solver++(2M): a deterministic multistep solver, 2nd order from the second step."""
    sigmas, values = check_sigmas(sigmas, x)
    extra_args = extra_args or {}
    denoised_prev = None
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _callback(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma, denoised=denoised)
        if values[i + 1] == 0:
            x = denoised  # the first-order step to σ = 0 lands exactly on D
        elif denoised_prev is None:
            x = steps.dpmpp_2m_step(x, denoised, sigma, sigma_next)
        else:
            x = steps.dpmpp_2m_step(x, denoised, sigma, sigma_next, denoised_prev, sigmas[i - 1])
        denoised_prev = denoised
    return x


@torch.no_grad()
def sample_log_snr_ancestral(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                             v=0.3, randn_like=None):
    """Ho & Salimans' ancestral sampler, variance (σ̃²)^(1−v)·(σ²_{λ|λ'})^v.

    Takes σ = e^(−λ/2) (LogSNRProcess.sampling_sigmas); x is in EDM's scale, x = z_λ/α_λ.
    A last σ of 0 returns the denoiser's final prediction.

    Options: v (in [0, 1], default 0.3), randn_like for the noise (default torch.randn_like).
    """
    sigmas, values = check_sigmas(sigmas, x)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"v must be in [0, 1], got {v}")
    extra_args = extra_args or {}
    randn_like = randn_like or torch.randn_like
    for i in sampling_steps(len(values) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _callback(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma, denoised=denoised)
        if values[i + 1] == 0:
            x = denoised
        else:
            x = steps.log_snr_ancestral_step(x, denoised, sigma, sigma_next, v, randn_like(x))
    return x

