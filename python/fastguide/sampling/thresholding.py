"""What a sampler does to the network's x₀ prediction before using it.

  static clipping    x₀ ← clamp(x₀, −1, 1): guided-diffusion's clip_denoised, right for
                     pixel-space models whose data lie in [−1, 1].
  dynamic thresholding (Saharia et al. 2022, Imagen §2.3): per image, s = the p-th percentile
                     of |x₀|; if s > 1, x₀ ← clamp(x₀, −s, s)/s. Saturated pixels are pushed
                     inwards instead of piling up at ±1, which matters at high guidance scales.

Both are x₀ → x₀ maps. The discrete samplers take them as denoised_fn (applied before their
own clipping); σ-samplers wrap the denoiser in ThresholdedDenoiser.
"""
import torch

__all__ = ["static_clip", "DynamicThreshold", "ThresholdedDenoiser"]


def static_clip(x0):
    return x0.clamp(-1, 1)


class DynamicThreshold:
    """x₀ → x₀ with Imagen's dynamic thresholding at percentile p ∈ (0, 1]."""

    def __init__(self, percentile=0.995):
        p = float(percentile)
        if not 0 < p <= 1:
            raise ValueError(f"dynamic threshold percentile must be in (0, 1], got {percentile}")
        self.percentile = p

    def __call__(self, x0):
        flat = x0.detach().abs().reshape(x0.shape[0], -1).float()
        s = torch.quantile(flat, self.percentile, dim=1).clamp_min(1.0)
        s = s.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    def __repr__(self):
        return f"DynamicThreshold({self.percentile:g})"


class ThresholdedDenoiser(torch.nn.Module):
    """D'(x, σ) = fn(D(x, σ)) for a σ-denoiser (fn: static_clip, a DynamicThreshold, ...)."""

    def __init__(self, denoiser, fn):
        super().__init__()
        self.denoiser = denoiser
        self.fn = fn

    def round_sigma(self, sigma):
        inner = getattr(self.denoiser, "round_sigma", None)
        return inner(sigma) if inner is not None else torch.as_tensor(sigma)

    def forward(self, x, sigma, **kwargs):
        return self.fn(self.denoiser(x, sigma, **kwargs))
