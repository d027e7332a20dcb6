"""Linear multistep (Adams–Bashforth) on EDM's probability-flow ODE dx/dσ = d(x, σ),
d = (x − D(x, σ))/σ, as k-diffusion's lms: one network call a step.

Step i integrates the Lagrange polynomial through the last k slopes d_i, d_{i−1}, ..., d_{i−k+1}
(at σ_i, σ_{i−1}, ...) from σ_i to σ_{i+1}:

    x_{i+1} = x_i + Σ_j c_j·d_{i−j},   c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ,
    ℓ_j(σ) = Π_{m≠j} (σ − σ_{i−m}) / (σ_{i−j} − σ_{i−m}),

with k = min(order, i + 1): the first steps warm up at orders 1, 2, ... The integrals are exact
(polynomials, in the scaled variable s = (σ − σ_i)/(σ_{i+1} − σ_i)), computed on the host.
On uniform steps they are the classical Adams–Bashforth weights (order 4: 55, −59, 37, −9 / 24).

Order: a k-step method has local error O(h^(k+1)), but the order-1 warm-up step contributes
O(h²), so the global error is O(h^k) + C·h² with a small C when the first steps are taken where
the ODE is nearly linear in σ (large σ, as on EDM's schedule).
"""
import torch

from .base import check_order, check_sigmas, denoise, report
from .progress import sampling_steps

__all__ = ["lms_coefficients", "sample_lms"]


def _poly_mul_linear(poly, root, scale):
    # poly(s)·(s − root)/scale, coefficients in increasing powers.
    out = [0.0] * (len(poly) + 1)
    for n, c in enumerate(poly):
        out[n + 1] += c / scale
        out[n] -= c * root / scale
    return out


def lms_coefficients(sigma_values, i, order):
    """[c_0, ..., c_{k−1}] for step i of the σ list (floats), k = min(order, i + 1)."""
    k = min(order, i + 1)
    h = sigma_values[i + 1] - sigma_values[i]
    nodes = [(sigma_values[i - j] - sigma_values[i]) / h for j in range(k)]  # s of σ_{i−j}
    coefficients = []
    for j in range(k):
        poly = [1.0]
        for m in range(k):
            if m != j:
                poly = _poly_mul_linear(poly, nodes[m], nodes[j] - nodes[m])
        coefficients.append(h * sum(c / (n + 1) for n, c in enumerate(poly)))  # ∫_0^1 ds
    return coefficients


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, order=4):
    """Linear multistep sampling, deterministic. Options: order (1–4, default 4)."""
    sigmas, values = check_sigmas(sigmas, x)
    order = check_order("order", order, 1, 4)
    extra_args = extra_args or {}
    slopes = []
    for i in sampling_steps(len(values) - 1, disable):
        denoised = denoise(denoiser, x, sigmas[i], extra_args)
        report(callback, x=x, i=i, sigma=sigmas[i], sigma_hat=sigmas[i], denoised=denoised)
        slopes = [(x - denoised) / values[i]] + slopes[:order - 1]  # newest first
        coefficients = lms_coefficients(values, i, order)
        x = x + sum(c * d for c, d in zip(coefficients, slopes))
    return x
