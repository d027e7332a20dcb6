"""Every functional sampler by name, for `--sampler` and for code:

    x = SAMPLERS[name](denoiser, x, sigmas, extra_args=..., callback=..., disable=..., **options)

name                calls/step  order      stochastic  options
euler                   1       1          churn       S_churn S_min S_max S_noise randn_like
heun                    2       2          churn       S_churn S_min S_max S_noise randn_like
dpm_2                   2       2          churn       S_churn S_min S_max S_noise randn_like
lms                     1       order      no          order (1–4)
dpmpp_2m                1       2          no          —
unipc                   1       order + 1  no          order (1–3), variant (bh2, bh1)
dpm_solver_fast   N in all      3          no          — (its own steps, uniform in log σ)
ddim                    1       1          eta > 0     eta randn_like
ddpm                    1       —          yes         randn_like
euler_ancestral         1       1 (eta=0)  eta > 0     eta S_noise noise_sampler randn_like
dpm_2_ancestral         2       2 (eta=0)  eta > 0     eta S_noise noise_sampler randn_like
dpmpp_2s_ancestral      2       2 (eta=0)  eta > 0     eta S_noise noise_sampler randn_like
dpmpp_sde               2       2 (eta=0)  eta > 0     eta S_noise r noise_sampler randn_like
dpmpp_2m_sde            1       2 (eta=0)  eta > 0     eta S_noise solver_type noise_sampler
                                                       randn_like
dpmpp_2m_sde_heun       1       2 (eta=0)  eta > 0     as dpmpp_2m_sde, solver_type="heun"
dpmpp_3m_sde            1       3 (eta=0)  eta > 0     eta S_noise noise_sampler randn_like
log_snr_ancestral       1       —          yes         v randn_like

Per-seed, batch-independent noise: pass randn_like=StackedRandomGenerator(seeds).randn_like.
The SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) draw their noise from a per-image
Brownian tree (noise.py) seeded from randn_like. sampler_options(name) lists the options.
"""
import torch

from .ancestral import sample_euler_ancestral
from .base import NameRegistry
from .dpm_2 import sample_dpm_2, sample_dpm_2_ancestral
from .dpm_solver import sample_dpm_solver_fast
from .dpm_solver_pp import (sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde,
                            sample_dpmpp_sde)
from .lms import sample_lms
from .samplers import (sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_heun,
                       sample_log_snr_ancestral)
from .unipc import sample_unipc

__all__ = ["SAMPLERS", "sampler_options", "sample_dpmpp_2m_sde_heun"]


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(denoiser, x, sigmas, extra_args=None, callback=None, disable=False,
                             eta=1.0, S_noise=1.0, noise_sampler=None, randn_like=None):
    """DPM-Solver++(2M) SDE with solver_type="heun" (see sample_dpmpp_2m_sde).

    Options: eta (>= 0, default 1), S_noise (default 1), noise_sampler or randn_like.
    """
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, extra_args, callback, disable, eta=eta,
                               S_noise=S_noise, solver_type="heun", noise_sampler=noise_sampler,
                               randn_like=randn_like)


SAMPLERS = NameRegistry("sampler", {
    "euler": sample_euler, "heun": sample_heun, "ddim": sample_ddim, "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m, "log_snr_ancestral": sample_log_snr_ancestral,
    "euler_ancestral": sample_euler_ancestral, "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral, "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral, "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde, "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde, "unipc": sample_unipc,
    "dpm_solver_fast": sample_dpm_solver_fast,
}, common=("denoiser", "x", "sigmas", "extra_args", "callback", "disable"))


def sampler_options(name):
    """The keyword options sampler `name` accepts beyond (denoiser, x, sigmas, extra_args,
    callback, disable), in signature order: lets a command line warn about options that do not
    apply. Unknown names raise UnknownNameError (a KeyError and a ValueError)."""
    return SAMPLERS.options(name)
