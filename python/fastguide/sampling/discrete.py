"""DDPM and DDIM on the discrete process, with ADM's interface (p_sample, ddim_sample and the
loops). `diffusion` is a fastguide.diffusion.GaussianDiffusion (possibly respaced); t are its
indices, and the model and cond_fn see diffusion.model_timesteps(t).

Classifier guidance follows ADM: DDPM shifts the mean by Σ·∇ (condition_mean), DDIM shifts the
score, ε' = ε − √(1 − ᾱ)·∇ (condition_score); cond_fn returns the already-scaled gradient.

randn_like replaces torch.randn_like for every draw (per-image generators, or recorded noise).
Both samplers draw one noise tensor per step, also at t = 0 and for DDIM with η = 0, so that a
given torch seed gives the same images as ADM.

fused=None (the default) runs each step as one fused kernel (fused.py) whenever the process
allows it, fused=False keeps the pure-PyTorch path, and fused=True insists. cuda_graph=True
captures the network call plus the fused step in a CUDA graph (fixed shapes, no cond_fn).
"""
import torch

from ..diffusion.gaussian import _check_timesteps
from . import steps
from .fused import GraphedStep, fused_step, fused_supported
from .progress import sampling_steps

__all__ = ["p_sample", "ddim_sample", "ddim_reverse_sample", "p_sample_loop",
           "p_sample_loop_progressive", "ddim_sample_loop", "ddim_sample_loop_progressive"]


