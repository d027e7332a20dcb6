"""The continuous-time process of classifier-free guidance (Ho & Salimans 2022, §2), indexed by
the log signal-to-noise ratio λ = log(α²/σ²):

    z_λ = α_λ·x + σ_λ·ε,   α_λ² = 1/(1 + e^(−λ)),   σ_λ² = 1 − α_λ²   (variance preserving)

Training draws λ = −2·log tan(a·u + b), u ~ U[0, 1], with b = arctan(e^(−λ_max/2)) and
a = arctan(e^(−λ_min/2)) − b, so that λ ∈ [λ_min, λ_max] (a cosine schedule, truncated).

For λ < λ' (λ' less noisy), the forward posterior is
    q(z_λ' | z_λ, x) = N(μ̃, σ̃²),  μ̃ = e^(λ−λ')·(α_λ'/α_λ)·z_λ + (1 − e^(λ−λ'))·α_λ'·x,
                                    σ̃² = (1 − e^(λ−λ'))·σ_λ'²,
and the ancestral sampler uses μ̃ with x = x_θ(z_λ) and variance (σ̃²)^(1−v)·(σ²_{λ|λ'})^v,
σ²_{λ|λ'} = (1 − e^(λ−λ'))·σ_λ² (v = 0.3 in the paper).

In EDM's terms z_λ = α_λ·(x + σ·ε) with σ = e^(−λ/2): the same denoiser D(x, σ) serves both.
"""
import math

import torch

__all__ = ["LogSNRProcess", "alpha_sigma", "sigma_from_log_snr", "log_snr_from_sigma"]


def alpha_sigma(log_snr):
    """(α_λ, σ_λ) of the variance-preserving process: α² = sigmoid(λ), σ² = sigmoid(−λ)."""
    log_snr = torch.as_tensor(log_snr)
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


def sigma_from_log_snr(log_snr):
    """σ of the variance-exploding view: σ = σ_λ/α_λ = e^(−λ/2)."""
    return torch.exp(-0.5 * torch.as_tensor(log_snr))


def log_snr_from_sigma(sigma):
    return -2.0 * torch.log(torch.as_tensor(sigma))


class LogSNRProcess:
    """λ ∈ [λ_min, λ_max], with the truncated-cosine training distribution."""

    def __init__(self, log_snr_min=-20.0, log_snr_max=20.0):
        if not log_snr_min < log_snr_max:
            raise ValueError(f"need log_snr_min < log_snr_max, got {log_snr_min}, {log_snr_max}")
        self.log_snr_min, self.log_snr_max = float(log_snr_min), float(log_snr_max)
        self.b = math.atan(math.exp(-0.5 * self.log_snr_max))
        self.a = math.atan(math.exp(-0.5 * self.log_snr_min)) - self.b

    def log_snr(self, u):
        """λ(u) = −2·log tan(a·u + b): λ(0) = λ_max, λ(1) = λ_min. float64: tan is steep near
        u = 1, where float32 would be off by ~1e-3."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return -2.0 * torch.log(torch.tan(self.a * u + self.b))

    def sample_log_snr(self, batch_size, device=None, dtype=torch.float32, generator=None):
        u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
        return self.log_snr(u).to(dtype)

    def q_sample(self, x, log_snr, noise=None):
        """z_λ = α_λ·x + σ_λ·ε, λ of shape [B]."""
        if noise is None:
            noise = torch.randn_like(x)
        alpha, sigma = alpha_sigma(log_snr.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))))
        return alpha * x + sigma * noise

    def sampling_log_snrs(self, num_steps, device=None, dtype=torch.float64):
        """num_steps + 1 values from λ_min up to λ_max, evenly spaced in u (noisy to clean)."""
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        return self.log_snr(u).to(device=device, dtype=dtype)

    def sampling_sigmas(self, num_steps, device=None, dtype=torch.float64):
        """The same levels as VE σ = e^(−λ/2), decreasing, for the σ-parameterised samplers."""
        return sigma_from_log_snr(self.sampling_log_snrs(num_steps, device, dtype))
