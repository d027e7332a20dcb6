"""Classifier-free guidance (Ho & Salimans 2022): with guidance strength w,

    ε̃(z, c) = (1 + w)·ε(z, c) − w·ε(z)

computed from ONE forward pass of a 2B batch (the conditional and the unconditional halves).
The same formula holds for a denoiser D(x, σ, c), x_0 or v outputs, since they are affine in ε
at fixed x and σ. Works for σ-denoisers and for discrete ε-networks (model(x, t, **kwargs));
with learned-σ outputs (2C channels) only the first C are guided and the variance channels of
the conditional half are kept.
"""
import torch

__all__ = ["ClassifierFreeGuidance"]


class ClassifierFreeGuidance(torch.nn.Module):
    """Wraps model(x, s, **kwargs) (s = σ or t) into its classifier-free-guided version.

    The unconditional inputs are uncond_kwargs (a dict of tensors with the batch size of the
    conditional ones), or, for label-conditioned models, null_label: y replaced by that class
    index (the "no label" class the model was trained with by label dropout).
    """

    def __init__(self, model, guidance_scale, null_label=None, uncond_kwargs=None):
        super().__init__()
        if (null_label is None) == (uncond_kwargs is None):
            raise ValueError("give exactly one of null_label and uncond_kwargs")
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.null_label = null_label
        self.uncond_kwargs = uncond_kwargs

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

    def forward(self, x, s, **cond_kwargs):
        out = self.forward_raw(x, s, **cond_kwargs)
        b = x.shape[0]
        cond, uncond = out[:b], out[b:]
        c = x.shape[1]
        w = self.guidance_scale
        guided = (1 + w) * cond[:, :c] - w * uncond[:, :c]
        return torch.cat([guided, cond[:, c:]], dim=1) if out.shape[1] > c else guided


def _stack(cond, uncond, batch_size, name):
    if not torch.is_tensor(cond) or not torch.is_tensor(uncond):
        raise TypeError(f"kwarg {name!r} must be a tensor on both halves for batched guidance")
    if cond.shape[0] != batch_size or uncond.shape[0] != batch_size:
        raise ValueError(f"kwarg {name!r} must have batch size {batch_size} in both halves")
    return torch.cat([cond, uncond])
