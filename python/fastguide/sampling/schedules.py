"""Noise-level (σ) schedules for the samplers: N + 1 levels σ_0 > ... > σ_{N−1} > σ_N = 0.

Every entry of SCHEDULES takes (n, sigma_min, sigma_max, **options, device=None,
dtype=torch.float64), so a command line can choose one by name:

    karras           EDM's eq. 5 (Karras et al. 2022): uniform in σ^(1/ρ); rho (default 7).
    exponential      uniform in log σ (k-diffusion's exponential).
    polyexponential  log σ = log σ_min + ramp^ρ·(log σ_max − log σ_min), ramp from 1 to 0;
                     rho (default 1: exponential).
    vp               uniform in the time t of the continuous VP SDE (Song et al. 2021),
                     σ(t) = √(exp(½β_d t² + β_min t) − 1), between t(σ_max) and t(σ_min);
                     beta_d (19.9), beta_min (0.1). Default range t ∈ [10⁻³, 1].
    discrete         the model's own σ's: a discrete ADM process's table σ_j = √((1 − ᾱ_j)/ᾱ_j)
                     within [σ_min, σ_max], n of them at evenly spaced, rounded indices (EDM's
                     "iddpm" discretization, their Table 1), so no level is rounded by the
                     network. Give denoiser (an ADMDenoiser, or a guidance wrapper around one)
                     or sigma_table.
"""
import math

import torch

from ..diffusion.edm import edm_sigmas, vp_sigma, vp_sigma_inv
from .base import NameRegistry, check_number

__all__ = ["karras", "exponential", "polyexponential", "vp", "discrete", "SCHEDULES",
           "schedule_options"]


def _positive(name, value):
    return check_number(name, value, low=0, low_open=True)


def _check(n, sigma_min, sigma_max):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of steps) must be an integer >= 1, got {n!r}")
    sigma_min, sigma_max = _positive("sigma_min", sigma_min), _positive("sigma_max", sigma_max)
    if sigma_min > sigma_max or (n > 1 and sigma_min == sigma_max):
        raise ValueError(f"sigma_min ({sigma_min:g}) must be below sigma_max ({sigma_max:g})")
    return sigma_min, sigma_max


def _append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _log_ramp(sigma_min, sigma_max, ramp, device, dtype):
    # σ = exp(log σ_min + ramp·(log σ_max − log σ_min)), ramp from 1 down to 0.
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    sigmas = torch.exp(lo + ramp * (hi - lo))
    return _append_zero(sigmas.to(device=device, dtype=dtype))


def _ramp(n):
    """n values from 1 down to 0 (just [1] for n = 1: the single level is σ_max)."""
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    return torch.linspace(1, 0, n, dtype=torch.float64)


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0, *, device=None, dtype=torch.float64):
    """EDM's schedule σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ (edm_sigmas)."""
    sigma_min, sigma_max = _check(n, sigma_min, sigma_max)
    return edm_sigmas(n, sigma_min, sigma_max, _positive("rho", rho), device=device, dtype=dtype)


def exponential(n, sigma_min=0.002, sigma_max=80.0, *, device=None, dtype=torch.float64):
    """Uniform steps in log σ (equal steps of DPM-Solver's λ = −log σ)."""
    sigma_min, sigma_max = _check(n, sigma_min, sigma_max)
    return _log_ramp(sigma_min, sigma_max, _ramp(n), device, dtype)


def polyexponential(n, sigma_min=0.002, sigma_max=80.0, rho=1.0, *, device=None,
                    dtype=torch.float64):
    """log σ polynomial in the step: ramp^ρ with ramp from 1 to 0 (ρ > 1 spends more steps at
    low noise)."""
    sigma_min, sigma_max = _check(n, sigma_min, sigma_max)
    return _log_ramp(sigma_min, sigma_max, _ramp(n) ** _positive("rho", rho), device, dtype)


