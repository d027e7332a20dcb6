"""Inpainting with an unconditionally trained (or class-conditional) diffusion model: only the
masked pixels are generated, the others are known.

    replace  the baseline: after every step the known pixels are replaced by a fresh draw of
             q(x_{t−1} | x₀) at the new noise level (Song et al. 2021's "replacement", the
             start of RePaint), so the network always sees a consistent known region;
    repaint  the same steps on RePaint's resampling schedule (repaint.py): every stretch of
             jump_length steps is walked jump_count + 1 times, renoising with
             q(x_{t+j} | x_t) in between, so that the generated pixels harmonise with the
             known ones (Lugmayr et al. 2022).

Every sampler works: ddpm / ddim step by step; a σ-sampler runs over each descending stretch
of the schedule with a denoiser that replaces the known region of its input by a fresh
q(x_σ | x₀) before every network call (for first-order samplers this is the same as replacing
after each step; multistep and second-order samplers keep their history inside a stretch).
Guidance (CFG, classifier, autoguidance) is the GuidedSampler's, unchanged. The last step
sets the known pixels to the input exactly.
"""
import torch

from ..pipeline.guided import OptionError
from ..sampling import StackedRandomGenerator
from .core import EditNoise, num_positions, q_sample_at, renoise, run_down
from .repaint import check_jumps, default_jumps, repaint_schedule, runs

__all__ = ["METHODS", "inpaint_schedule", "inpaint", "KnownRegionDenoiser"]

METHODS = ("repaint", "replace")


def inpaint_schedule(gs, method="repaint", jump_length=None, jump_count=None):
    """(the positions an inpainting run visits (repaint.py), notes): jump settings left None
    take RePaint's defaults (default_jumps); given ones must fit the sampler's steps."""
    if method not in METHODS:
        raise OptionError("method", f"must be one of {list(METHODS)}, got {method!r}")
    n = num_positions(gs)
    if method == "replace":
        given = [k for k, v in (("jump_length", jump_length), ("jump_count", jump_count))
                 if v is not None]
        notes = [f"{k} does not apply to method replace; ignored" for k in given]
        return list(range(n - 1, -2, -1)), notes
    jump_length, jump_count, note = default_jumps(n, jump_length, jump_count)
    check_jumps(n, jump_length, jump_count)
    return repaint_schedule(n, jump_length, jump_count), [note] if note else []


class KnownRegionDenoiser(torch.nn.Module):
    """D'(x, σ): the known pixels of x replaced by x₀ + σ·z (z fresh) before D sees it, and D's
    output there replaced by x₀, so that a σ-sampler's own state follows the known region."""

    def __init__(self, denoiser, x0, inpaint, noise):
        super().__init__()
        self.denoiser, self.x0, self.inpaint, self.noise = denoiser, x0, inpaint, noise
        self.round_sigma = getattr(denoiser, "round_sigma", None)

    def forward(self, x, sigma, **kwargs):
        column = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(
            -1, *([1] * (x.dim() - 1)))
        x = torch.where(self.inpaint, x, self.x0 + column * self.noise.randn_like(x))
        return torch.where(self.inpaint, self.denoiser(x, sigma, **kwargs), self.x0)


def inpaint(gs, x0, inpaint_mask, seeds, kwargs, schedule, on_step=None):
    """Inpainted images in [−1, 1]: x0 [B, C, H, W] in [−1, 1] with inpaint_mask [B, 1, H, W]
    (True where pixels are generated), one image per seed, along the schedule."""
    device = x0.device
    mask = inpaint_mask.to(device)
    rng = StackedRandomGenerator(seeds, device)
    noise = EditNoise(seeds, device)
    x = rng.randn(x0.shape, device=device)  # the first draw of plain sampling
    if not gs.discrete:
        x = x * gs.sigmas[0].to(torch.float32)
    x = torch.where(mask, x, q_sample_at(gs, x0, schedule[0], noise))
    denoiser = None if gs.discrete else KnownRegionDenoiser(gs.denoiser(), x0, mask, noise)
    for start, end in runs(schedule):
        if end > start:
            x = renoise(gs, x, start, end, noise)
            continue
        # ddpm / ddim replace after every step; a σ-sampler runs the whole stretch.
        stops = range(start - 1, end - 1, -1) if gs.discrete else [end]
        for stop in stops:
            x = run_down(gs, x, start, kwargs, rng, stop, on_step, denoiser)
            x = torch.where(mask, x, q_sample_at(gs, x0, stop, noise))
            start = stop
    return x
