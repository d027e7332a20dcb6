"""DDIM inversion: run the deterministic sampler's ODE backwards, image -> noise, so that
sampling the result with the same steps gives the image back (up to the discretisation).

    ddim_reverse_sample_loop   guided-diffusion's ddim_reverse_sample step, looped: from x₀ up
                               the respaced process to position N−1, where ddim_sample_loop
                               starts (Song et al. 2021, §4.3; Dhariwal & Nichol 2021, App. F)
    probability_flow_inversion the probability-flow ODE dx/dσ = (x − D(x, σ))/σ integrated
                               upwards over a σ schedule with Euler or Heun steps (EDM's view)

Both start by treating the clean image as the sampler's last noisy position (ᾱ₀ ≈ 1, σ_min ≈ 0;
the sampler's last step, which lands on its own x₀ prediction, has no exact inverse), then
take N − 1 steps up, each evaluating the network at the lower level of its step, as DDIM
inversion does. Sampling back takes N steps, evaluating at the upper level: the mismatch is the
reconstruction error, and it shrinks as N grows (first order for ddim / euler, second for heun).
"""
import torch

from ..pipeline.guided import OptionError
from ..sampling import StackedRandomGenerator, ddim_reverse_sample, steps
from ..sampling.progress import sampling_steps
from .core import num_positions, run_down

__all__ = ["ddim_reverse_sample_loop", "ddim_reverse_sample_loop_progressive",
           "probability_flow_inversion", "INVERTIBLE", "check_invertible", "invert",
           "inversion_steps", "decode"]

INVERTIBLE = ("ddim", "euler", "heun")


def ddim_reverse_sample_loop_progressive(diffusion, model, x, clip_denoised=True,
                                         denoised_fn=None, cond_fn=None, model_kwargs=None,
                                         progress=False):
    """Yield ddim_reverse_sample's output at every step, from position 0 up to N−1."""
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a batch of images [B, C, ...], got {type(x).__name__}")
    indices = range(diffusion.num_timesteps - 1)
    for i in sampling_steps(indices, disable=not progress):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = ddim_reverse_sample(diffusion, model, x, t, clip_denoised=clip_denoised,
                                      denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                                      cond_fn=cond_fn)
        yield out
        x = out["sample"]


def ddim_reverse_sample_loop(diffusion, model, x, clip_denoised=True, denoised_fn=None,
                             cond_fn=None, model_kwargs=None, progress=False):
    """x₀ -> x_{N−1}, the noise from which ddim_sample_loop (η = 0, same diffusion) returns
    approximately x₀. diffusion: the respaced process of the sampler to be inverted."""
    for out in ddim_reverse_sample_loop_progressive(diffusion, model, x, clip_denoised,
                                                    denoised_fn, cond_fn, model_kwargs,
                                                    progress):
        x = out["sample"]
    return x


def probability_flow_inversion(denoiser, x, sigmas, method="euler", extra_args=None,
                               callback=None, disable=True):
    """Integrate dx/dσ = (x − D(x, σ))/σ upwards from x at the smallest nonzero σ of sigmas
    (a sampling schedule: decreasing, usually ending in 0) to its largest. Returns x at σ_max,
    the start of sample_euler / sample_heun over the same sigmas."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    levels = [s for s in torch.as_tensor(sigmas, dtype=torch.float64).tolist() if s > 0]
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError("sigmas must be strictly decreasing")
    levels = levels[::-1]
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    with torch.no_grad():
        for i in sampling_steps(len(levels) - 1, disable):
            sigma, sigma_next = levels[i], levels[i + 1]
            denoised = denoiser(x, sigma * ones, **extra_args)
            x_next = steps.euler_step(x, denoised, sigma, sigma_next)
            if method == "heun":
                denoised_next = denoiser(x_next, sigma_next * ones, **extra_args)
                x_next = steps.heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
            x = x_next
    return x


def check_invertible(gs):
    """OptionError unless gs's sampler is a deterministic ODE sampler this module inverts."""
    if gs.sampler not in INVERTIBLE:
        raise OptionError("sampler", f"{gs.sampler} cannot be inverted: inversion runs a "
                                     "deterministic ODE sampler backwards; use ddim (guided-"
                                     "diffusion's ddim_reverse_sample), euler or heun (the "
                                     "probability-flow ODE)")
    stochastic = {k: v for k, v in gs.sampler_options.items()
                  if k in ("eta", "S_churn", "s_churn") and v}
    if stochastic:
        name, value = next(iter(stochastic.items()))
        raise OptionError(name, f"must be 0 for inversion (it makes --sampler {gs.sampler} "
                                f"stochastic), got {value:g}")


def invert(gs, x0, kwargs, on_step=None):
    """x₀ in [−1, 1] -> the sampler's starting noise (discrete scale for ddim, EDM's x₀ + σ·ε
    for euler / heun); sampling it back (decode) gives approximately x₀."""
    check_invertible(gs)
    callback = (lambda info: on_step()) if on_step is not None else None
    if gs.discrete:
        x = x0
        for out in ddim_reverse_sample_loop_progressive(gs.process, gs.net, x0, gs.clip_denoised,
                                                        gs.threshold, gs.cond_fn(), kwargs):
            x = out["sample"]
            if on_step is not None:
                on_step()
        return x
    return probability_flow_inversion(gs.denoiser(), x0, gs.sigmas, gs.sampler, kwargs,
                                      callback)


def inversion_steps(gs):
    """Network steps of one inversion (a progress bar's total)."""
    return num_positions(gs) - 1


def decode(gs, latents, seeds, kwargs, on_step=None):
    """Sample back from latents (invert's output): plain sampling from given noise."""
    rng = StackedRandomGenerator(seeds, latents.device)
    return run_down(gs, latents, num_positions(gs) - 1, kwargs, rng, on_step=on_step)
