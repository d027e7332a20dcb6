"""What every functional sampler shares: the σ-list check, the denoiser call, the callback, the
checks of its options, and its default noise.

The σ list is read once on the host, before the loop, and the control flow and the per-step
coefficients come from those host floats (Python floats, computed in double precision), so no
sampler asks the device anything inside its loop. Samplers run under torch.no_grad(): a guided
denoiser that needs autograd (classifier guidance) turns it on inside its own call.
"""
import inspect
import math
import numbers

import torch

__all__ = ["check_sigmas", "denoise", "report", "check_number", "check_choice", "check_order",
           "default_noise_sampler", "churn_gamma", "ancestral_sigmas", "UnknownNameError",
           "NameRegistry"]


def check_sigmas(sigmas, x):
    """Validate the σ list once, on the host. Returns (sigmas on x's device, list of floats)."""
    if not torch.is_tensor(sigmas):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D list of at least 2 noise levels, "
                         f"got shape {list(sigmas.shape)}")
    if not torch.is_tensor(x) or x.dim() < 1:
        raise ValueError("x must be a batched tensor")
    values = sigmas.detach().cpu().double().tolist()
    if not all(math.isfinite(s) for s in values):
        raise ValueError(f"sigmas must be finite, got {values}")
    if values[-1] < 0 or any(s <= 0 for s in values[:-1]):
        raise ValueError("sigmas must be positive (only the last may be 0)")
    bad = [i for i in range(len(values) - 1) if not values[i + 1] < values[i]]
    if bad:
        i = bad[0]
        raise ValueError(f"sigmas must be strictly decreasing, but sigmas[{i}] = {values[i]:g} "
                         f"and sigmas[{i + 1}] = {values[i + 1]:g}")
    return sigmas.to(x.device), values


def denoise(denoiser, x, sigma, extra_args):
    """D(x, σ) with σ as a [B] tensor: each image may in principle have its own noise level."""
    out = denoiser(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
    if out.shape != x.shape:
        raise ValueError(f"denoiser output has shape {list(out.shape)}, expected {list(x.shape)}")
    return out


def report(callback, **info):
    """k-diffusion's callback: a dict with x, i, sigma, sigma_hat, denoised."""
    if callback is not None:
        callback(info)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number in the given range, or a ValueError that names the option."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}, "
        hi = "∞)" if high is None else f"{high:g}{')' if high_open else ']'}"
        where = f" in {lo or '(-∞, '}{hi}" if low is not None or high is not None else ""
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_order(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def default_noise_sampler(x, noise_sampler, randn_like):
    """noise_sampler(σ, σ_next) -> N(0, I) like x. By default fresh draws of randn_like (per-image
    generators: rng.StackedRandomGenerator.randn_like; else torch.randn_like)."""
    if noise_sampler is not None and randn_like is not None:
        raise ValueError("give noise_sampler or randn_like, not both")
    if noise_sampler is not None:
        return noise_sampler
    randn_like = randn_like or torch.randn_like
    return lambda sigma, sigma_next: randn_like(x)


def churn_gamma(sigma, num_steps, S_churn, S_min, S_max):
    """EDM's churn γ_i = min(S_churn/N, √2 − 1) on S_min <= σ_i <= S_max, else 0 (Algorithm 2)."""
    return min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= sigma <= S_max else 0.0


def ancestral_sigmas(sigma, sigma_next, eta):
    """Host-side (σ_down, σ_up) of an ancestral step σ → σ_next: σ_down² + σ_up² = σ_next²,
    σ_up = min(σ_next, η·σ_next·√(1 − σ_next²/σ²)). η = 1 is the DDPM posterior, η = 0 DDIM."""
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2))
    return math.sqrt(max(sigma_next ** 2 - sigma_up ** 2, 0.0)), sigma_up


class UnknownNameError(KeyError, ValueError):
    """An unknown sampler or schedule name (a KeyError for dict users, a ValueError for all)."""

    def __str__(self):
        return str(self.args[0])


class NameRegistry(dict):
    """name -> callable, whose unknown names raise UnknownNameError listing the known ones.
    common: the arguments every entry takes (not counted as its options)."""

    def __init__(self, kind, entries, common):
        super().__init__(entries)
        self.kind = kind
        self.common = frozenset(common)

    def __missing__(self, name):
        raise UnknownNameError(f"unknown {self.kind} {name!r}; choose from {sorted(self)}")

    def options(self, name):
        """The keyword options that entry `name` accepts beyond the common arguments."""
        params = inspect.signature(self[name]).parameters
        return tuple(p for p in params if p not in self.common)