def _nonzero_mask(t, x):
    return (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _use_fused(fused, diffusion, x, denoised_fn):
    why = fused_supported(diffusion, x, denoised_fn)
    if fused and why is not None:
        raise ValueError(f"the fused step does not support {why}; pass fused=False")
    return why is None if fused is None else bool(fused)


def p_sample(diffusion, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
             model_kwargs=None, randn_like=None, fused=None):
    """One ancestral step x_t → x_{t−1}. Returns {'sample', 'pred_xstart'}."""
    if _use_fused(fused, diffusion, x, denoised_fn):
        _check_timesteps(x, t)
        return fused_step("ddpm", diffusion, model, x, t, randn_like or torch.randn_like,
                          clip_denoised, cond_fn, model_kwargs)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                    denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    noise = (randn_like or torch.randn_like)(x)
    mean = out["mean"]
    if cond_fn is not None:
        mean = diffusion.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
    sample = steps.ddpm_step(mean, out["log_variance"], noise, _nonzero_mask(t, x))
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def ddim_sample(diffusion, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                model_kwargs=None, eta=0.0, randn_like=None, fused=None):
    """One DDIM(η) step x_t → x_{t−1}. Returns {'sample', 'pred_xstart'}."""
    if _use_fused(fused, diffusion, x, denoised_fn):
        _check_timesteps(x, t)
        return fused_step("ddim", diffusion, model, x, t, randn_like or torch.randn_like,
                          clip_denoised, cond_fn, model_kwargs, eta)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                    denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    if cond_fn is not None:
        out = diffusion.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
    # ε consistent with the (clipped) x_0, so that x_{t−1} stays on the DDIM path.
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = diffusion.coef("alphas_cumprod", t, x)
    alpha_bar_prev = diffusion.coef("alphas_cumprod_prev", t, x)
    noise = (randn_like or torch.randn_like)(x)
    sample = steps.ddim_step(out["pred_xstart"], eps, alpha_bar, alpha_bar_prev, eta, noise,
                             _nonzero_mask(t, x))
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def ddim_reverse_sample(diffusion, model, x, t, clip_denoised=True, denoised_fn=None,
                        model_kwargs=None, eta=0.0, cond_fn=None):
    """The deterministic DDIM ODE run forwards, x_t → x_{t+1} (encoding). cond_fn shifts the
    score as ddim_sample does (classifier guidance)."""
    if eta != 0.0:
        raise ValueError("the reverse ODE is only defined for eta = 0")
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                    denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    if cond_fn is not None:
        out = diffusion.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar_next = diffusion.coef("alphas_cumprod_next", t, x)
    sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def _default_device(model):
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _graphed_step(step_fn, diffusion, model, x, step_kwargs):
    """The fused step of step_fn captured in a CUDA graph (see fused.GraphedStep)."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {x.device}")
    if step_kwargs.get("cond_fn") is not None:
        raise ValueError("cuda_graph=True cannot capture cond_fn (classifier guidance needs autograd); "
                         "use classifier-free guidance or cuda_graph=False")
    if step_kwargs.get("fused") is False:
        raise ValueError("cuda_graph=True captures the fused step; it cannot be used with fused=False")
    why = fused_supported(diffusion, x, step_kwargs.get("denoised_fn"))
    if why is not None:
        raise ValueError(f"cuda_graph=True needs the fused step, which does not support {why}")
    kind = "ddpm" if step_fn is p_sample else "ddim"
    kw = step_kwargs

    def step(x, t, noise):
        return fused_step(kind, diffusion, model, x, t, noise, kw["clip_denoised"], None,
                          kw["model_kwargs"], kw.get("eta", 0.0))
    return GraphedStep(step)


def _loop(step_fn, diffusion, model, shape, noise, device, progress, randn_like, step_kwargs,
          cuda_graph=False):
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
    if device is None:
        device = noise.device if noise is not None else _default_device(model)
    device = torch.device(device)
    randn_like = randn_like or torch.randn_like
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {list(noise.shape)}, expected {list(shape)}")
        img = noise.to(device)
    else:
        img = randn_like(torch.empty(*shape, device=device))
    graphed = _graphed_step(step_fn, diffusion, model, img, step_kwargs) if cuda_graph else None
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    for i in sampling_steps(indices, disable=not progress):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        if graphed is not None:
            out = graphed(img, t, randn_like(img))  # the network draws no noise: same order
        else:
            with torch.no_grad():
                out = step_fn(diffusion, model, img, t, randn_like=randn_like, **step_kwargs)
        yield out
        img = out["sample"]


def p_sample_loop_progressive(diffusion, model, shape, noise=None, clip_denoised=True,
                              denoised_fn=None, cond_fn=None, model_kwargs=None, device=None,
                              progress=False, randn_like=None, fused=None, cuda_graph=False):
    """Yield p_sample's output at every step, from t = T−1 down to 0."""
    kwargs = dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                  model_kwargs=model_kwargs, fused=fused)
    yield from _loop(p_sample, diffusion, model, shape, noise, device, progress, randn_like, kwargs,
                     cuda_graph)


def p_sample_loop(diffusion, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                  cond_fn=None, model_kwargs=None, device=None, progress=False, randn_like=None,
                  fused=None, cuda_graph=False):
    final = None
    for final in p_sample_loop_progressive(diffusion, model, shape, noise, clip_denoised,
                                           denoised_fn, cond_fn, model_kwargs, device, progress,
                                           randn_like, fused, cuda_graph):
        pass
    return final["sample"]


def ddim_sample_loop_progressive(diffusion, model, shape, noise=None, clip_denoised=True,
                                 denoised_fn=None, cond_fn=None, model_kwargs=None, device=None,
                                 progress=False, eta=0.0, randn_like=None, fused=None,
                                 cuda_graph=False):
    """Yield ddim_sample's output at every step, from t = T−1 down to 0."""
    kwargs = dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                  model_kwargs=model_kwargs, eta=eta, fused=fused)
    yield from _loop(ddim_sample, diffusion, model, shape, noise, device, progress, randn_like,
                     kwargs, cuda_graph)


def ddim_sample_loop(diffusion, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                     randn_like=None, fused=None, cuda_graph=False):
    final = None
    for final in ddim_sample_loop_progressive(diffusion, model, shape, noise, clip_denoised,
                                              denoised_fn, cond_fn, model_kwargs, device,
                                              progress, eta, randn_like, fused, cuda_graph):
        pass
    return final["sample"]