def vp(n, sigma_min=None, sigma_max=None, beta_d=19.9, beta_min=0.1, *, device=None,
       dtype=torch.float64):
    """Uniform steps in the VP SDE's t; sigma_min/sigma_max default to σ(10⁻³) and σ(1)."""
    beta_d = _positive("beta_d", beta_d)
    beta_min = check_number("beta_min", beta_min, low=0)
    if sigma_min is None:
        sigma_min = float(vp_sigma(torch.tensor(1e-3, dtype=torch.float64), beta_d, beta_min))
    if sigma_max is None:
        sigma_max = float(vp_sigma(torch.tensor(1.0, dtype=torch.float64), beta_d, beta_min))
    sigma_min, sigma_max = _check(n, sigma_min, sigma_max)
    t_min, t_max = (vp_sigma_inv(torch.tensor(s, dtype=torch.float64), beta_d, beta_min)
                    for s in (sigma_min, sigma_max))
    t = t_min + _ramp(n) * (t_max - t_min)
    sigmas = vp_sigma(t, beta_d, beta_min)
    sigmas[-1] = sigma_min  # exact ends (σ(t(σ)) rounds)
    sigmas[0] = sigma_max
    return _append_zero(sigmas.to(device=device, dtype=dtype))


def _find_sigma_table(denoiser):
    # An ADMDenoiser has sigma_table; guidance wrappers hold theirs as .denoiser or .model.
    seen = 0
    while denoiser is not None and seen < 8:
        table = getattr(denoiser, "sigma_table", None)
        if table is not None:
            return table
        denoiser = getattr(denoiser, "denoiser", None) or getattr(denoiser, "model", None)
        seen += 1
    return None


def discrete(n, sigma_min=None, sigma_max=None, *, denoiser=None, sigma_table=None, device=None,
             dtype=torch.float64):
    """n of the model's own σ's, evenly spread over its table (EDM's "iddpm" spacing):

        u = the table's σ's in [σ_min, σ_max], decreasing;  σ_i = u[round(i·(len(u) − 1)/(n − 1))].

    Index rounding is half to even (torch.round), as in EDM. sigma_min/sigma_max default to the
    table's ends. n may not exceed the number of table entries in range.
    """
    if (denoiser is None) == (sigma_table is None):
        raise ValueError("the discrete schedule needs exactly one of denoiser (an ADMDenoiser) "
                         "and sigma_table")
    if denoiser is not None:
        sigma_table = _find_sigma_table(denoiser)
        if sigma_table is None:
            raise ValueError(f"denoiser {type(denoiser).__name__} has no discrete σ table "
                             "(sigma_table): the discrete schedule needs an ADMDenoiser")
    table = torch.as_tensor(sigma_table, dtype=torch.float64).detach().cpu().reshape(-1)
    if len(table) == 0 or not bool(torch.isfinite(table).all()) or not bool((table > 0).all()):
        raise ValueError("sigma_table must be a non-empty list of positive finite σ's")
    table = table.sort(descending=True).values
    lo = float(table[-1]) if sigma_min is None else sigma_min
    hi = float(table[0]) if sigma_max is None else sigma_max
    lo, hi = _check(n, lo, hi)
    u = table[(table >= lo) & (table <= hi)]
    if len(u) < n:
        raise ValueError(f"n = {n} steps, but the model has only {len(u)} noise levels in "
                         f"[{lo:g}, {hi:g}]")
    index = (torch.arange(n, dtype=torch.float64) * ((len(u) - 1) / max(n - 1, 1))).round()
    return _append_zero(u[index.long()].to(device=device, dtype=dtype))


SCHEDULES = NameRegistry("schedule", {
    "karras": karras, "exponential": exponential, "polyexponential": polyexponential, "vp": vp,
    "discrete": discrete,
}, common=("n", "sigma_min", "sigma_max", "device", "dtype"))


def schedule_options(name):
    """The options schedule `name` takes beyond (n, sigma_min, sigma_max, device, dtype)."""
    return SCHEDULES.options(name)
