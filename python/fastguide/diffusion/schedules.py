"""Noise schedules of the discrete process: β_t for t = 0..T-1, in float64 like ADM's numpy.

Linear (Ho et al. 2020, scaled so any T spans the same range as T = 1000) and cosine
(Nichol & Dhariwal 2021): ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2), β_t = 1 − ᾱ((t+1)/T) / ᾱ(t/T),
capped at 0.999 so the last step does not have β = 1.
"""
import math

import torch

__all__ = ["linear_betas", "cosine_betas", "betas_for_alpha_bar", "named_betas"]


def linear_betas(num_timesteps):
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta=0.999):
    """β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), max_beta) for a continuous ᾱ(s), s ∈ [0, 1]."""
    betas = [min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
             for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def _cosine_alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_timesteps):
    return betas_for_alpha_bar(num_timesteps, _cosine_alpha_bar)


_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def named_betas(name, num_timesteps):
    if name not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {sorted(_SCHEDULES)}")
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    return _SCHEDULES[name](num_timesteps)
