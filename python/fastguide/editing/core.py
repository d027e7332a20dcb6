"""What every edit shares: the sampler's single steps, the noise levels of its positions, and
a second per-seed noise stream for the noise an edit adds.

Positions: a sampler of N steps takes the image through positions N−1, ..., 0 and then −1, the
clean image. For ddpm / ddim position k is the respaced process's index k (x = √ᾱ_k·x₀ +
√(1 − ᾱ_k)·ε); for the σ-samplers it is σ = sigmas[N−1−k] of their schedule, in EDM's scale
x = x₀ + σ·ε (sigmas ends in 0, the clean image).

Noise: the sampler's own draws come from the seeds' generators exactly as in plain sampling
(StackedRandomGenerator), so an edit that adds nothing (strength 1, an empty mask) gives the
same image as `fastguide sample`; the noise an edit adds (the known region's q-samples,
RePaint's jumps) comes from EditNoise, a second generator per seed. Both depend only on the
seed, so no result depends on the batch size.
"""
import torch

from ..sampling import StackedRandomGenerator, ddim_sample, p_sample

__all__ = ["EditNoise", "num_positions", "alpha_bar", "sigma_at", "discrete_step", "q_sample_at",
           "renoise", "run_down", "model_kwargs"]

_EDIT_STREAM = 1 << 32  # seeds of the edit's generators: above every 32-bit sampling seed


class EditNoise(StackedRandomGenerator):
    """Per-seed generators disjoint from the sampling ones (seed s -> 2³² + s)."""

    def __init__(self, seeds, device="cpu"):
        super().__init__(seeds, device)
        self.generators = [torch.Generator(self.device).manual_seed(_EDIT_STREAM + s)
                           for s in self.seeds]


def num_positions(gs):
    """N, the sampler's steps (the σ schedule may have merged repeated levels)."""
    return gs.process.num_timesteps if gs.discrete else len(gs.sigmas) - 1


def alpha_bar(gs, k):
    """ᾱ at position k of a discrete sampler (1 for the clean image, k = −1)."""
    return 1.0 if k < 0 else float(gs.process.alphas_cumprod[k])


def sigma_at(gs, k):
    """σ at position k of a σ-sampler (0 for the clean image)."""
    return float(gs.sigmas[num_positions(gs) - 1 - k])


def q_sample_at(gs, x0, k, noise):
    """A draw of q(x_k | x₀) at position k in the sampler's scale; exactly x₀ at k = −1."""
    if k < 0:
        return x0
    if gs.discrete:
        a = alpha_bar(gs, k)
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise.randn_like(x0)
    return x0 + sigma_at(gs, k) * noise.randn_like(x0)


def renoise(gs, x, k_from, k_to, noise):
    """A draw of q(x_{k_to} | x_{k_from}) for k_to > k_from: the forward process continued."""
    if gs.discrete:
        ratio = alpha_bar(gs, k_to) / alpha_bar(gs, k_from)
        return ratio ** 0.5 * x + (1 - ratio) ** 0.5 * noise.randn_like(x)
    lo, hi = sigma_at(gs, k_from), sigma_at(gs, k_to)
    return x + (hi ** 2 - lo ** 2) ** 0.5 * noise.randn_like(x)


def discrete_step(gs, x, k, kwargs, rng, cond_fn):
    """One step of ddpm / ddim from position k to k − 1, as the plain loops take it."""
    t = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
    step = ddim_sample if gs.sampler == "ddim" else p_sample
    with torch.no_grad():  # classifier guidance enables autograd inside cond_fn
        out = step(gs.process, gs.net, x, t, clip_denoised=gs.clip_denoised,
                   denoised_fn=gs.threshold, cond_fn=cond_fn, model_kwargs=kwargs,
                   randn_like=rng.randn_like, **gs.sampler_options)
    return out["sample"]


def run_down(gs, x, start, kwargs, rng, end=-1, on_step=None, denoiser=None):
    """The sampler's steps from position start down to end (−1: the clean image), as plain
    sampling takes them; denoiser replaces the σ-samplers' guided denoiser (inpainting's)."""
    if start <= end:
        return x
    if gs.discrete:
        cond_fn = gs.cond_fn()
        for k in range(start, end, -1):
            x = discrete_step(gs, x, k, kwargs, rng, cond_fn)
            if on_step is not None:
                on_step()
        return x
    n = num_positions(gs)
    x = gs.sigma_steps(x, gs.sigmas[n - 1 - start:n - end], kwargs, rng, on_step, denoiser)
    return x.clamp(-1, 1) if end == -1 and gs.clip_denoised else x


def model_kwargs(labels, device, extra=None):
    kwargs = dict(extra or {})
    if labels is not None:
        kwargs["y"] = torch.as_tensor(labels, dtype=torch.long, device=device)
    return kwargs
