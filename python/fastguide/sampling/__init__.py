"""Samplers and guidance.

Three interfaces over the same per-step updates (steps.py):
  * functional, k-diffusion style, for any denoiser D(x, σ): sample_heun, sample_euler,
    sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_log_snr_ancestral;
  * ADM style on the discrete process: p_sample_loop, ddim_sample_loop (also as methods of
    fastguide.diffusion.create_gaussian_diffusion's object);
  * a diffusers-style scheduler, DiffusionScheduler.
Guidance: classifier guidance (guidance.py) and classifier-free guidance (cfg.py), as wrappers
that compose with each other and with every sampler. Per-image RNG: rng.StackedRandomGenerator.
"""
from . import steps
from .samplers import (sample_euler, sample_heun, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                       sample_log_snr_ancestral, check_sigmas, SAMPLERS)
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
    "sample_log_snr_ancestral", "check_sigmas", "SAMPLERS",
    "p_sample", "ddim_sample", "ddim_reverse_sample", "p_sample_loop", "p_sample_loop_progressive",
    "ddim_sample_loop", "ddim_sample_loop_progressive",
    "frozen", "classifier_log_prob_grad", "classifier_cond_fn", "ADMClassifierGrad",
    "ClassifierGuidedDenoiser", "without_labels",
    "ClassifierFreeGuidance",
    "DiffusionScheduler", "SchedulerOutput",
    "StackedRandomGenerator", "rank_batches",
]
