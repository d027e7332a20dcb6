"""Samplers and guidance.

Three interfaces over the same per-step updates (steps.py and the samplers' own files):
  * functional, k-diffusion style, for any denoiser D(x, σ): SAMPLERS[name] (registry.py lists
    them: euler, heun, dpm_2, lms, dpmpp_2m, unipc, dpm_solver_fast, ddim, ddpm, the ancestral
    and SDE samplers, log_snr_ancestral), with σ schedules by name in schedules.SCHEDULES;
  * ADM style on the discrete process: p_sample_loop, ddim_sample_loop (also as methods of
    fastguide.diffusion.create_gaussian_diffusion's object);
  * a diffusers-style scheduler, DiffusionScheduler.
Guidance: classifier guidance (guidance.py) and classifier-free guidance (cfg.py), as wrappers
that compose with each other and with every sampler. Per-image RNG: rng.StackedRandomGenerator.
"""
from . import steps
from . import schedules
from .samplers import (sample_euler, sample_heun, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                       sample_log_snr_ancestral, check_sigmas)
from .ancestral import sample_euler_ancestral
from .dpm_2 import sample_dpm_2, sample_dpm_2_ancestral
from .lms import sample_lms
from .dpm_solver_pp import (sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_dpmpp_2m_sde,
                            sample_dpmpp_3m_sde)
from .dpm_solver import sample_dpm_solver_fast
from .unipc import sample_unipc
from .noise import BrownianTreeNoiseSampler
from .registry import SAMPLERS, sampler_options, sample_dpmpp_2m_sde_heun
from .schedules import SCHEDULES, schedule_options
from .base import UnknownNameError
from .discrete import (p_sample, ddim_sample, ddim_reverse_sample, p_sample_loop,
                       p_sample_loop_progressive, ddim_sample_loop, ddim_sample_loop_progressive)
from .guidance import (frozen, classifier_log_prob_grad, classifier_cond_fn, ADMClassifierGrad,
                       ClassifierGuidedDenoiser, without_labels)
from .cfg import ClassifierFreeGuidance
from .scheduler import DiffusionScheduler, SchedulerOutput
from .rng import StackedRandomGenerator, rank_batches

__all__ = [
    "steps",
    "sample_euler", "sample_heun", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
    "sample_log_snr_ancestral", "check_sigmas", "SAMPLERS", "sampler_options",
    "sample_euler_ancestral", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_lms",
    "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun", "sample_dpmpp_3m_sde", "sample_dpm_solver_fast", "sample_unipc",
    "BrownianTreeNoiseSampler", "schedules", "SCHEDULES", "schedule_options", "UnknownNameError",
    "p_sample", "ddim_sample", "ddim_reverse_sample", "p_sample_loop", "p_sample_loop_progressive",
    "ddim_sample_loop", "ddim_sample_loop_progressive",
    "frozen", "classifier_log_prob_grad", "classifier_cond_fn", "ADMClassifierGrad",
    "ClassifierGuidedDenoiser", "without_labels",
    "ClassifierFreeGuidance",
    "DiffusionScheduler", "SchedulerOutput",
    "StackedRandomGenerator", "rank_batches",
]
