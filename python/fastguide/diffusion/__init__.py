"""Diffusion processes: the discrete Gaussian process of DDPM/ADM (schedules, respacing,
posterior, losses, the likelihood bound), the continuous log-SNR process of classifier-free guidance, and EDM's
σ-parameterisation (schedules, preconditioning, the ADM-to-denoiser wrapper, losses)."""
from .schedules import linear_betas, cosine_betas, betas_for_alpha_bar, named_betas
from .respace import space_timesteps, spaced_betas
from .gaussian import GaussianDiffusion, ModelMeanType, ModelVarType, LossType
from .losses import (mean_flat, normal_kl, approx_standard_normal_cdf,
                     discretized_gaussian_log_likelihood, vb_terms_bpd, training_losses)
from .likelihood import prior_bpd, calc_bpd_loop
from .timestep_sampler import (UniformSampler, LossSecondMomentResampler,
                               create_named_schedule_sampler)
from .log_snr import LogSNRProcess, alpha_sigma, sigma_from_log_snr, log_snr_from_sigma
from .edm import (edm_sigmas, EDMPrecond, VPPrecond, VEPrecond, EDMLoss, VPLoss, VELoss,
                  vp_sigma, vp_sigma_inv)
from .adm_denoiser import ADMDenoiser
from .compat import create_gaussian_diffusion, SpacedDiffusion

__all__ = [
    "linear_betas", "cosine_betas", "betas_for_alpha_bar", "named_betas",
    "space_timesteps", "spaced_betas",
    "GaussianDiffusion", "ModelMeanType", "ModelVarType", "LossType",
    "mean_flat", "normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood",
    "vb_terms_bpd", "training_losses", "prior_bpd", "calc_bpd_loop",
    "UniformSampler", "LossSecondMomentResampler", "create_named_schedule_sampler",
    "LogSNRProcess", "alpha_sigma", "sigma_from_log_snr", "log_snr_from_sigma",
    "edm_sigmas", "EDMPrecond", "VPPrecond", "VEPrecond", "EDMLoss", "VPLoss", "VELoss",
    "vp_sigma", "vp_sigma_inv",
    "ADMDenoiser",
    "create_gaussian_diffusion", "SpacedDiffusion",
]
