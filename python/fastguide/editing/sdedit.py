"""img2img, SDEdit (Meng et al. 2022): noise the input part of the way, then let the sampler
denoise it. The strength s ∈ [0, 1] says how far:

    the sampler runs its last n = round(s·N) steps (of N), from position n − 1, where the input
    is noised by q(x_{n−1} | x₀) (ddpm / ddim: t₀ ≈ s·T on the even respacing; σ-samplers:
    σ₀ = the schedule's σ of that step).

s = 0 runs no step and returns the input; s = 1 starts from the seed's noise alone, exactly as
plain sampling does (its x_T carries no trace of the input, as N(0, I) is the prior the
sampler assumes), so it equals `fastguide sample` with the same seed and label. In between,
the noise is the same draw ε scaled to the start level, so neighbouring strengths give
related images. Every sampler and every kind of guidance works.
"""
import math

from ..pipeline.guided import OptionError
from ..sampling import StackedRandomGenerator
from .core import alpha_bar, num_positions, run_down, sigma_at

__all__ = ["img2img_steps", "img2img"]


def img2img_steps(gs, strength):
    """n, the sampler steps that strength takes (0..N)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            0.0 <= strength <= 1.0):
        raise OptionError("strength", f"must be a number in [0, 1], got {strength!r}")
    n = num_positions(gs)
    return min(n, int(math.floor(strength * n + 0.5)))


def img2img(gs, x0, strength, seeds, kwargs, on_step=None):
    """Edited images in [−1, 1]: x0 [B, C, H, W] in [−1, 1], one image per seed."""
    steps = img2img_steps(gs, strength)
    if steps == 0:
        return x0.clone()
    rng = StackedRandomGenerator(seeds, x0.device)
    eps = rng.randn(x0.shape, device=x0.device)  # plain sampling's first draw
    start = steps - 1
    if steps == num_positions(gs):
        x = eps if gs.discrete else eps * gs.sigmas[0].to(eps.dtype)
    elif gs.discrete:
        a = alpha_bar(gs, start)
        x = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    else:
        x = x0 + sigma_at(gs, start) * eps
    return run_down(gs, x, start, kwargs, rng, on_step=on_step)
