"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

Everything is written for the variance-exploding view x = y + σ·n (y data, n ~ N(0, I)) and a
denoiser D(x, σ) ≈ E[y | x]. A network F is wrapped by a preconditioning (Table 1):

    D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))

Sampling schedule (eq. 5): σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, σ_N = 0.
"""
import torch

__all__ = ["edm_sigmas", "EDMPrecond", "VPPrecond", "VEPrecond", "EDMLoss", "VPLoss", "VELoss",
           "vp_sigma", "vp_sigma_inv"]


def edm_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device=None,
               dtype=torch.float64, round_sigma=None):
    """The N+1 noise levels σ_0 > ... > σ_{N−1} > σ_N = 0 of EDM's eq. 5.

    round_sigma (e.g. ADMDenoiser.round_sigma) snaps each level to one the network knows.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    i = torch.arange(num_steps, dtype=dtype, device=device)
    ramp = i / max(num_steps - 1, 1)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    if round_sigma is not None:
        sigmas = round_sigma(sigmas).to(dtype)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _sigma_column(sigma, x):
    # σ as a [B, 1, 1, ...] tensor in x's dtype, from a float, a 0-d tensor or a [B] tensor.
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.dim() - 1))).expand(x.shape[0], *([1] * (x.dim() - 1)))


class _Precond(torch.nn.Module):
    """Wraps a network model(x_in, c_noise, **kwargs) into a denoiser D(x, σ, **kwargs)."""

    sigma_min = 0.0
    sigma_max = float("inf")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) for σ of shape [B, 1, ...]."""
        raise NotImplementedError

    def forward(self, x, sigma, **model_kwargs):
        sigma = _sigma_column(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model(c_in * x, c_noise.reshape(-1), **model_kwargs)
        if out.shape != x.shape:
            raise ValueError(f"network output has shape {list(out.shape)}, "
                             f"expected {list(x.shape)}")
        return c_skip * x + c_out * out.to(x.dtype)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMPrecond(_Precond):
    """EDM's own preconditioning: unit-variance network input and target at every σ."""

    def __init__(self, model, sigma_data=0.5):
        super().__init__(model)
        self.sigma_data = sigma_data

    def coefficients(self, sigma):
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    """σ(t) = √(exp(½β_d t² + β_min t) − 1) of the VP SDE (Song et al. 2021)."""
    t = torch.as_tensor(t)
    return ((0.5 * beta_d * t ** 2 + beta_min * t).exp() - 1).sqrt()


def vp_sigma_inv(sigma, beta_d=19.9, beta_min=0.1):
    sigma = torch.as_tensor(sigma)
    return ((beta_min ** 2 + 2 * beta_d * (1 + sigma ** 2).log()).sqrt() - beta_min) / beta_d


class VPPrecond(_Precond):
    """The DDPM++ / VP preconditioning: an ε-network on x/√(σ²+1), queried at t·(M − 1)."""

    def __init__(self, model, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5):
        super().__init__(model)
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M
        self.sigma_min = float(vp_sigma(epsilon_t, beta_d, beta_min))
        self.sigma_max = float(vp_sigma(1.0, beta_d, beta_min))

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(_Precond):
    """The NCSN++ / VE preconditioning: F predicts the noise scaled by σ, queried at ln(σ/2)."""

    def __init__(self, model, sigma_min=0.02, sigma_max=100.0):
        super().__init__(model)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


# ---------------------------------------------------------------------------------------------
# Training losses: λ(σ)·‖D(y + σn, σ) − y‖², elementwise (reduce as you like).


def _denoising_loss(denoiser, images, sigma, weight, model_kwargs, generator):
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    denoised = denoiser(images + sigma * noise, sigma.reshape(-1), **(model_kwargs or {}))
    return weight * (denoised - images) ** 2


class EDMLoss:
    """ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_data²)/(σ·σ_data)²: unit loss weight per σ."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def sample_sigma(self, batch_size, device, dtype=torch.float32, generator=None):
        rnd = torch.randn(batch_size, generator=generator, device=device, dtype=dtype)
        return (rnd * self.P_std + self.P_mean).exp()

    def __call__(self, denoiser, images, model_kwargs=None, generator=None):
        sigma = _sigma_column(self.sample_sigma(images.shape[0], images.device, images.dtype,
                                                generator), images)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return _denoising_loss(denoiser, images, sigma, weight, model_kwargs, generator)


class VPLoss:
    """t ~ U(ε_t, 1), σ = σ_VP(t), λ = 1/σ²."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t

    def __call__(self, denoiser, images, model_kwargs=None, generator=None):
        u = torch.rand(images.shape[0], generator=generator, device=images.device,
                       dtype=images.dtype)
        sigma = _sigma_column(vp_sigma(1 + u * (self.epsilon_t - 1), self.beta_d, self.beta_min),
                              images)
        return _denoising_loss(denoiser, images, sigma, 1 / sigma ** 2, model_kwargs, generator)


class VELoss:
    """σ log-uniform on [σ_min, σ_max], λ = 1/σ²."""

    def __init__(self, sigma_min=0.02, sigma_max=100.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, denoiser, images, model_kwargs=None, generator=None):
        u = torch.rand(images.shape[0], generator=generator, device=images.device,
                       dtype=images.dtype)
        sigma = _sigma_column(self.sigma_min * (self.sigma_max / self.sigma_min) ** u, images)
        return _denoising_loss(denoiser, images, sigma, 1 / sigma ** 2, model_kwargs, generator)

