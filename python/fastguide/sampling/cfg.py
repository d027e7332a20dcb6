"""Classifier-free guidance (Ho & Salimans 2022): with guidance strength w,

    ε̃(z, c) = (1 + w)·ε(z, c) − w·ε(z)  =  ε(z, c) + w·(ε(z, c) − ε(z))

computed from ONE forward pass of a 2B batch (the conditional and the unconditional halves).
The same formula holds for a denoiser D(x, σ, c), x_0 or v outputs, since they are affine in ε
at fixed x and σ. Works for σ-denoisers and for discrete ε-networks (model(x, t, **kwargs));
with learned-σ outputs (2C channels) only the first C are guided and the variance channels of
the conditional half are kept.

Variants (all optional, all compose with each other and with every sampler):
  * w may depend on σ: a GuidanceScale with a schedule and/or the guidance interval
    [σ_lo, σ_hi] (Kynkäänniemi et al. 2024). For a discrete network, sigma_of maps the timestep
    the network receives to its σ.
  * rescale φ (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
    eq. 15-16): the guided output is brought back to the conditional output's standard
    deviation, x_r = x̃·std(x_c)/std(x̃), then mixed, φ·x_r + (1 − φ)·x̃ (per image, over all
    channels and pixels of the guided channels).
"""
import torch

from .guidance_scale import as_guidance_scale, guided_combine

__all__ = ["ClassifierFreeGuidance", "rescale_guided"]


def rescale_guided(guided, cond, phi):
    """Lin et al.'s rescale: φ·x̃·std(x_c)/std(x̃) + (1 − φ)·x̃, std per image."""
    dims = tuple(range(1, guided.dim()))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1 - phi) * guided


class ClassifierFreeGuidance(torch.nn.Module):
    """Wraps model(x, s, **kwargs) (s = σ or t) into its classifier-free-guided version.

    The unconditional inputs are uncond_kwargs (a dict of tensors with the batch size of the
    conditional ones), or, for label-conditioned models, null_label: y replaced by that class
    index (the "no label" class the model was trained with by label dropout).
    guidance_scale: a number, or a GuidanceScale (schedule / interval; needs sigma_of for a
    discrete network). rescale: Lin et al.'s φ in [0, 1] (0: off).
    """

    def __init__(self, model, guidance_scale, null_label=None, uncond_kwargs=None, rescale=0.0,
                 sigma_of=None):
        super().__init__()
        if (null_label is None) == (uncond_kwargs is None):
            raise ValueError("give exactly one of null_label and uncond_kwargs")
        if not 0.0 <= float(rescale) <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
        self.model = model
        self.scale = as_guidance_scale(guidance_scale)
        self.null_label = null_label
        self.uncond_kwargs = uncond_kwargs
        self.rescale = float(rescale)
        self.sigma_of = sigma_of

    @property
    def guidance_scale(self):
        """The constant w (the fused step kernels read it when fusable)."""
        return self.scale.scale

    @property
    def fusable(self):
        """True when the combine is the plain constant-w formula a step kernel can do."""
        return self.scale.is_constant and self.rescale == 0.0

    def round_sigma(self, sigma):
        inner = getattr(self.model, "round_sigma", None)
        return inner(sigma) if inner is not None else torch.as_tensor(sigma)

    def _uncond(self, cond_kwargs):
        if self.null_label is not None:
            y = cond_kwargs.get("y")
            if y is None:
                raise ValueError("classifier-free guidance with null_label needs class labels y")
            return {**cond_kwargs, "y": torch.full_like(y, self.null_label)}
        if set(self.uncond_kwargs) != set(cond_kwargs):
            raise ValueError(f"conditional kwargs {sorted(cond_kwargs)} and unconditional kwargs "
                             f"{sorted(self.uncond_kwargs)} must have the same keys")
        return self.uncond_kwargs

    def forward_raw(self, x, s, **cond_kwargs):
        """The network's output on the 2B batch: [conditional; unconditional] rows."""
        uncond_kwargs = self._uncond(cond_kwargs)
        b = x.shape[0]
        s = torch.as_tensor(s, device=x.device).reshape(-1).expand(b)
        kwargs = {k: _stack(cond_kwargs[k], uncond_kwargs[k], b, k) for k in cond_kwargs}
        return self.model(torch.cat([x, x]), torch.cat([s, s]), **kwargs)

    def weight(self, s, batch_size, device):
        """w per image: a number when constant, else a [B] tensor from σ(s)."""
        if self.scale.is_constant:
            return self.scale.scale
        s = torch.as_tensor(s, device=device).reshape(-1).expand(batch_size)
        sigma = self.sigma_of(s) if self.sigma_of is not None else s
        return self.scale(sigma)

    def forward(self, x, s, **cond_kwargs):
        b, c = x.shape[:2]
        w = self.weight(s, b, x.device)
        if self.scale.off(w):  # outside the guidance interval: the conditional model alone
            return self.model(x, torch.as_tensor(s, device=x.device).reshape(-1).expand(b),
                              **cond_kwargs)
        out = self.forward_raw(x, s, **cond_kwargs)
        cond, uncond = out[:b], out[b:]
        guided = guided_combine(cond, uncond, w, c)
        if self.rescale:
            guided[:, :c] = rescale_guided(guided[:, :c], cond[:, :c], self.rescale)
        return guided


def _stack(cond, uncond, batch_size, name):
    if not torch.is_tensor(cond) or not torch.is_tensor(uncond):
        raise TypeError(f"kwarg {name!r} must be a tensor on both halves for batched guidance")
    if cond.shape[0] != batch_size or uncond.shape[0] != batch_size:
        raise ValueError(f"kwarg {name!r} must have batch size {batch_size} in both halves")
    return torch.cat([cond, uncond])

