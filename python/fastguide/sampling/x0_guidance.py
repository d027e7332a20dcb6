"""Guidance by any differentiable function of the predicted x₀: CLIP-style guidance, or
DPS-style inverse problems (Chung et al. 2023), where f(x₀) = −‖y − A(x₀)‖²/(2s²).

For a σ-denoiser the guided prediction shifts the score by the gradient, as classifier
guidance does (∇ log p(x; σ) = (D − x)/σ²):

    D'(x, σ) = D(x, σ) + σ²·scale·∇_x f(D(x, σ), σ).

through_denoiser=True differentiates through the network (the exact gradient, one backward
pass through the model per step: DPS); False takes ∇ with respect to x₀ and uses it for ∇_x (no
backward through the network, the approximation of "universal guidance"'s forward step).

f(x0, sigma, **kwargs) returns a per-image log-likelihood ([B]) or its sum; kwargs are the
sampler's extra_args (class labels, a measurement, ...). The discrete samplers take the same f
through x0_cond_fn, which returns guided-diffusion's cond_fn(x_t, t) = ∇_{x_t} f.
"""
import torch

from .guidance import frozen

__all__ = ["X0Guidance", "x0_gradient", "x0_cond_fn"]


def _as_module_params(module):
    return module if isinstance(module, torch.nn.Module) else None


def x0_gradient(denoiser, fn, x, sigma, kwargs, through_denoiser=True):
    """(D(x, σ) detached, ∇_x f(D(x, σ), σ)) — or ∇ with respect to x₀ when not through."""
    with torch.enable_grad(), frozen(_as_module_params(denoiser)):
        if through_denoiser:
            x_in = x.detach().requires_grad_(True)
            x0 = denoiser(x_in, sigma, **kwargs)
            wrt = x_in
        else:
            with torch.no_grad():
                x0 = denoiser(x, sigma, **kwargs)
            x0 = x0.detach().requires_grad_(True)
            wrt = x0
        value = fn(x0, sigma, **kwargs)
        if not torch.is_tensor(value) or value.dim() > 1:
            raise ValueError("the x0 guidance function must return a per-image log-likelihood "
                             f"([B] tensor) or a scalar, got {type(value).__name__} "
                             f"{getattr(value, 'shape', '')}")
        grad, = torch.autograd.grad(value.sum(), wrt)
    return x0.detach(), grad


class X0Guidance(torch.nn.Module):
    """D'(x, σ) = D(x, σ) + σ²·scale·∇_x f(D(x, σ), σ) for a σ-denoiser."""

    def __init__(self, denoiser, fn, scale=1.0, through_denoiser=True):
        super().__init__()
        if not callable(fn):
            raise ValueError("the x0 guidance function must be callable f(x0, sigma, **kwargs)")
        self.denoiser, self.fn = denoiser, fn
        self.scale, self.through_denoiser = float(scale), bool(through_denoiser)

    def round_sigma(self, sigma):
        inner = getattr(self.denoiser, "round_sigma", None)
        return inner(sigma) if inner is not None else torch.as_tensor(sigma)

    def forward(self, x, sigma, **kwargs):
        if self.scale == 0:
            return self.denoiser(x, sigma, **kwargs)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(
            x.shape[0])
        x0, grad = x0_gradient(self.denoiser, self.fn, x, sigma, kwargs, self.through_denoiser)
        column = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return x0 + column ** 2 * self.scale * grad.to(x0.dtype)


def x0_cond_fn(fn, denoiser, sigma_of, scale=1.0, through_denoiser=True):
    """guided-diffusion's cond_fn(x_t, t, **kwargs) = scale·∇_{x_t} f(x̂₀(x_t), σ_t) for the
    discrete samplers. denoiser: the network seen as D(x, σ) (an ADMDenoiser over the same
    network); sigma_of(t): σ of the timesteps the network receives. With x = x_t·√(1 + σ²),
    ∇_{x_t} = √(1 + σ²)·∇_x."""
    def cond_fn(x_t, t, **kwargs):
        sigma = sigma_of(t).to(device=x_t.device, dtype=x_t.dtype)
        stretch = (1 + sigma ** 2).sqrt().reshape(-1, *([1] * (x_t.dim() - 1)))
        _, grad = x0_gradient(denoiser, fn, x_t * stretch, sigma, kwargs, through_denoiser)
        return scale * stretch * grad
    return cond_fn
