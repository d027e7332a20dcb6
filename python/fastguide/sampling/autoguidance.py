"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
guide a model D₁ with a weaker version D₀ of itself (smaller, or trained for less long), on the
same condition,

    D_w(x; σ, c) = D₁(x; σ, c) + w·(D₁(x; σ, c) − D₀(x; σ, c)),

the paper's w' = 1 + w. Like classifier-free guidance it is affine in the networks' outputs, so
it is written for ε-networks (model(x, t, **kwargs)) and σ-denoisers alike; both networks must
model the same process (same schedule and timestep convention). w may be a GuidanceScale
(schedule, interval), and the wrapper nests with ClassifierFreeGuidance either way round.
"""
import torch

from .guidance_scale import as_guidance_scale, guided_combine

__all__ = ["AutoGuidance"]


class AutoGuidance(torch.nn.Module):
    def __init__(self, model, weak_model, guidance_scale, sigma_of=None):
        super().__init__()
        if weak_model is None:
            raise ValueError("autoguidance needs a weak model")
        self.model = model
        self.weak_model = weak_model
        self.scale = as_guidance_scale(guidance_scale)
        self.sigma_of = sigma_of

    def round_sigma(self, sigma):
        inner = getattr(self.model, "round_sigma", None)
        return inner(sigma) if inner is not None else torch.as_tensor(sigma)

    def forward(self, x, s, **kwargs):
        strong = self.model(x, s, **kwargs)
        w = self.scale.scale
        if not self.scale.is_constant:
            sb = torch.as_tensor(s, device=x.device).reshape(-1).expand(x.shape[0])
            w = self.scale(self.sigma_of(sb) if self.sigma_of is not None else sb)
        if (self.scale.is_constant and w == 0) or self.scale.off(w):
            return strong  # no guidance here: the weak model is not run
        weak = self.weak_model(x, s, **kwargs)
        if weak.shape[:1] != strong.shape[:1] or weak.shape[2:] != strong.shape[2:]:
            raise ValueError(f"the weak model's output has shape {list(weak.shape)}, the model's "
                             f"{list(strong.shape)}")
        return guided_combine(strong, weak, w, x.shape[1])
