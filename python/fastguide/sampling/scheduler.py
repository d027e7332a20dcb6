"""A diffusers-style scheduler over fastguide's discrete process:

    scheduler = DiffusionScheduler(diffusion, sampler="ddim", eta=0.0)
    scheduler.set_timesteps(50)
    x = torch.randn(shape) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t, y=labels)
        x = scheduler.step(out, t, x).prev_sample

timesteps are the network's own (original) timesteps, spaced with ADM's rounding. The model
output is whatever the process's ModelMeanType says (ε by default), with learned-variance
channels where its ModelVarType has them. Samplers: "ddpm", "ddim" (η) and "dpmpp_2m"
(DPM-Solver++(2M), run on x/√ᾱ and mapped back).
"""
from dataclasses import dataclass

import torch

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.respace import space_timesteps
from . import steps

__all__ = ["DiffusionScheduler", "SchedulerOutput"]


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DiffusionScheduler:
    init_noise_sigma = 1.0
    order = 1
    SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")

    def __init__(self, diffusion, sampler="ddim", eta=0.0, clip_sample=True):
        if diffusion.num_timesteps != diffusion.original_num_steps:
            raise ValueError("give the full (not respaced) process; set_timesteps respaces it")
        if sampler not in self.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {self.SAMPLERS}")
        self.base = diffusion
        self.sampler = sampler
        self.eta = float(eta)
        self.clip_sample = clip_sample
        self.num_train_timesteps = diffusion.num_timesteps
        self.set_timesteps(diffusion.num_timesteps)

    def set_timesteps(self, num_inference_steps=None, device=None, timestep_respacing=None):
        """Respace to num_inference_steps steps, or by an ADM respacing string ("ddim50", ...)."""
        spec = timestep_respacing if timestep_respacing is not None else str(num_inference_steps)
        kept = space_timesteps(self.num_train_timesteps, spec)
        self.process = GaussianDiffusion(
            betas=self.base.betas, use_timesteps=kept, model_mean_type=self.base.model_mean_type,
            model_var_type=self.base.model_var_type, loss_type=self.base.loss_type)
        self.num_inference_steps = len(kept)
        self.timesteps = torch.tensor(kept[::-1], dtype=torch.long, device=device)
        index = torch.full((self.num_train_timesteps,), -1, dtype=torch.long)
        index[torch.tensor(kept)] = torch.arange(len(kept))
        self._index_of_timestep = index
        self._denoised_prev = None
        self._sigma_prev = None

    def scale_model_input(self, sample, timestep=None):
        return sample  # the process is variance preserving: the network takes x_t as it is

    def _indices(self, timestep, sample):
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return self._index_of_timestep.to(sample.device)[t]

    def _noise(self, sample, generator, noise):
        if noise is not None:
            return noise
        if hasattr(generator, "randn_like"):
            return generator.randn_like(sample)
        return torch.randn(sample.shape, generator=generator, device=sample.device,
                           dtype=sample.dtype)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, noise=None,
             eta=None):
        """One step from `timestep` to the next kept one. Returns SchedulerOutput (or a tuple)."""
        p = self.process
        t = self._indices(timestep, sample)
        out = p.p_mean_variance_from_output(model_output, sample, t, clip_denoised=self.clip_sample)
        pred_x0 = out["pred_xstart"]
        nonzero = (t != 0).to(sample.dtype).reshape(-1, *([1] * (sample.dim() - 1)))
        if self.sampler == "ddpm":
            prev = steps.ddpm_step(out["mean"], out["log_variance"],
                                   self._noise(sample, generator, noise), nonzero)
        elif self.sampler == "ddim":
            eta = self.eta if eta is None else eta
            eps = p.predict_eps_from_xstart(sample, t, pred_x0)
            noise = self._noise(sample, generator, noise) if eta != 0 else torch.zeros_like(sample)
            prev = steps.ddim_step(pred_x0, eps, p.coef("alphas_cumprod", t, sample),
                                   p.coef("alphas_cumprod_prev", t, sample), eta, noise, nonzero)
        else:
            prev = self._dpmpp_2m(sample, pred_x0, t)
        if not return_dict:
            return prev, pred_x0
        return SchedulerOutput(prev_sample=prev, pred_original_sample=pred_x0)

    def _dpmpp_2m(self, sample, pred_x0, t):
        # x/√ᾱ = x_0 + σ·ε with σ = √(1/ᾱ − 1); step in σ, then scale back by √ᾱ_prev.
        p = self.process
        sigma = p.coef("sqrt_recipm1_alphas_cumprod", t, sample)
        abar_prev = p.coef("alphas_cumprod_prev", t, sample)
        sigma_next = (1 / abar_prev - 1).clamp(min=0).sqrt()
        x = sample * p.coef("sqrt_recip_alphas_cumprod", t, sample)
        first = steps.dpmpp_2m_step(x, pred_x0, sigma, sigma_next)
        if self._denoised_prev is None:
            x_next = first
        else:
            second = steps.dpmpp_2m_step(x, pred_x0, sigma, sigma_next, self._denoised_prev,
                                         self._sigma_prev)
            # First order on the step to σ = 0 (the 2nd-order weights are undefined there).
            x_next = torch.where(sigma_next > 0, second, first)
        x_next = torch.where(sigma_next > 0, x_next, pred_x0)
        self._denoised_prev, self._sigma_prev = pred_x0, sigma
        return x_next * abar_prev.sqrt()

    def add_noise(self, original_samples, noise, timesteps):
        """q_sample at the network's (original) timesteps."""
        return self.base.q_sample(original_samples, timesteps.to(original_samples.device), noise)

    def __len__(self):
        return self.num_train_timesteps
