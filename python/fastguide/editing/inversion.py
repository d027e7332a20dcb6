"""DDIM inversion: run the deterministic sampler's ODE backwards, image -> noise, so that
sampling the result with the same steps gives the image back (up to the discretisation).

    ddim_reverse_sample_loop   DDIM's update run upwards, step by step, from x₀ to position
                               N−1 of the respaced process, where ddim_sample_loop starts
                               (Song et al. 2021, §4.3; guided-diffusion's ddim_reverse_sample
                               for every step but the first)
    probability_flow_inversion the probability-flow ODE dx/dσ = (x − D(x, σ))/σ integrated
                               upwards over a σ schedule with Euler or Heun steps (EDM's view)

Each of the N steps undoes one step of the sampler, evaluating the network at the lower noise
level of the step where sampling evaluates it at the upper one; that mismatch is the whole
reconstruction error, it shrinks as N grows (first order for ddim / euler, second for heun),
and where ε does not change along the path the round trip is exact. The first step lifts the
clean image to the sampler's last noisy position, x = √ᾱ₀·x₀ + √(1 − ᾱ₀)·ε(x₀, t₀) (σ-space:
x = x₀ + σ_min·ε), the inverse of the sampler's last step, which lands on its x₀ prediction.
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
    """Yield each step's output (the first lifts the clean x to position 0, the others are
    ddim_reverse_sample from position i to i + 1), N in all."""
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a batch of images [B, C, ...], got {type(x).__name__}")
    for i in sampling_steps(range(-1, diffusion.num_timesteps - 1), disable=not progress):
        t = torch.full((x.shape[0],), max(i, 0), device=x.device, dtype=torch.long)
        with torch.no_grad():
            if i < 0:
                out = _lift_clean(diffusion, model, x, t, cond_fn, model_kwargs)
            else:
                out = ddim_reverse_sample(diffusion, model, x, t, clip_denoised=clip_denoised,
                                          denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                                          cond_fn=cond_fn)
        yield out
        x = out["sample"]


def _lift_clean(diffusion, model, x, t, cond_fn, model_kwargs):
    """Clean x -> position 0: √ᾱ₀·x + √(1 − ᾱ₀)·ε(x, t₀), the inverse of DDIM's last step
    x̂₀ = (x_0 − √(1 − ᾱ₀)·ε)/√ᾱ₀ when ε is the same at both ends."""
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs=model_kwargs)
    if cond_fn is not None:
        out = diffusion.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = diffusion.coef("alphas_cumprod", t, x)
    return {"sample": alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps, "pred_xstart": x}


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
    """Integrate dx/dσ = (x − D(x, σ))/σ upwards from the clean x (σ = 0) over the nonzero σ of
    sigmas (a sampling schedule: decreasing, usually ending in 0) to its largest. Returns x at
    σ_max, where sample_euler / sample_heun over the same sigmas start. The first step, from
    σ = 0 to σ_min, is an Euler step with the slope at (x, σ_min), as the sampler's last step
    is Euler; the others are `method` steps."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    levels = [s for s in torch.as_tensor(sigmas, dtype=torch.float64).tolist() if s > 0]
    if not levels or any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError("sigmas must be strictly decreasing with at least one level above 0")
    levels = levels[::-1]
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    with torch.no_grad():
        for i in sampling_steps(len(levels), disable):
            sigma_next = levels[i]
            sigma = levels[i - 1] if i else sigma_next  # the first slope: at σ_min
            denoised = denoiser(x, sigma * ones, **extra_args)
            x_next = x + (sigma_next - (sigma if i else 0.0)) * (x - denoised) / sigma
            if method == "heun" and i:
                denoised_next = denoiser(x_next, sigma_next * ones, **extra_args)
                x_next = steps.heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma_next, "denoised": denoised})
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
    """Steps of one inversion (a progress bar's total): one per sampling step."""
    return num_positions(gs)


def decode(gs, latents, seeds, kwargs, on_step=None):
    """Sample back from latents (invert's output): plain sampling from given noise."""
    rng = StackedRandomGenerator(seeds, latents.device)
    return run_down(gs, latents, num_positions(gs) - 1, kwargs, rng, on_step=on_step)
